"""In-process CPU per request: each endpoint called through its WSGI app, no server.

A pyperf script: ``python bench/microbench.py -o micro.json`` (with the repository root
on ``PYTHONPATH``); ``bench.benchmark`` runs it and reads the JSON, with
``PROMETHEUS_MULTIPROC_DIR`` set as gunicorn.conf.py sets it, so that metrics are
recorded the way they are under gunicorn. Each call builds a
fresh environ, calls ``app(environ, start_response)``, reads the body and closes it, as
gunicorn does; the timer is the process's CPU time, which another tenant of a shared
machine does not inflate.
"""

import datetime
import functools
import io
import sys
import tempfile
import time
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

import pyperf  # type: ignore[import-untyped]

from bench.apps import SMOKE_TEST_BODY, SMOKE_TEST_PATH
from bench.model import ACCESS_LINE_MICRO, BARE_WSGI_MICRO, METRICS_ONLY

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


def time_access_lines(loops: int) -> float:
    """CPU seconds that ``loops`` JSON access lines cost, written as gunicorn would.

    PetSage's gunicorn logger, configured by PetSage's JSON logging set-up, logs one
    smoke-test request per loop to a file through a log output of its own, as large as
    the loops (so that none is dropped), and waits until its thread has written them:
    the in-process share of the access line's cost, the writer thread's included,
    steadier than the server figure (two wrk runs' difference) on a busy machine.
    """
    from types import SimpleNamespace

    from gunicorn.config import Config

    from petsage.serving.log_output import LogOutput
    from petsage.serving.logs import ACCESS_LOG_FORMAT, logging_config
    from petsage.serving.server import ProbeQuietLogger

    config = Config()
    config.set("accesslog", "-")
    config.set("access_log_format", ACCESS_LOG_FORMAT)
    config.set("logconfig_dict", logging_config("json", "INFO", loops))
    logger = ProbeQuietLogger(config)
    response = SimpleNamespace(
        status="200 OK",
        status_code=200,
        sent=len(SMOKE_TEST_BODY),
        headers=[
            ("Content-Type", "application/json"),
            ("Content-Length", str(len(SMOKE_TEST_BODY))),
            ("Cache-Control", "no-store"),
            ("X-Request-ID", "0f8e5c2b7d3a4e91b6c0a1d2e3f40516"),
        ],
    )
    request = SimpleNamespace(
        headers=[("HOST", "127.0.0.1:8000"), ("USER-AGENT", "wrk")]
    )
    environ = environ_for(SMOKE_TEST_PATH) | {"HTTP_USER_AGENT": "wrk"}
    took = datetime.timedelta(microseconds=1234)
    [handler] = logger.access_log.handlers
    with tempfile.TemporaryFile("w+") as lines:
        output = LogOutput(lines.fileno(), lines.fileno(), loops)
        handler.setStream(output)
        started = time.process_time()
        for _ in range(loops):
            logger.access(response, request, environ, took)
        if not output.wait_until_written(60):
            raise RuntimeError("PetSage's log output did not write the lines")
        spent = time.process_time() - started
        lines.seek(0)
        if '"status":200' not in lines.readline():
            raise RuntimeError("PetSage's logger wrote no JSON access line")
    return spent


def main() -> None:
    """Register every benchmark with pyperf, which runs each in its own processes."""
    runner = pyperf.Runner()
    runner.metadata["description"] = "CPU time per request through the WSGI app"
    for title, name, path in BENCHMARKS:
        runner.bench_time_func(title, time_requests, name, path)
    runner.bench_time_func(ACCESS_LINE_MICRO, time_access_lines)


if __name__ == "__main__":
    main()
