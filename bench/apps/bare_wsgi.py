"""The floor: a bare WSGI callable answering the smoke test's bytes, and nothing else.

Whatever a request costs here is gunicorn's own HTTP handling, under PetSage's settings.
"""

from collections.abc import Iterable
from typing import TYPE_CHECKING

from bench.apps import SMOKE_TEST_BODY

if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIEnvironment

# Built once: the callable should cost no more than gunicorn needs to call it.
HEADERS = [
    ("Content-Type", "application/json"),
    ("Content-Length", str(len(SMOKE_TEST_BODY))),
    ("Cache-Control", "no-store"),
]


def app(environ: "WSGIEnvironment", start_response: "StartResponse") -> Iterable[bytes]:
    """Answer every request with ``200`` and the smoke test's body."""
    start_response("200 OK", HEADERS)
    return [SMOKE_TEST_BODY]
