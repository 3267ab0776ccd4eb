"""Cheaper observability, same records: the access line's atoms, the metrics cache and
the cached process id.

PetSage makes gunicorn's access record from only the atoms it uses, records request
metrics through cached labelled children, and reads its process id without a system
call per sample; these tests hold each to what gunicorn and prometheus_client give
without the shortcut.
"""

import base64
import datetime
import io
import json
import logging
import logging.config
import os
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from gunicorn.config import Config
from gunicorn.glogging import Logger
from werkzeug.test import EnvironBuilder

from petsage import create_app
from petsage.metrics import Metrics, RequestMetrics
from petsage.metrics.storage import (
    PROCESS_ID,
    StorageState,
    degradable_value_class,
    read_values,
)
from petsage.middleware.routes import ROUTE_KEY
from petsage.serving.logs import (
    ACCESS_LOG_FORMAT,
    AccessFieldsFilter,
    logging_config,
)
from petsage.serving.server import ProbeQuietLogger

# Every atom gunicorn knows, headers and environ entries in mixed case, a missing
# header and an unknown atom (both "-").
EVERY_ATOM = (
    '%(h)s %(l)s %(u)s %(t)s "%(r)s" %(s)s %(m)s %(U)s %(q)s %(H)s %(b)s %(B)s'
    ' %(f)s "%(a)s" %(T)s %(D)s %(M)s %(L)s %(p)s %({x-request-id}o)s'
    " %({User-Agent}i)s %({remote_port}e)s %({X-Missing}i)s %(nothing)s"
)
LIFTED = (
    "request_id",
    "method",
    "path",
    "query",
    "status",
    "duration_ms",
    "remote_addr",
    "user_agent",
    "response_bytes",
)


@pytest.fixture(autouse=True)
def gunicorn_loggers_restored() -> Iterator[None]:
    """gunicorn's Logger configures its two loggers process-wide: put them back."""
    loggers = [
        logging.getLogger(name) for name in ("gunicorn.error", "gunicorn.access")
    ]
    saved = [(lg.handlers[:], lg.propagate, lg.level) for lg in loggers]
    yield
    for lg, (handlers, propagate, level) in zip(loggers, saved, strict=True):
        lg.handlers, lg.propagate = handlers, propagate
        lg.setLevel(level)


class Records(logging.Handler):
    """Keeps the records it is given."""

    def __init__(self) -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []
        self.addFilter(AccessFieldsFilter())

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


def log_one_request(logger: Any) -> None:
    """Have gunicorn's ``logger`` log one POST with quotes in its user agent."""
    user_agent = 'probe "quoted" 1.0'
    response = SimpleNamespace(
        status="201 CREATED",
        status_code=201,
        sent=59,
        headers=[("Content-Type", "application/json"), ("X-Request-ID", "req-7")],
    )
    request = SimpleNamespace(
        headers=[("HOST", "127.0.0.1:8000"), ("USER-AGENT", user_agent)]
    )
    environ = {
        "REQUEST_METHOD": "POST",
        "RAW_URI": "/api/v1/smoke-test?pet=cat",
        "PATH_INFO": "/api/v1/smoke-test",
        "QUERY_STRING": "pet=cat",
        "SERVER_PROTOCOL": "HTTP/1.1",
        "REMOTE_ADDR": "198.51.100.7",
        "REMOTE_PORT": "50123",
        "HTTP_USER_AGENT": user_agent,
        "HTTP_REFERER": "https://petsage.example/",
        "HTTP_AUTHORIZATION": "Basic " + base64.b64encode(b"alice:pw").decode(),
    }
    logger.access(
        response, request, environ, datetime.timedelta(seconds=1, microseconds=2345)
    )


def access_record(logger_class: type, log_format: str) -> logging.LogRecord:
    """The access record ``logger_class`` makes for one request."""
    config = Config()
    config.set("accesslog", "-")
    config.set("access_log_format", log_format)
    logger = logger_class(config)
    handler = Records()
    logger.access_log.handlers = [handler]
    log_one_request(logger)
    [record] = handler.records
    return record


def json_access_line(through_logging: bool) -> str:
    """The access line PetSage's JSON logging writes for one request."""
    config = Config()
    config.set("accesslog", "-")
    config.set("access_log_format", ACCESS_LOG_FORMAT)
    logger = ProbeQuietLogger(config)
    logging.config.dictConfig(logging_config("json", "INFO", 100))
    [handler] = logger.access_log.handlers
    assert isinstance(handler, logging.StreamHandler)
    written = io.StringIO()
    handler.setStream(written)
    if through_logging:
        # Any set-up but PetSage's own takes the logging path: one more filter does.
        logger.access_log.addFilter(lambda record: True)
    log_one_request(logger)
    logger.access_log.filters.clear()
    return written.getvalue()


def same_records(log_format: str) -> Iterable[tuple[Any, Any]]:
    """(gunicorn's, PetSage's) message and lifted fields for one request."""
    for _ in range(3):
        # %(t)s is the time to the second: try again if the two straddled one.
        theirs = access_record(Logger, log_format)
        mine = access_record(ProbeQuietLogger, log_format)
        if theirs.getMessage() == mine.getMessage():
            break
    yield theirs.getMessage(), mine.getMessage()
    for field in LIFTED:
        yield (field, getattr(theirs, field)), (field, getattr(mine, field))


def test_the_access_record_is_gunicorns_for_petsages_format() -> None:
    for theirs, mine in same_records(ACCESS_LOG_FORMAT):
        assert mine == theirs
    record = access_record(ProbeQuietLogger, ACCESS_LOG_FORMAT)
    assert record.getMessage() == (
        '198.51.100.7 "POST /api/v1/smoke-test?pet=cat HTTP/1.1" 201 59 1002ms'
        ' id=req-7 "probe \\"quoted\\" 1.0"'
    )
    lifted = (getattr(record, name) for name in ("status", "duration_ms", "request_id"))
    assert tuple(lifted) == (
        201,
        1002.345,
        "req-7",
    )


def test_the_access_record_is_gunicorns_for_every_atom() -> None:
    for theirs, mine in same_records(EVERY_ATOM):
        assert mine == theirs
    message = access_record(ProbeQuietLogger, EVERY_ATOM).getMessage()
    assert " alice " in message and " 50123 - -" in message


def test_the_direct_json_access_line_is_the_logging_paths() -> None:
    direct, logged = json_access_line(False), json_access_line(True)
    assert direct.endswith("\n") and direct.count("\n") == 1
    fields, expected = json.loads(direct), json.loads(logged)
    assert list(fields) == list(expected)
    assert datetime.datetime.fromisoformat(fields.pop("timestamp")).utcoffset() == (
        datetime.timedelta(0)
    )
    expected.pop("timestamp")
    assert fields == expected
    assert fields == {
        "level": "INFO",
        "logger": "gunicorn.access",
        "message": '198.51.100.7 "POST /api/v1/smoke-test?pet=cat HTTP/1.1" 201 59'
        ' 1002ms id=req-7 "probe \\"quoted\\" 1.0"',
        "request_id": "req-7",
        "method": "POST",
        "path": "/api/v1/smoke-test",
        "query": "pet=cat",
        "status": 201,
        "duration_ms": 1002.345,
        "remote_addr": "198.51.100.7",
        "user_agent": 'probe \\"quoted\\" 1.0',
        "response_bytes": 59,
    }


def ignore_start(
    status: str, headers: list[tuple[str, str]], exc_info: Any = None
) -> Callable[[bytes], object]:
    """A WSGI start_response that keeps nothing."""
    return lambda data: None


def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
    """A WSGI app answering 204 on a named route."""
    environ[ROUTE_KEY] = "/things/<id>"
    start_response("204 No Content", [])
    return []


def test_request_metrics_keep_one_child_per_label_set() -> None:
    metrics = Metrics("1.0.0", "r1")
    recorded = RequestMetrics(app, metrics)
    methods = ["GET", "GET", "POST"] + [f"INVENTED{n}" for n in range(20)]
    for method in methods:
        recorded({"REQUEST_METHOD": method}, ignore_start)
    # Invented methods share one label value, and one cache entry.
    assert sorted(recorded.children) == [
        ("/things/<id>", "GET", "204"),
        ("/things/<id>", "POST", "204"),
        ("/things/<id>", "other", "204"),
    ]
    registry = metrics.registry
    for method, count in (("GET", 2), ("POST", 1), ("other", 20)):
        labels = {"route": "/things/<id>", "method": method}
        requests = registry.get_sample_value(
            "petsage_http_requests_total", {**labels, "status": "204"}
        )
        assert requests == count
        observed = registry.get_sample_value(
            "petsage_http_request_duration_seconds_count", labels
        )
        assert observed == count
    assert registry.get_sample_value("petsage_http_requests_in_flight") == 0


def test_a_forked_worker_writes_its_own_metrics_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The process id is cached (no syscall per sample): a fork must still switch
    # the child to a file of its own, as gunicorn's preloaded workers need.
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path))
    value_class = degradable_value_class(StorageState())
    value = value_class("counter", "jobs", "jobs_total", [], [], "Jobs.")
    value.inc(1)
    child = os.fork()
    if child == 0:  # pragma: no cover - the child reports through its exit status
        try:
            value.inc(5)
            os._exit(0 if PROCESS_ID.get() == os.getpid() else 1)
        except BaseException:
            os._exit(2)
    _, status = os.waitpid(child, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    value.inc(1)
    assert PROCESS_ID.get() == os.getpid()
    written = {
        path.name: [v for _, v, _, _ in read_values(str(path))]
        for path in tmp_path.glob("counter_*.db")
    }
    # The child starts from zero in its own file, as prometheus_client has it.
    assert written == {f"counter_{os.getpid()}.db": [2.0], f"counter_{child}.db": [5.0]}


def test_flask_notes_the_matched_route_template() -> None:
    app = create_app()
    noted: dict[str, str | None] = {}
    for path in ("/api/v1/smoke-test", "/unknown/123"):
        environ = EnvironBuilder(path=path).get_environ()
        response = app(environ, ignore_start)
        b"".join(response)
        noted[path] = environ.get(ROUTE_KEY)
    assert noted == {"/api/v1/smoke-test": "/api/v1/smoke-test", "/unknown/123": None}
