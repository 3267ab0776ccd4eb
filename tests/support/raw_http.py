"""HTTP as bytes: the hostile request shapes the suite sends, and answers read off a
socket one at a time (bounded by a timeout)."""

import json
import socket
from dataclasses import dataclass
from typing import Any

# The start of a TLS 1.2 ClientHello: a record of type 0x16 (handshake). It has no
# line end, so a server that waits for a request line waits.
CLIENT_HELLO = bytes.fromhex("16030100f4010000f00303") + bytes(32)

# Requests that must each get a 4xx problem, the service serving on.
HOSTILE_REQUESTS = {
    "10 KB URL": b"GET /" + b"a" * 10_000 + b" HTTP/1.1\r\nHost: x\r\n\r\n",
    "100 KB URL": b"GET /" + b"a" * 100_000 + b" HTTP/1.1\r\nHost: x\r\n\r\n",
    "oversized header": b"GET / HTTP/1.1\r\nHost: x\r\nX-Big: "
    + b"b" * 20_000
    + b"\r\n\r\n",
    "too many headers": b"GET / HTTP/1.1\r\nHost: x\r\n"
    + b"".join(b"X-H%d: v\r\n" % i for i in range(200))
    + b"\r\n",
    "header without colon": b"GET / HTTP/1.1\r\nHost: x\r\nnonsense\r\n\r\n",
    "control character in header": b"GET / HTTP/1.1\r\nHost: x\r\nX-A: a\x00b\r\n\r\n",
    "garbage request line": b"GARBAGE\r\n\r\n",
    "unknown HTTP version": b"GET / HTTP/9.9\r\nHost: x\r\n\r\n",
    "binary junk": bytes(range(256)) * 4,
    "absurd Content-Length": b"GET / HTTP/1.1\r\nHost: x\r\nContent-Length: "
    + b"9" * 40
    + b"\r\n\r\n",
    "negative Content-Length": b"POST / HTTP/1.1\r\nHost: x\r\n"
    b"Content-Length: -5\r\n\r\n",
    "invalid percent-encoding": b"GET /api/v1/%zz%G0%%% HTTP/1.1\r\nHost: x\r\n\r\n",
    "traversal": b"GET /../../../etc/passwd HTTP/1.1\r\nHost: x\r\n\r\n",
    "encoded traversal": b"GET /docs/..%2f..%2f..%2fetc%2fpasswd HTTP/1.1\r\n"
    b"Host: x\r\n\r\n",
    "unicode path": "GET /api/v1/\u00e9t\u00e9/\U0001f436 HTTP/1.1\r\n"
    "Host: x\r\n\r\n".encode(),
}

# Heads that can never be requests: 400, whichever listener reads them.
HOSTILE_HEADS = {
    "two Host fields": b"GET /readyz HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
    "a NUL in a field value": b"GET /readyz HTTP/1.1\r\nHost: a\r\nX-A: b\x00c\r\n\r\n",
    "Content-Length fields that disagree": (
        b"GET /readyz HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\n"
        b"Content-Length: 5\r\n\r\n"
    ),
    "a TLS ClientHello": CLIENT_HELLO,
}


@dataclass(frozen=True)
class Answer:
    """One HTTP response, read whole."""

    version: str
    status: int
    headers: list[tuple[str, str]]
    body: bytes

    def header(self, name: str) -> str | None:
        """The first field called ``name`` (any case), or None."""
        for field_name, value in self.headers:
            if field_name.lower() == name.lower():
                return value
        return None

    def problem(self) -> dict[str, Any] | None:
        """The problem document's type, title and status, when the body is one."""
        if self.header("Content-Type") != "application/problem+json" or not self.body:
            return None
        document = json.loads(self.body)
        return {key: document.get(key) for key in ("type", "title", "status")}


class AnswerReader:
    """Reads the answers a server sends on one connection, one at a time."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buffer = b""
        self.closed = False

    def _more(self) -> bool:
        """Read what came next; False at the end of the stream (or a reset)."""
        if self.closed:
            return False
        try:
            data = self.sock.recv(65536)
        except ConnectionResetError:
            data = b""
        if not data:
            self.closed = True
        self.buffer += data
        return bool(data)

    def next(self, head_request: bool = False) -> Answer | None:
        """The next answer whole, or None when the connection ends before one starts.

        ``head_request``: the answer is to a HEAD request, and has no body. A socket
        timeout (TimeoutError) means no whole answer came in time.
        """
        while b"\r\n\r\n" not in self.buffer:
            if not self._more():
                if self.buffer:
                    raise ValueError(f"the connection ended in a head: {self.buffer!r}")
                return None
        head, _, self.buffer = self.buffer.partition(b"\r\n\r\n")
        status_line, *lines = head.decode("latin-1").split("\r\n")
        version, status, *_ = status_line.split(" ", 2)
        headers = [
            (name, value.strip())
            for name, _, value in (line.partition(":") for line in lines)
        ]
        answer = Answer(version, int(status), headers, b"")
        if head_request or answer.status in (204, 304) or answer.status < 200:
            return answer
        length = answer.header("Content-Length")
        if length is not None:
            while len(self.buffer) < int(length) and self._more():
                pass
            body, self.buffer = self.buffer[: int(length)], self.buffer[int(length) :]
        elif (answer.header("Transfer-Encoding") or "").lower() == "chunked":
            body = self._chunked_body()
        else:  # delimited by the end of the connection
            while self._more():
                pass
            body, self.buffer = self.buffer, b""
        return Answer(answer.version, answer.status, answer.headers, body)

    def _chunked_body(self) -> bytes:
        body = b""
        while True:
            while b"\r\n" not in self.buffer and self._more():
                pass
            size_line, _, self.buffer = self.buffer.partition(b"\r\n")
            size = int(size_line.split(b";")[0], 16)
            while len(self.buffer) < size + 2 and self._more():
                pass
            body += self.buffer[:size]
            self.buffer = self.buffer[size + 2 :]
            if size == 0:
                return body

    def ended(self) -> bool:
        """Whether the server closed the connection with nothing more after."""
        while self._more():
            pass
        return self.closed and not self.buffer


def connect(port: int, timeout: float = 10.0) -> socket.socket:
    """A connection to 127.0.0.1:``port`` whose reads give up after ``timeout``."""
    return socket.create_connection(("127.0.0.1", port), timeout=timeout)
