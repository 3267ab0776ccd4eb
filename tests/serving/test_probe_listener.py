"""The management listener in this process: gunicorn's parser with the gunicorn
settings it is given, gunicorn's refusals, and what PetSage adds (the early refusal
of a TLS ClientHello, one deadline per head, a bound on the bytes of unfinished
heads). Against the public port of a real gunicorn: tests/serving/test_conformance.py.
"""

import inspect
import json
import socket
from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING, Any

import gunicorn.http.errors
import gunicorn.util
import pytest
from gunicorn.config import Config
from gunicorn.workers.base import Worker

from petsage.serving import probe_listener
from petsage.serving.probe_listener import ManagementListener, refusal
from tests.support.raw_http import CLIENT_HELLO, Answer, AnswerReader, connect

if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIApplication, WSGIEnvironment

Serve = Callable[..., int]
# What the echo app answers: the environ's values for these keys, as JSON.
ECHOED = [
    "REQUEST_METHOD",
    "PATH_INFO",
    "QUERY_STRING",
    "RAW_URI",
    "SERVER_PROTOCOL",
    "SERVER_NAME",
    "REMOTE_ADDR",
    "HTTP_HOST",
    "HTTP_X_A",
    "HTTP_X_B",
    "wsgi.url_scheme",
    "wsgi.multithread",
]


def echo(
    environ: "WSGIEnvironment", start_response: "StartResponse"
) -> Iterable[bytes]:
    """Answer 200 with the environ's ECHOED values."""
    body = json.dumps({key: environ.get(key) for key in ECHOED}).encode()
    start_response(
        "200 OK",
        [("Content-Type", "application/json"), ("Content-Length", str(len(body)))],
    )
    return [body]


def failing(
    environ: "WSGIEnvironment", start_response: "StartResponse"
) -> Iterable[bytes]:
    """Fail as an app with a bug does."""
    raise RuntimeError("a bug")


@pytest.fixture
def serve() -> Iterator[Serve]:
    """Start management listeners on free ports of 127.0.0.1, each serving an app
    with gunicorn's defaults but for the settings given; all stopped after."""
    listeners: list[ManagementListener] = []

    def start(app: "WSGIApplication" = echo, **settings: Any) -> int:
        cfg = Config()
        for name, value in settings.items():
            cfg.set(name, value)
        sock = socket.create_server(("127.0.0.1", 0))
        sock.setblocking(False)
        listener = ManagementListener(sock, app, cfg)
        listener.start()
        listeners.append(listener)
        port: int = sock.getsockname()[1]
        return port

    yield start
    for listener in listeners:
        listener.stop()
        listener.sock.close()


def exchange(port: int, *pieces: bytes) -> Answer:
    """Send ``pieces``, each once the one before it has been sent; the answer."""
    with connect(port) as connection:
        for piece in pieces:
            connection.sendall(piece)
        answer = AnswerReader(connection).next()
    assert answer is not None, "no answer"
    return answer


def problem_status(answer: Answer) -> int:
    """The status of the answer's problem document, which must be one."""
    problem = answer.problem()
    assert problem is not None, answer
    status: int = problem["status"]
    return status


def test_the_environ_is_gunicorns(serve: Serve) -> None:
    port = serve()
    answer = exchange(
        port,
        b"GET http://example.test/a%20b?c=d HTTP/1.0\r\n"
        b"X-A: 1\r\nX-A: 2\r\nX_B: dropped, as gunicorn drops it\r\n\r\n",
    )
    assert (answer.version, answer.status) == ("HTTP/1.0", 200)
    assert answer.header("Connection") == "close"
    assert json.loads(answer.body) == {
        "REQUEST_METHOD": "GET",
        "PATH_INFO": "/a b",
        "QUERY_STRING": "c=d",
        "RAW_URI": "http://example.test/a%20b?c=d",
        "SERVER_PROTOCOL": "HTTP/1.0",
        "SERVER_NAME": "127.0.0.1",
        "REMOTE_ADDR": "127.0.0.1",
        "HTTP_HOST": None,
        "HTTP_X_A": "1,2",
        "HTTP_X_B": None,
        "wsgi.url_scheme": "http",
        "wsgi.multithread": True,
    }


@pytest.mark.parametrize(
    ("settings", "request_bytes", "status"),
    [
        (
            {"limit_request_line": 100},
            b"GET /" + b"a" * 100 + b" HTTP/1.1\r\n\r\n",
            414,
        ),
        ({"limit_request_line": 0}, b"GET /" + b"a" * 6000 + b" HTTP/1.1\r\n\r\n", 200),
        ({}, b"GET /" + b"a" * 6000 + b" HTTP/1.1\r\n\r\n", 414),
        (
            {"limit_request_fields": 3},
            b"GET / HTTP/1.1\r\n" + b"X-A: a\r\n" * 4 + b"\r\n",
            431,
        ),
        (
            {"limit_request_fields": 3},
            b"GET / HTTP/1.1\r\n" + b"X-A: a\r\n" * 3 + b"\r\n",
            200,
        ),
        (
            {"limit_request_field_size": 50},
            b"GET / HTTP/1.1\r\nX-A: " + b"a" * 50 + b"\r\n\r\n",
            431,
        ),
        (
            {"limit_request_field_size": 50},
            b"GET / HTTP/1.1\r\nX-A: " + b"a" * 40 + b"\r\n\r\n",
            200,
        ),
    ],
    ids=lambda value: str(value)[:40],
)
def test_the_limits_are_gunicorns_settings(
    serve: Serve, settings: dict[str, int], request_bytes: bytes, status: int
) -> None:
    answer = exchange(serve(**settings), request_bytes)
    assert answer.status == status
    if status != 200:
        assert problem_status(answer) == status


def test_a_proxy_protocol_header_is_refused_whatever_gunicorn_reads(
    serve: Serve,
) -> None:
    # gunicorn may read PROXY headers on the public port; here one would let a caller
    # claim any address.
    port = serve(proxy_protocol="auto", proxy_allow_ips="127.0.0.1")
    claim = b"PROXY TCP4 10.1.2.3 127.0.0.1 40000 8001\r\n"
    answer = exchange(port, claim + b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    assert (answer.status, problem_status(answer)) == (400, 400)
    # Without one, the caller is the connection's peer.
    answer = exchange(port, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    assert json.loads(answer.body)["REMOTE_ADDR"] == "127.0.0.1"


def test_a_head_sent_a_byte_at_a_time_is_answered(serve: Serve) -> None:
    request = b"GET /trickled HTTP/1.1\r\nHost: x\r\n\r\n"
    answer = exchange(serve(), *(request[i : i + 1] for i in range(len(request))))
    assert answer.status == 200
    assert json.loads(answer.body)["PATH_INFO"] == "/trickled"


def test_a_head_growing_past_the_limits_is_refused_before_it_ends(
    serve: Serve,
) -> None:
    port = serve()
    with connect(port) as connection:
        connection.sendall(b"GET /" + b"a" * 20_000)  # no line end: never a whole head
        answer = AnswerReader(connection).next()
    assert answer is not None and answer.status == 414


def test_a_tls_client_hello_is_refused_at_once(serve: Serve) -> None:
    # Refused as the public port refuses it once a line ends: 400, and not the 408
    # of the deadline, which the hello's missing line end would come to.
    answer = exchange(serve(), CLIENT_HELLO)
    assert (answer.status, problem_status(answer)) == (400, 400)


def test_an_unfinished_head_gets_408_at_its_deadline(
    serve: Serve, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(probe_listener, "HEAD_DEADLINE", 0.2)
    answer = exchange(serve(), b"GET / HTTP/1.1\r\nHost: x\r\n")
    assert (answer.status, problem_status(answer)) == (408, 408)


def test_at_its_deadline_a_head_is_refused_as_gunicorn_would(
    serve: Serve, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(probe_listener, "HEAD_DEADLINE", 0.2)
    port = serve()
    with connect(port) as connection:
        connection.sendall(b"GET / HTTP/1.1\r\n")
        # Seen by the reader before the next piece: a wrongly ended line, parsed only
        # at the deadline (too few bytes to try before).
        connection.sendall(b"X: a\n")
        answer = AnswerReader(connection).next()
    assert answer is not None and answer.status == 400


def test_heads_past_the_byte_budget_lose_the_largest(
    serve: Serve, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(probe_listener, "HEAD_BYTES", 3000)
    port = serve()
    with connect(port) as small, connect(port) as large:
        small.sendall(b"GET /small HTTP/1.1\r\nX-A: " + b"a" * 500)
        large.sendall(b"GET /large HTTP/1.1\r\nX-A: " + b"a" * 2000)
        # Both unfinished; the budget is passed by the next bytes of the small one.
        small.sendall(b"a" * 1000)
        refused = AnswerReader(large).next()
        small.sendall(b"\r\n\r\n")
        answered = AnswerReader(small).next()
    assert refused is not None and refused.status == 431
    assert answered is not None and answered.status == 200


def test_an_app_that_fails_gets_500_problem(serve: Serve) -> None:
    answer = exchange(serve(failing), b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    assert (answer.status, problem_status(answer)) == (500, 500)


# refusal() is gunicorn's answer to each error of its parser.


def instance_of(kind: type[Exception]) -> Exception:
    """An instance of ``kind``, with "x" for each argument it requires."""
    required = [
        parameter
        for parameter in inspect.signature(kind.__init__).parameters.values()
        if parameter.name != "self"
        and parameter.default is inspect.Parameter.empty
        and parameter.kind
        not in (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD)
    ]
    return kind(*["x"] * len(required))


class QuietLog:
    """What gunicorn's worker logs to, keeping nothing."""

    def __getattr__(self, name: str) -> Callable[..., None]:
        return lambda *args, **kwargs: None


def gunicorns_answer(
    error: Exception, monkeypatch: pytest.MonkeyPatch
) -> tuple[int, str]:
    """The status and reason gunicorn's worker writes for ``error``."""
    written: list[tuple[int, str]] = []

    def write_error(sock: object, status: int, reason: str, message: str) -> None:
        written.append((status, reason))

    monkeypatch.setattr(gunicorn.util, "write_error", write_error)
    worker = type("Stand-in", (), {"log": QuietLog(), "cfg": Config()})()
    Worker.handle_error(worker, None, None, ("127.0.0.1", 1), error)
    [answer] = written
    return answer


PARSE_ERRORS = sorted(
    (
        kind
        for _, kind in inspect.getmembers(gunicorn.http.errors, inspect.isclass)
        if issubclass(kind, gunicorn.http.errors.ParseException)
    ),
    key=lambda kind: kind.__name__,
)


@pytest.mark.parametrize(
    "kind", [*PARSE_ERRORS, RuntimeError], ids=lambda k: k.__name__
)
def test_each_parse_error_gets_gunicorns_answer(
    kind: type[Exception], monkeypatch: pytest.MonkeyPatch
) -> None:
    error = instance_of(kind)
    assert refusal(error) == gunicorns_answer(error, monkeypatch)
