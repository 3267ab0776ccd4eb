"""In-process CPU per request: each endpoint called through its WSGI app, no server.

A pyperf script: ``python bench/microbench.py -o micro.json`` (with the repository root
on ``PYTHONPATH``); ``bench.benchmark`` runs it and reads the JSON, with
``PROMETHEUS_MULTIPROC_DIR`` set as gunicorn.conf.py sets it, so that metrics are
recorded the way they are under gunicorn. Each call builds a
fresh environ, calls ``app(environ, start_response)``, reads the body and closes it, as
gunicorn does; the timer is the process's CPU time, which another tenant of a shared
machine does not inflate.
"""

import functools
import io
import sys
import time
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

import pyperf  # type: ignore[import-untyped]

from bench.apps import SMOKE_TEST_BODY, SMOKE_TEST_PATH
from bench.model import BARE_WSGI_MICRO, METRICS_ONLY

if TYPE_CHECKING:
    from _typeshed.wsgi import WSGIApplication, WSGIEnvironment

READY_TIMEOUT_S = 10.0

#: (name, application, path): the baselines first, then PetSage's endpoints.
BENCHMARKS = (
    (BARE_WSGI_MICRO, "bare_wsgi", SMOKE_TEST_PATH),
    # PetSage's RequestMetrics alone, around the bare callable: its cost is the
    # difference between this row and the one above (bench.model.request_metrics_us).
    (METRICS_ONLY, "metrics_only", SMOKE_TEST_PATH),
    ("bare Flask route", "bare_flask", SMOKE_TEST_PATH),
    (f"PetSage {SMOKE_TEST_PATH}", "petsage", SMOKE_TEST_PATH),
    (f"PetSage {SMOKE_TEST_PATH}, metrics off", "petsage_metrics_off", SMOKE_TEST_PATH),
    ("PetSage /livez", "petsage", "/livez"),
    ("PetSage /readyz", "petsage", "/readyz"),
    ("PetSage /health", "petsage", "/health"),
)


def environ_for(path: str) -> "WSGIEnvironment":
    """The environ gunicorn builds for ``GET path`` from wrk, give or take a header."""
    return {
        "REQUEST_METHOD": "GET",
        "SCRIPT_NAME": "",
        "PATH_INFO": path,
        "QUERY_STRING": "",
        "RAW_URI": path,
        "SERVER_NAME": "127.0.0.1",
        "SERVER_PORT": "8000",
        "SERVER_PROTOCOL": "HTTP/1.1",
        "REMOTE_ADDR": "127.0.0.1",
        "REMOTE_PORT": "50000",
        "HTTP_HOST": "127.0.0.1:8000",
        "wsgi.version": (1, 0),
        "wsgi.url_scheme": "http",
        "wsgi.input": io.BytesIO(),
        "wsgi.errors": sys.stderr,
        "wsgi.multithread": True,
        "wsgi.multiprocess": True,
        "wsgi.run_once": False,
    }


def call(app: "WSGIApplication", template: "WSGIEnvironment") -> tuple[str, bytes]:
    """One request through ``app``: its status line and body."""
    environ = dict(template)
    environ["wsgi.input"] = io.BytesIO()
    status = ""

    def start_response(line: str, headers: Any, exc_info: Any = None) -> Any:
        nonlocal status
        status = line
        return lambda data: None

    body: Iterable[bytes] = app(environ, start_response)
    try:
        data = b"".join(body)
    finally:
        # Flask tears its request context down here, as it does under gunicorn.
        close: Callable[[], None] | None = getattr(body, "close", None)
        if close is not None:
            close()
    return status, data


@functools.cache
def application(name: str) -> "WSGIApplication":
    """The named application, built once per process and ready to answer 200."""
    if name == "bare_wsgi":
        from bench.apps.bare_wsgi import app as bare_wsgi

        return bare_wsgi
    if name == "metrics_only":
        from bench.apps.bare_wsgi import app as bare_wsgi
        from petsage.metrics import Metrics, RequestMetrics

        return RequestMetrics(bare_wsgi, Metrics("bench", "bench"))
    if name == "bare_flask":
        from bench.apps.bare_flask import app as bare_flask

        return bare_flask
    from petsage import create_app

    petsage = create_app({"METRICS": False} if name == "petsage_metrics_off" else None)
    # Readiness fails until the worker's first check cycle is done, as in gunicorn.
    deadline = time.monotonic() + READY_TIMEOUT_S
    while call(petsage, environ_for("/readyz"))[0] != "200 OK":
        if time.monotonic() > deadline:
            raise RuntimeError("PetSage's /readyz did not answer 200 in process")
        time.sleep(0.01)
    return petsage


def check(name: str, path: str) -> None:
    """Fail loudly unless the application answers 200 (and the smoke test's bytes)."""
    status, body = call(application(name), environ_for(path))
    if status != "200 OK" or (path == SMOKE_TEST_PATH and body != SMOKE_TEST_BODY):
        raise RuntimeError(f"{name} {path} answered {status} {body!r}")


def time_requests(loops: int, name: str, path: str) -> float:
    """CPU seconds that ``loops`` requests to ``path`` cost (pyperf's time function)."""
    app = application(name)
    check(name, path)
    template = environ_for(path)
    started = time.process_time()
    for _ in range(loops):
        call(app, template)
    return time.process_time() - started


def main() -> None:
    """Register every benchmark with pyperf, which runs each in its own processes."""
    runner = pyperf.Runner()
    runner.metadata["description"] = "CPU time per request through the WSGI app"
    for title, name, path in BENCHMARKS:
        runner.bench_time_func(title, time_requests, name, path)


if __name__ == "__main__":
    main()
