"""Security headers on every response, and gunicorn's own errors as problem JSON."""

import json
from collections.abc import Iterable
from http import HTTPStatus
from typing import TYPE_CHECKING, Any

from werkzeug.exceptions import RequestEntityTooLarge, default_exceptions

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
ALWAYS = [
    ("X-Content-Type-Options", "nosniff"),
    ("Referrer-Policy", "no-referrer"),
]


class SecurityHeaders:
    """WSGI middleware: nosniff, no referrer, and a Content-Security-Policy, always;
    and a 413 for a request that announces a body over ``max_body_bytes``
    (PETSAGE_MAX_BODY_BYTES), on every route, before anything waits for the body.
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
        return self.app(environ, start_with_headers)


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
