"""Real listeners on 127.0.0.1 for dependency checks: accept, refuse, hang, answer."""

import http.server
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field


@dataclass
class Listener:
    """A TCP listener on 127.0.0.1 and the connections it accepted."""

    port: int
    accepted: int = 0
    connections: list[socket.socket] = field(default_factory=list)


def _serve(server: socket.socket, listener: Listener, reply: bytes | None) -> None:
    while True:
        try:
            connection, _ = server.accept()
        except OSError:
            return
        listener.accepted += 1
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
    ``reply``, or hold it silent if None."""
    server = socket.create_server(("127.0.0.1", port))
    listener = Listener(server.getsockname()[1])
    thread = threading.Thread(
        target=_serve, args=(server, listener, reply), daemon=True
    )
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
def answering(routes: dict[str, Route], delay: float = 0.0) -> Iterator[int]:
    """An HTTP server on 127.0.0.1 answering GET ``path`` with (status, type, body),
    each answer ``delay`` seconds after the request (a slow dependency)."""

    class Handler(http.server.BaseHTTPRequestHandler):
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
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
