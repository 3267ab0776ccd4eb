"""The management listener: probes, /metrics and health details, off the public port.

gunicorn's gthread worker hands each connection to its pool of PETSAGE_THREADS
threads; when every thread serves a slow request, a probe waits in line, and a kubelet
with a 1 s timeout would count a busy instance as dead. With PETSAGE_MANAGEMENT_BIND
(or its old name PETSAGE_PROBE_BIND) set, every worker also serves the health
endpoints and /metrics on that address from threads of its own, so a probe never waits
for the application's threads. Operational data lives here, as with Spring Boot
Actuator's management port: keep this address off the internet.

One socket per instance: the gunicorn master opens it
(petsage.serving.management_socket) and every worker inherits it, so the kernel's
queue of connections outlives any one worker. Each worker serves it with a fixed set
of threads:

- A reader waits for new connections and for request bytes with the selector (epoll),
  which releases the GIL, and accepts without blocking, one connection per wake-up:
  every worker's reader wakes for a pending connection, so a burst is shared among
  the workers that run. While ``ACCEPT_PAUSE`` requests wait for its handler threads
  it accepts nothing, leaving what it cannot serve in the kernel's queue for the
  others, until they are down to ``ACCEPT_RESUME``. A worker whose Python cannot
  run (a C call holding the GIL, a stopped process) wakes from that wait like the
  others but never gets to ``accept``: a worker that runs takes the connection, and
  the stuck one leaves it in the queue. A blocking ``accept`` would not do, since a
  thread waiting inside accept(2) holds no GIL, and the kernel would give it a
  connection its process then cannot answer.
- The reader reads request heads without blocking: at most ``HEAD_LIMIT`` bytes, all
  within ``HEAD_DEADLINE`` of the accept (one deadline for the whole head, not one per
  read), so a client that trickles its head costs a socket, not a thread. It reads at
  most ``MAX_CONNECTIONS`` heads at once; a connection beyond that ends the oldest
  unfinished one.
- ``HANDLER_THREADS`` threads call the management app for complete requests. Since the
  reader pauses at ``ACCEPT_PAUSE`` waiting requests and reads at most
  ``MAX_CONNECTIONS`` heads, every request it took waits for them (``QUEUE_LIMIT``
  covers both); the 503 for a full queue is a safeguard that load does not reach.

Parsing is strict (RFC 9112): a head is refused with 400 at once when its first byte
starts no method (a TLS ClientHello) or it holds a control character (a NUL), and
when whole if it has two Host fields or Content-Length fields that disagree.

Every error it answers (a malformed head 400, a head too large 431, a head not sent
in time 408, too many requests 503) is problem JSON with PetSage's security headers.
When the worker stops (a ``max_requests`` restart, a reload, a stop, its master's
death), the reader stops accepting and closes its copy of the socket at once, and what
it accepted is answered before the process ends.
"""

import atexit
import contextlib
import email.utils
import http.client
import io
import logging
import queue
import re
import selectors
import socket
import sys
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote_to_bytes

from werkzeug.exceptions import (
    BadRequest,
    HTTPException,
    InternalServerError,
    RequestHeaderFieldsTooLarge,
    RequestTimeout,
    ServiceUnavailable,
)

from petsage.errors import problem_response
from petsage.middleware.security import SecurityHeaders
from petsage.serving.management_socket import inherited

if TYPE_CHECKING:
    from _typeshed.wsgi import WSGIApplication, WSGIEnvironment

logger = logging.getLogger(__name__)

# A request head (request line and header fields) must arrive whole within this time
# of the accept: a probe sends it in one packet, a slow client is cut off.
HEAD_DEADLINE = 2.0
# A probe's head is about 100 bytes, a bearer token adds a few hundred.
HEAD_LIMIT = 8192
# Unfinished heads read at once per worker; each costs a socket and HEAD_LIMIT bytes.
MAX_CONNECTIONS = 256
# Threads per worker running the management app (each answer takes well under 1 ms
# but for /metrics).
HANDLER_THREADS = 2
# A reader stops accepting while this many requests wait for its handler threads,
# and accepts again once they are down to ACCEPT_RESUME: what it cannot serve stays
# in the kernel's queue, for another worker.
ACCEPT_PAUSE = 32
ACCEPT_RESUME = 16
# Requests that may wait for a handler: every head being read may complete while
# the reader is paused, so with this limit the 503 for a full queue stays a safeguard.
QUEUE_LIMIT = ACCEPT_PAUSE + MAX_CONNECTIONS
# Time to send an answer whole, and to let a refused client finish sending (its
# unread bytes would turn the close into a reset, losing the answer).
WRITE_DEADLINE = 2.0
LINGER = 1.0
HEAD_END = re.compile(rb"\r?\n\r?\n")
REQUEST_LINE = re.compile(r"([!#$%&'*+.^_`|~0-9A-Za-z-]+) (/\S*) (HTTP/1\.[01])")
# A head can be refused before it is whole: a first byte that starts no method (a TLS
# ClientHello starts with 0x16), or a control character other than CR, LF and HT
# anywhere (RFC 9110, section 5.5: NUL, CR and LF are never part of a field value).
METHOD_START = re.compile(rb"[!#$%&'*+.^_`|~0-9A-Za-z-]")
CONTROL = re.compile(rb"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")


def parse_head(head: bytes, peer: Any, server: tuple[str, int]) -> "WSGIEnvironment":
    """The WSGI environ of a request head (without its final empty line).

    Header fields are parsed by the standard library's HTTP parser; a header name
    with an underscore is dropped, as gunicorn drops it, so that it cannot pass for
    its dashed namesake. Bodies are not read: nothing served here takes one.
    """
    line, _, fields = head.partition(b"\n")
    match = REQUEST_LINE.fullmatch(line.rstrip(b"\r").decode("latin-1"))
    if match is None:
        raise BadRequest("The request line is not METHOD /PATH HTTP/1.x.")
    method, target, version = match.groups()
    try:
        headers = http.client.parse_headers(io.BytesIO(fields + b"\r\n"))
    except http.client.HTTPException:  # more than 100 fields
        raise RequestHeaderFieldsTooLarge() from None
    if headers.defects:
        raise BadRequest("A header field is malformed.")
    # RFC 9112, section 3.2: exactly one Host; section 6.3: Content-Length values that
    # differ, or are not digits, make the message's framing unknowable.
    if len(headers.get_all("Host", ())) != 1:
        raise BadRequest("A request must have exactly one Host header field.")
    lengths = {value.strip() for value in headers.get_all("Content-Length", ())}
    if len(lengths) > 1 or not all(value.isdigit() for value in lengths):
        raise BadRequest(
            "The Content-Length header fields disagree or are not a number."
        )
    path, _, query = target.partition("?")
    environ: dict[str, Any] = {
        "REQUEST_METHOD": method,
        "SCRIPT_NAME": "",
        # PEP 3333: the decoded path's bytes, as latin-1.
        "PATH_INFO": unquote_to_bytes(path).decode("latin-1"),
        "QUERY_STRING": query,
        "SERVER_NAME": server[0],
        "SERVER_PORT": str(server[1]),
        "SERVER_PROTOCOL": version,
        "REMOTE_ADDR": peer[0],
        "REMOTE_PORT": str(peer[1]),
        "wsgi.version": (1, 0),
        "wsgi.url_scheme": "http",
        "wsgi.input": io.BytesIO(),
        "wsgi.errors": sys.stderr,
        "wsgi.multithread": True,
        "wsgi.multiprocess": True,
        "wsgi.run_once": False,
    }
    for name in dict.fromkeys(name.lower() for name in headers):
        if "_" in name:
            continue
        key = name.upper().replace("-", "_")
        if key not in ("CONTENT_LENGTH", "CONTENT_TYPE"):
            key = "HTTP_" + key
        # Repeated fields are joined as gunicorn joins them, so a proxy's own
        # X-Forwarded-For stays the last entry whatever a client sent.
        environ[key] = ",".join(headers.get_all(name, ()))
    return environ


def answer_bytes(app: "WSGIApplication", environ: "WSGIEnvironment") -> bytes:
    """Call ``app`` and return its whole answer, head and body, to send and close."""
    answer: list[Any] = []

    def start_response(status: str, headers: list[tuple[str, str]], *_: Any) -> Any:
        answer[:] = [status, headers]

    chunks: Iterable[bytes] = app(environ, start_response)
    try:
        body = b"".join(chunks)
    finally:
        close = getattr(chunks, "close", None)
        if close is not None:
            close()
    status, headers = answer
    names = {name.lower() for name, _ in headers}
    head = [f"HTTP/1.1 {status}", *(f"{name}: {value}" for name, value in headers)]
    head_request = environ.get("REQUEST_METHOD") == "HEAD"
    if "content-length" not in names and not head_request:
        head.append(f"Content-Length: {len(body)}")
    head += [
        f"Date: {email.utils.formatdate(usegmt=True)}",
        "Server: petsage",
        "Connection: close",
    ]
    data = ("\r\n".join(head) + "\r\n\r\n").encode("latin-1")
    return data if head_request else data + body


def error_bytes(error: HTTPException) -> bytes:
    """A whole answer for an error the listener finds itself: problem JSON with the
    security headers every PetSage answer carries."""
    environ = {"REQUEST_METHOD": "GET", "PATH_INFO": ""}
    return answer_bytes(SecurityHeaders(problem_response(error)), environ)


@dataclass
class Connection:
    """An accepted connection whose head is being read (or, refused, lingering)."""

    sock: socket.socket
    peer: Any
    deadline: float
    head: bytearray = field(default_factory=bytearray)
    lingering: bool = False


@dataclass(frozen=True)
class Request:
    """A request whose head is read, waiting for a handler thread."""

    sock: socket.socket
    environ: "WSGIEnvironment"


class ManagementListener:
    """One worker's share of the management listener: a reader thread and a few
    handler threads serving the socket every worker inherited."""

    def __init__(self, sock: socket.socket, app: "WSGIApplication") -> None:
        self.sock = sock
        self.app = app
        self.server: tuple[str, int] = sock.getsockname()[:2]
        self.requests: queue.Queue[Request | None] = queue.Queue(QUEUE_LIMIT)
        self._selector = selectors.DefaultSelector()
        self._reading: dict[int, Connection] = {}
        self._wake, self._waker = socket.socketpair()
        # Handler threads wake the reader through this pair to accept again.
        self._resume, self._resumer = socket.socketpair()
        self._resumer.setblocking(False)
        # Only the reader thread changes the selector, and with it these two.
        self._paused = False
        self._accepting = True
        self._threads = [
            threading.Thread(
                target=self._read_requests, name="petsage-management", daemon=True
            ),
            *(
                threading.Thread(
                    target=self._handle_requests,
                    name=f"petsage-management-{number}",
                    daemon=True,
                )
                for number in range(HANDLER_THREADS)
            ),
        ]

    def start(self) -> None:
        """Start serving, and finish what was accepted when the worker exits."""
        self._selector.register(self.sock, selectors.EVENT_READ)
        self._selector.register(self._wake, selectors.EVENT_READ)
        self._selector.register(self._resume, selectors.EVENT_READ)
        for thread in self._threads:
            thread.start()
        atexit.register(self.stop)

    def stop_accepting(self) -> None:
        """Stop accepting and close this worker's copy of the socket, at once; what
        was accepted is still answered."""
        with contextlib.suppress(OSError):
            self._waker.send(b"x")

    def stop(self) -> None:
        """Stop accepting; answer what was accepted (bounded by the deadlines)."""
        self.stop_accepting()
        deadline = time.monotonic() + HEAD_DEADLINE + LINGER + WRITE_DEADLINE
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))

    # The reader thread.

    def _read_requests(self) -> None:
        while self._accepting or self._reading:
            now = time.monotonic()
            deadlines = [connection.deadline for connection in self._reading.values()]
            wait = max(0.0, min(deadlines) - now) if deadlines else None
            for key, _ in self._selector.select(wait):
                try:
                    if key.fileobj is self.sock:
                        self._accept()
                    elif key.fileobj is self._wake:
                        self._stop_accepting()
                    elif key.fileobj is self._resume:
                        with contextlib.suppress(BlockingIOError):
                            self._resume.recv(4096)
                        self._resume_accepting()
                    elif key.data.sock.fileno() >= 0:  # not closed earlier in the batch
                        self._read(key.data)
                except Exception:
                    # The reader must outlive any one connection's trouble.
                    logger.exception("Management listener: reading failed")
                    if isinstance(key.data, Connection):
                        self._abandon(key.data)
            self._expire(time.monotonic())
        for _ in range(HANDLER_THREADS):
            self.requests.put(None)

    def _stop_accepting(self) -> None:
        if self._accepting:
            self._accepting = False
            if not self._paused:
                self._selector.unregister(self.sock)
            self._selector.unregister(self._wake)
            self._selector.unregister(self._resume)
            # The master and the other workers hold copies: the socket lives on
            # while one of them does, and with the last one it is gone and new
            # connections are refused (a master that died: petsage.serving.worker).
            self.sock.close()

    def _accept(self) -> None:
        """Take one connection: every worker's reader wakes for a pending one, so
        taking one at a time shares a burst among the workers that can run, instead
        of one worker queueing all of it behind its two handler threads."""
        if self.requests.qsize() >= ACCEPT_PAUSE:
            self._pause_accepting()
            return
        try:
            sock, peer = self.sock.accept()
        except (BlockingIOError, InterruptedError, ConnectionAbortedError):
            return  # another worker took it, or the client gave up
        except OSError as error:
            # Out of descriptors or memory: the connections wait in the
            # queue, for another worker or for later.
            logger.warning("Management listener cannot accept: %s", error)
            time.sleep(0.1)
            return
        if len(self._reading) >= MAX_CONNECTIONS:
            # The oldest is the likeliest to be a client that trickles.
            oldest = next(iter(self._reading.values()))
            if not oldest.lingering:
                with contextlib.suppress(OSError):
                    oldest.sock.send(error_bytes(RequestTimeout()))
            self._close(oldest)
        sock.setblocking(False)
        connection = Connection(sock, peer, time.monotonic() + HEAD_DEADLINE)
        self._reading[sock.fileno()] = connection
        self._selector.register(sock, selectors.EVENT_READ, connection)

    def _pause_accepting(self) -> None:
        """Leave new connections in the kernel's queue until the handler threads
        have caught up: a handler thread that finishes writes to ``_resumer``, and
        the reader, woken on ``_resume``, takes them again."""
        if self._accepting and not self._paused:
            self._paused = True
            self._selector.unregister(self.sock)

    def _resume_accepting(self) -> None:
        if self._accepting and self._paused:
            self._paused = False
            self._selector.register(self.sock, selectors.EVENT_READ)

    def _read(self, connection: Connection) -> None:
        wanted = (
            65536 if connection.lingering else HEAD_LIMIT + 1 - len(connection.head)
        )
        try:
            data = connection.sock.recv(wanted)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            self._close(connection)  # the client closed, or reset
            return
        if connection.lingering:
            return  # dropped
        connection.head += data
        end = HEAD_END.search(connection.head)
        head = connection.head if end is None else connection.head[: end.start()]
        if not METHOD_START.match(head) or CONTROL.search(head):
            # Refused at once: no more bytes could make it a request head.
            self._refuse(connection, BadRequest("This is not an HTTP/1.x request."))
            return
        if end is None:
            if len(connection.head) > HEAD_LIMIT:
                self._refuse(connection, RequestHeaderFieldsTooLarge())
            return
        try:
            environ = parse_head(
                bytes(connection.head[: end.start()]), connection.peer, self.server
            )
        except HTTPException as error:
            self._refuse(connection, error)
            return
        self._forget(connection)
        try:
            self.requests.put_nowait(Request(connection.sock, environ))
        except queue.Full:
            busy = ServiceUnavailable(
                "The management listener is answering too many requests.",
                retry_after=1,
            )
            send_and_close(connection.sock, error_bytes(busy))

    def _refuse(self, connection: Connection, error: HTTPException) -> None:
        """Answer ``error``, then read and drop what the client still sends for a
        moment before closing: closing with unread bytes would reset the
        connection, and the client could lose the answer."""
        with contextlib.suppress(OSError):
            connection.sock.send(error_bytes(error))
            connection.sock.shutdown(socket.SHUT_WR)
        connection.lingering = True
        connection.deadline = time.monotonic() + LINGER

    def _expire(self, now: float) -> None:
        for connection in list(self._reading.values()):
            if connection.deadline <= now:
                if connection.lingering:
                    self._close(connection)
                else:
                    self._refuse(connection, RequestTimeout())

    def _forget(self, connection: Connection) -> None:
        self._selector.unregister(connection.sock)
        del self._reading[connection.sock.fileno()]

    def _close(self, connection: Connection) -> None:
        self._forget(connection)
        connection.sock.close()

    def _abandon(self, connection: Connection) -> None:
        with contextlib.suppress(KeyError, ValueError):
            self._forget(connection)
        connection.sock.close()

    # The handler threads.

    def _handle_requests(self) -> None:
        while (request := self.requests.get()) is not None:
            try:
                answer = answer_bytes(self.app, request.environ)
            except Exception:
                logger.exception("Management listener: the app failed")
                answer = error_bytes(InternalServerError())
            request.sock.settimeout(WRITE_DEADLINE)  # for the whole answer
            send_and_close(request.sock, answer)
            if self._paused and self.requests.qsize() <= ACCEPT_RESUME:
                with contextlib.suppress(OSError):  # a byte is waiting already
                    self._resumer.send(b"r")


def send_and_close(sock: socket.socket, answer: bytes) -> None:
    """Send a whole answer (as far as the socket's timeout allows), then close."""
    try:
        sock.sendall(answer)
    except OSError:
        pass  # the client left, or did not read in time: nothing more to do
    finally:
        sock.close()


def start_probe_listener(bind: str, app: "WSGIApplication") -> ManagementListener:
    """Serve ``app`` (the management app) in this worker, on the socket the master
    opened for ``bind`` (HOST:PORT)."""
    listener = ManagementListener(inherited(bind), app)
    listener.start()
    return listener
