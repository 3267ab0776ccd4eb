"""Real listeners on 127.0.0.1 for dependency checks: accept, refuse, hang, answer."""

import http.server
import socket
import ssl
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field


@dataclass
class Listener:
    """A TCP listener on 127.0.0.1, its reply and the connections it accepted.

    A test may change ``reply`` while it listens: a dependency that answers, then
    hangs.
    """

    port: int
    reply: bytes | None
    accepted: int = 0
    connections: list[socket.socket] = field(default_factory=list)

    def still_waiting(self) -> int:
        """How many of the connections held silent their clients still keep open."""
        waiting = 0
        for connection in self.connections:
            try:
                while connection.recv(65536, socket.MSG_DONTWAIT):
                    pass  # what the client sent; the end of the stream is what counts
            except BlockingIOError:
                waiting += 1
            except OSError:
                pass
        return waiting


def _serve(server: socket.socket, listener: Listener) -> None:
    while True:
        try:
            connection, _ = server.accept()
        except OSError:
            return
        listener.accepted += 1
        reply = listener.reply
        if reply is None:
            # Hold the connection open and never answer.
            listener.connections.append(connection)
            continue
        with connection:
            try:
                connection.recv(65536)
                connection.sendall(reply)
            except OSError:
                pass


@contextmanager
def serving(reply: bytes | None, port: int = 0) -> Iterator[Listener]:
    """Accept connections on ``port`` (a free one by default); answer each with
    the listener's ``reply``, at first ``reply``, or hold it silent while None."""
    server = socket.create_server(("127.0.0.1", port))
    listener = Listener(server.getsockname()[1], reply)
    thread = threading.Thread(target=_serve, args=(server, listener), daemon=True)
    thread.start()
    try:
        yield listener
    finally:
        server.shutdown(socket.SHUT_RDWR)
        server.close()
        thread.join(timeout=5)
        for connection in listener.connections:
            connection.close()


@contextmanager
def refusing() -> Iterator[int]:
    """A port on 127.0.0.1 that refuses connections (bound, never listening)."""
    with socket.socket() as placeholder:
        placeholder.bind(("127.0.0.1", 0))
        yield placeholder.getsockname()[1]


def http_reply(status: int) -> bytes:
    """A whole HTTP/1.1 response with ``status`` and an empty body."""
    head = f"HTTP/1.1 {status} X\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    return head.encode()


@contextmanager
def hanging_tcp() -> Iterator[int]:
    """A port on 127.0.0.1 whose connects hang: a full backlog, never accepted."""
    with socket.socket() as server, socket.socket() as filler:
        server.bind(("127.0.0.1", 0))
        server.listen(0)
        port = server.getsockname()[1]
        filler.connect(("127.0.0.1", port))
        yield port


Route = tuple[int, str, bytes]


@contextmanager
def answering(
    routes: dict[str, Route],
    delay: float = 0.0,
    tls: ssl.SSLContext | None = None,
) -> Iterator[int]:
    """An HTTP server on 127.0.0.1 answering GET or POST ``path`` with (status, type,
    body), each answer ``delay`` seconds after the request (a slow dependency); over
    TLS with ``tls``, a server-side context."""

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            self.rfile.read(int(self.headers.get("Content-Length", "0")))
            self.do_GET()

        def do_GET(self) -> None:
            status, content_type, body = routes.get(
                self.path, (404, "text/plain", b"not here")
            )
            time.sleep(delay)
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            """Keep test output quiet."""

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    if tls is not None:
        # A failed handshake (a client that refuses the certificate) is an OSError
        # in accept(), which the server drops.
        server.socket = tls.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
