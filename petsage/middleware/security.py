"""Security headers on every response, and gunicorn's own errors as problem JSON."""

import json
from collections.abc import Callable, Iterable, Iterator
from http import HTTPStatus
from typing import TYPE_CHECKING, Any

from werkzeug.exceptions import (
    ClientDisconnected,
    RequestEntityTooLarge,
    default_exceptions,
)
from werkzeug.wsgi import LimitedStream

from petsage.errors import PROBLEM_MEDIA_TYPE, problem_response

if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIApplication, WSGIEnvironment

# Nothing PetSage answers is a page that loads anything, but the docs.
API_POLICY = (
    "default-src 'none'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'"
)
# Swagger UI: its own scripts and styles (one inline script starts it), the document.
DOCS_POLICY = (
    "default-src 'none'; script-src 'self' 'unsafe-inline';"
    " style-src 'self' 'unsafe-inline'; img-src 'self' data:; connect-src 'self';"
    " frame-ancestors 'none'; base-uri 'none'; form-action 'none'"
)
# What CappedBody reads at a time when asked for everything.
CHUNK_BYTES = 65536
ALWAYS = [
    ("X-Content-Type-Options", "nosniff"),
    ("Referrer-Policy", "no-referrer"),
]


class SecurityHeaders:
    """WSGI middleware: nosniff, no referrer, and a Content-Security-Policy, always;
    and a 413 for a body over ``max_body_bytes`` (PETSAGE_MAX_BODY_BYTES), on every
    route: before anything waits for it when its Content-Length announces it, as it is
    read when it comes in chunks (``CappedBody``).
    """

    def __init__(
        self,
        app: "WSGIApplication",
        max_body_bytes: int,
        docs_prefix: str = "/docs/",
    ) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes
        self.docs_prefix = docs_prefix

    def __call__(
        self, environ: "WSGIEnvironment", start_response: "StartResponse"
    ) -> Iterable[bytes]:
        docs = environ.get("PATH_INFO", "").startswith(self.docs_prefix)
        policy = ("Content-Security-Policy", DOCS_POLICY if docs else API_POLICY)

        def start_with_headers(
            status: str, headers: list[tuple[str, str]], exc_info: Any = None
        ) -> Any:
            headers.extend(ALWAYS)
            headers.append(policy)
            return start_response(status, headers, exc_info)

        length = environ.get("CONTENT_LENGTH") or "0"
        if not length.isdigit() or int(length) > self.max_body_bytes:
            error = RequestEntityTooLarge()
            return problem_response(error)(environ, start_with_headers)
        if "HTTP_TRANSFER_ENCODING" in environ:
            environ["wsgi.input"] = CappedBody(
                environ["wsgi.input"], self.max_body_bytes
            )
        elif length != "0":
            # gunicorn marks its input terminated, so werkzeug reads it as it comes:
            # a client gone before the length it gave would hand the view a cut
            # body as whole (half a form written). Read as exactly that many bytes,
            # a body that ends early is a 400 (werkzeug's ClientDisconnected).
            environ["wsgi.input"] = LimitedStream(environ["wsgi.input"], int(length))
        return self.app(environ, start_with_headers)


class CappedBody:
    """A body sent in chunks, with no length to refuse it by: reading past ``limit``
    bytes raises ``RequestEntityTooLarge``, which Flask answers with a 413 problem.

    Flask's own cap (MAX_CONTENT_LENGTH) would cut such a body off at the limit
    without a word, and the view would read a truncated body. A body whose chunks
    stop coming before the last one (the client gone) is werkzeug's
    ``ClientDisconnected``, a 400: gunicorn's reader raises its own errors there
    (``NoMoreData``, a bad chunk), which Flask would answer 500.
    """

    def __init__(self, stream: Any, limit: int) -> None:
        self.stream = stream
        self.left = limit

    def _counted(self, data: bytes) -> bytes:
        self.left -= len(data)
        if self.left < 0:
            raise RequestEntityTooLarge()
        return data

    def read(self, size: int | None = -1) -> bytes:
        """Up to ``size`` bytes (all of them, up to the limit, when negative)."""
        if size is None or size < 0:
            return b"".join(iter(lambda: self.read(CHUNK_BYTES), b""))
        return self._counted(self._whole(self.stream.read, min(size, self.left + 1)))

    def readline(self, size: int | None = -1) -> bytes:
        """A line, never reading past the limit."""
        bound = self.left + 1 if size is None or size < 0 else min(size, self.left + 1)
        return self._counted(self._whole(self.stream.readline, bound))

    @staticmethod
    def _whole(read: Callable[[int], bytes], size: int) -> bytes:
        """``read(size)``; the body broken off or malformed is the client's error."""
        try:
            return read(size)
        except Exception as error:  # gunicorn's NoMoreData, ChunkMissingTerminator...
            raise ClientDisconnected() from error

    def __iter__(self) -> Iterator[bytes]:
        return iter(self.readline, b"")


def problem_error_bytes(
    status: int, reason: str, headers: Iterable[tuple[str, str]] = ()
) -> bytes:
    """A whole HTTP response with the problem document for ``status``, and
    ``headers``."""
    error = default_exceptions.get(status)
    title = (
        HTTPStatus(status).phrase if status in HTTPStatus._value2member_map_ else reason
    )
    detail = error().description if error else reason
    body = json.dumps(
        {"type": "about:blank", "title": title, "status": status, "detail": detail},
        separators=(",", ":"),
    ).encode()
    head = [
        f"HTTP/1.1 {status} {reason}",
        "Connection: close",
        f"Content-Type: {PROBLEM_MEDIA_TYPE}",
        f"Content-Length: {len(body)}",
        *(f"{name}: {value}" for name, value in ALWAYS),
        f"Content-Security-Policy: {API_POLICY}",
        *(f"{name}: {value}" for name, value in headers),
    ]
    return ("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + body
