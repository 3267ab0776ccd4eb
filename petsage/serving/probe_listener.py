"""The management listener: probes, /metrics and health details, off the public port.

gunicorn's gthread worker hands each connection to its pool of PETSAGE_THREADS
threads; when every thread serves a slow request, a probe waits in line, and a kubelet
with a 1 s timeout would count a busy instance as dead. With PETSAGE_MANAGEMENT_BIND
(or its old name PETSAGE_PROBE_BIND) set, every worker also serves the health
endpoints and /metrics on that address from threads of its own, so a probe never waits
for the application's threads. Operational data lives here, as with Spring Boot
Actuator's management port: keep this address off the internet.

It speaks HTTP as the public port does, with gunicorn's own code: gunicorn's parser
(``RequestParser``) reads each request head, configured by the worker's gunicorn
settings (``limit_request_line``, ``limit_request_fields``,
``limit_request_field_size`` and the rest, but for the PROXY protocol:
``ListenerSettings``), gunicorn's ``wsgi.create`` makes the environ and its
``Response`` writes the answer (status line in the request's version, hop-by-hop
fields, HEAD). A head gunicorn's parser refuses gets the status gunicorn's worker
gives that error (``REFUSALS``), as the problem JSON the public port answers
(``problem_error_bytes``, petsage.middleware.security). The parser is handed the bytes
the reader collected; how they are collected, and the threads, stay PetSage's:

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
- The reader collects request heads without blocking, all within ``HEAD_DEADLINE`` of
  the accept (one deadline for the whole head, not one per read), so a client that
  trickles its head costs a socket, not a thread. It hands a head to the parser when
  the empty line that ends a head has come, or the bytes have doubled since the last
  try (a head that grows past gunicorn's limits is refused before it ends, and a
  trickled head is parsed a few times, not once per packet), and once more at the
  deadline before answering 408. It reads at most ``MAX_CONNECTIONS`` heads at once
  (a connection beyond that ends the oldest unfinished one) and holds at most
  ``HEAD_BYTES`` of them (beyond that the largest is refused with 431): gunicorn's
  limits allow one head near 1 MB, which the public port reads in one of a few
  threads, and this reader in any of its connections.
- A head whose first byte starts no method is refused with 400 at once: a TLS
  ClientHello sent to this plain-HTTP port has no line end, and gunicorn's parser
  would wait for one until the deadline.
- ``HANDLER_THREADS`` threads call the management app for complete requests. Since the
  reader pauses at ``ACCEPT_PAUSE`` waiting requests and reads at most
  ``MAX_CONNECTIONS`` heads, every request it took waits for them (``QUEUE_LIMIT``
  covers both); the 503 for a full queue is a safeguard that load does not reach.
- One request per connection: every answer says ``Connection: close`` and is sent
  whole, within ``WRITE_DEADLINE``, then the connection closes. A pipelined second
  request is not read; probes and scrapes open a connection each.

Every error it answers (gunicorn's refusals, a head not sent in time 408, heads too
large for the reader 431, too many requests 503, the app failing 500) is problem JSON
with PetSage's security headers. When the worker stops (a ``max_requests`` restart, a
reload, a stop, its master's death), the reader stops accepting and closes its copy of
the socket at once, and what it accepted is answered before the process ends.
"""

import atexit
import contextlib
import logging
import queue
import re
import selectors
import socket
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from gunicorn.http import errors
from gunicorn.http.message import Request
from gunicorn.http.parser import RequestParser
from gunicorn.http.wsgi import create

from petsage.middleware.security import problem_error_bytes
from petsage.serving.management_socket import inherited

if TYPE_CHECKING:
    from _typeshed.wsgi import WSGIApplication

logger = logging.getLogger(__name__)

# A request head (request line and header fields) must arrive whole within this time
# of the accept: a probe sends it in one packet, a slow client is cut off.
HEAD_DEADLINE = 2.0
# Bytes read at once from a connection.
RECEIVE_SIZE = 65536
# Unfinished heads read at once per worker, and the bytes they may hold together
# (a probe's head is about 100 bytes, a bearer token adds a few hundred).
MAX_CONNECTIONS = 256
HEAD_BYTES = 8 << 20
# gunicorn's parser reads a socket at most this much at a time, and checks its
# limits after each read: it is given the bytes collected in pieces of this size.
PARSER_READ = 8192
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
HEAD_END = b"\r\n\r\n"
# The bytes a method (an RFC 9110 token) can start with.
METHOD_START = re.compile(rb"[!#$%&'*+.^_`|~0-9A-Za-z-]")

# The answers gunicorn's worker (gunicorn.workers.base.Worker.handle_error) gives the
# errors of its parser, as the public port writes them: status and reason phrase (a
# 501, and the 500 for a SCRIPT_NAME the path does not start with, keep its "Bad
# Request"). The worker lists the errors it counts as the client's: every kind of
# ParseException but NOT_THE_CLIENTS (the app's, and one it leaves out); those are
# 400 but for REFUSALS, any other error is a 500. tests/serving/test_probe_listener.py
# holds this to gunicorn's worker.
REFUSALS: dict[type[Exception], tuple[int, str]] = {
    errors.LimitRequestLine: (414, "URI Too Long"),
    errors.LimitRequestHeaders: (431, "Request Header Fields Too Large"),
    errors.UnsupportedTransferCoding: (501, "Bad Request"),
    errors.ExpectationFailed: (417, "Expectation Failed"),
    errors.ForbiddenProxyRequest: (403, "Forbidden"),
    errors.ConfigurationProblem: (500, "Bad Request"),
}
NOT_THE_CLIENTS = (
    errors.InvalidResponseHeader,
    errors.InvalidResponseHeaderName,
    errors.InvalidProxyHeader,
)


def refusal(error: Exception) -> tuple[int, str]:
    """The status and reason gunicorn's worker answers ``error`` with."""
    if (
        not isinstance(error, errors.ParseException)
        or type(error) is errors.ParseException
        or isinstance(error, NOT_THE_CLIENTS)
    ):
        return 500, "Internal Server Error"
    for kind, answer in REFUSALS.items():
        if isinstance(error, kind):
            return answer
    return 400, "Bad Request"


def starts_no_request(head: bytes | bytearray) -> bool:
    """Whether no bytes to come could make ``head`` a request: its first byte (after
    the one empty line RFC 9112, section 2.2, lets a server skip) starts no method,
    as the 0x16 of a TLS ClientHello."""
    if head.startswith(b"\r\n"):
        head = head[2:]
    elif head == b"\r":
        return False
    return bool(head) and METHOD_START.match(head[:1]) is None


class ListenerSettings:
    """The worker's gunicorn settings as the management listener reads requests with
    them: the same, but for the PROXY protocol, which it never speaks. A PROXY header
    sets the caller's address, and trust here comes from the connection's peer only
    (an operator may let gunicorn read PROXY headers on the public port, from a
    load balancer; none belongs in front of this listener): one is refused, 400.

    Each setting is read from gunicorn's ``Config`` once, since a worker's settings
    do not change while it runs, and then costs an attribute lookup.
    """

    proxy_protocol = "off"

    def __init__(self, cfg: Any) -> None:
        self.cfg = cfg

    def __getattr__(self, name: str) -> Any:
        value = getattr(self.cfg, name)
        setattr(self, name, value)
        return value


def read_request(cfg: Any, head: bytearray, peer: Any) -> Request:
    """The request whose bytes ``head`` holds, read by gunicorn's parser as the public
    port reads one. Raises gunicorn's errors (``ParseException``), and
    ``NoMoreData`` while the head has not all come."""
    pieces = (
        bytes(head[start : start + PARSER_READ])
        for start in range(0, len(head), PARSER_READ)
    )
    return next(RequestParser(cfg, pieces, peer))


class AnswerBuffer(bytearray):
    """What gunicorn's ``Response`` writes to (``sendall``, as to a socket), kept,
    so that the answer is sent whole, within the write deadline, after."""

    def sendall(self, data: bytes) -> None:
        """Keep ``data``."""
        self.extend(data)

    def send(self, data: bytes) -> int:
        """Keep ``data`` (gunicorn's ``100 Continue``)."""
        self.extend(data)
        return len(data)


def answer_bytes(
    app: "WSGIApplication", cfg: Any, request: Request, peer: Any, server: Any
) -> bytes:
    """Call ``app`` for ``request`` as gunicorn's worker does (environ from
    ``wsgi.create``, the answer from its ``Response``), closing the connection after;
    the whole answer, or the problem for what failed."""
    answer = AnswerBuffer()
    try:
        response, environ = create(request, answer, peer, server, cfg)
        environ["wsgi.multithread"] = True
        response.force_close()
        body: Iterable[bytes] = app(environ, response.start_response)
        try:
            for chunk in body:
                response.write(chunk)
            response.close()
        finally:
            close = getattr(body, "close", None)
            if close is not None:
                close()
    except Exception as error:
        status, reason = refusal(error)
        if status >= 500:
            logger.exception("Management listener: the app failed")
        return problem_error_bytes(status, reason)
    return bytes(answer)


@dataclass
class Connection:
    """An accepted connection whose head is being read (or, refused, lingering)."""

    sock: socket.socket
    peer: Any
    deadline: float
    head: bytearray = field(default_factory=bytearray)
    # How many bytes of ``head`` the parser was last given.
    parsed: int = 0
    lingering: bool = False


@dataclass(frozen=True)
class Pending:
    """A request whose head is read, waiting for a handler thread."""

    sock: socket.socket
    peer: Any
    request: Request


class ManagementListener:
    """One worker's share of the management listener: a reader thread and a few
    handler threads serving the socket every worker inherited."""

    def __init__(self, sock: socket.socket, app: "WSGIApplication", cfg: Any) -> None:
        """Serve ``app`` on ``sock``, reading requests as gunicorn's ``cfg`` says
        (``ListenerSettings``)."""
        self.sock = sock
        self.app = app
        self.cfg = ListenerSettings(cfg)
        self.server: tuple[str, int] = sock.getsockname()[:2]
        self.requests: queue.Queue[Pending | None] = queue.Queue(QUEUE_LIMIT)
        self._selector = selectors.DefaultSelector()
        self._reading: dict[int, Connection] = {}
        # The bytes the heads in ``_reading`` hold together.
        self._buffered = 0
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
                    oldest.sock.send(problem_error_bytes(408, "Request Timeout"))
            self._close(oldest)
        sock.setblocking(False)
        connection = Connection(sock, peer, time.monotonic() + HEAD_DEADLINE)
        self._reading[sock.fileno()] = connection
        self._selector.register(sock, selectors.EVENT_READ, connection)
        # A probe's head has most often come by the time its connection is taken:
        # read it now rather than after another wake-up.
        self._read(connection)

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
        try:
            data = connection.sock.recv(RECEIVE_SIZE)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            self._close(connection)  # the client closed, or reset
            return
        if connection.lingering:
            return  # dropped
        head = connection.head
        before = len(head)
        head += data
        self._buffered += len(data)
        ended = head.find(HEAD_END, max(0, before - 3)) >= 0
        if before < 3 and starts_no_request(head[:3]):
            # Refused at once: no more bytes could make it a request head.
            self._refuse(connection, 400, "Bad Request")
        elif ended or len(head) >= 2 * connection.parsed:
            # Parsed when it may be whole, or has doubled since the last try: a
            # trickled head costs a few parses, not one per packet.
            self._parse(connection)
        while self._buffered > HEAD_BYTES:
            largest = max(self._reading.values(), key=lambda other: len(other.head))
            self._refuse(largest, 431, "Request Header Fields Too Large")

    def _parse(self, connection: Connection) -> bool:
        """Hand the head to gunicorn's parser; queue the request it reads, or refuse
        the head as gunicorn's worker would. False while the head is not all here."""
        connection.parsed = len(connection.head)
        try:
            request = read_request(self.cfg, connection.head, connection.peer)
        except errors.NoMoreData:
            return False
        except Exception as error:
            self._refuse(connection, *refusal(error))
            return True
        self._forget(connection)
        try:
            self.requests.put_nowait(Pending(connection.sock, connection.peer, request))
        except queue.Full:
            busy = problem_error_bytes(
                503, "Service Unavailable", [("Retry-After", "1")]
            )
            send_and_close(connection.sock, busy)
        return True

    def _refuse(self, connection: Connection, status: int, reason: str) -> None:
        """Answer the problem for ``status``, then read and drop what the client
        still sends for a moment before closing: closing with unread bytes would
        reset the connection, and the client could lose the answer."""
        with contextlib.suppress(OSError):
            connection.sock.send(problem_error_bytes(status, reason))
            connection.sock.shutdown(socket.SHUT_WR)
        self._release(connection)
        connection.lingering = True
        connection.deadline = time.monotonic() + LINGER

    def _expire(self, now: float) -> None:
        for connection in list(self._reading.values()):
            if connection.deadline <= now:
                if connection.lingering:
                    self._close(connection)
                elif not self._parse(connection):
                    self._refuse(connection, 408, "Request Timeout")

    def _release(self, connection: Connection) -> None:
        """Drop the bytes of the connection's head."""
        self._buffered -= len(connection.head)
        connection.head = bytearray()

    def _forget(self, connection: Connection) -> None:
        self._selector.unregister(connection.sock)
        del self._reading[connection.sock.fileno()]
        self._release(connection)

    def _close(self, connection: Connection) -> None:
        self._forget(connection)
        connection.sock.close()

    def _abandon(self, connection: Connection) -> None:
        with contextlib.suppress(KeyError, ValueError):
            self._forget(connection)
        self._release(connection)
        connection.sock.close()

    # The handler threads.

    def _handle_requests(self) -> None:
        while (pending := self.requests.get()) is not None:
            answer = answer_bytes(
                self.app, self.cfg, pending.request, pending.peer, self.server
            )
            pending.sock.settimeout(WRITE_DEADLINE)  # for the whole answer
            send_and_close(pending.sock, answer)
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


def start_probe_listener(
    bind: str, app: "WSGIApplication", cfg: Any
) -> ManagementListener:
    """Serve ``app`` (the management app) in this worker, on the socket the master
    opened for ``bind`` (HOST:PORT), reading requests as the worker's gunicorn
    settings ``cfg`` say."""
    listener = ManagementListener(inherited(bind), app, cfg)
    listener.start()
    return listener
