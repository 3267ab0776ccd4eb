"""Hostile input: each gets a clear 4xx problem, and the service goes on serving."""

import contextlib
import json
import socket
import string
from collections.abc import Iterator

import pytest
from flask import Flask
from flask.testing import FlaskClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from petsage import API_PREFIX, create_app
from petsage.health import health_of
from tests.support.fault_record import FaultRecorder
from tests.support.gunicorn_process import REPO_ROOT, GunicornServer
from tests.support.load import ClientLoad
from tests.support.raw_http import HOSTILE_REQUESTS
from tests.support.route_checks import document_of, flask_routes

SMOKE_TEST = "/api/v1/smoke-test"
# The service's own paths, every feature's (from the URL map, a path parameter its
# sample), and two that nothing answers.
SERVICE = create_app()
PATHS = [
    "/",
    *sorted(
        route.path
        for route in flask_routes(SERVICE, document_of(SERVICE))
        if route.template.startswith(f"{API_PREFIX}/")
    ),
    "/livez",
    "/readyz",
    "/health",
    "/metrics",
    "/openapi.json",
    "/no-such-thing",
    "/readyz/nope",
]


@pytest.fixture(scope="module")
def server() -> Iterator[GunicornServer]:
    """One real gunicorn for every hostile request: it must survive them all."""
    started = GunicornServer.start({})
    yield started
    started.stop()
    started.log_path.unlink(missing_ok=True)


def raw_exchange(port: int, request: bytes, timeout: float = 5.0) -> bytes:
    """Send ``request`` exactly as given; the whole answer (the server closes)."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as connection:
        connection.sendall(request)
        with contextlib.suppress(OSError):
            connection.shutdown(socket.SHUT_WR)
        chunks = []
        try:
            while chunk := connection.recv(65536):
                chunks.append(chunk)
        except (ConnectionResetError, TimeoutError):
            pass
    return b"".join(chunks)


def status_and_type(answer: bytes) -> tuple[int, str]:
    """The first response's status and Content-Type."""
    head = answer.split(b"\r\n\r\n", 1)[0].decode("latin-1").split("\r\n")
    status = int(head[0].split()[1])
    content_type = next(
        (
            line.split(":", 1)[1].strip()
            for line in head[1:]
            if line.lower().startswith("content-type:")
        ),
        "",
    )
    return status, content_type


@pytest.mark.slow
@pytest.mark.parametrize("name", list(HOSTILE_REQUESTS))
def test_hostile_request_gets_a_4xx_problem(server: GunicornServer, name: str) -> None:
    answer = raw_exchange(server.port, HOSTILE_REQUESTS[name])
    status, content_type = status_and_type(answer)
    assert 400 <= status < 500, answer[:300]
    assert content_type == "application/problem+json", answer[:300]
    body = json.loads(answer.split(b"\r\n\r\n", 1)[1].split(b"\r\n\r\n")[0] or b"{}")
    assert body["status"] == status
    assert "passwd" not in answer.decode("latin-1")
    assert server.request("GET", SMOKE_TEST).status == 200


HOSTILE_ROUNDS = 10


@pytest.mark.slow
@pytest.mark.fault
def test_hostile_requests_under_load_leave_every_request_answered(
    server: GunicornServer, fault_record: FaultRecorder
) -> None:
    """Every hostile request above, in a row, while ordinary clients keep calling."""
    wrong = []
    with ClientLoad(server.port, threads=2, pause=0.005) as load:
        for _ in range(HOSTILE_ROUNDS):
            for name, request in HOSTILE_REQUESTS.items():
                answer = raw_exchange(server.port, request)
                if not answer:
                    wrong.append(f"{name}: no answer")
                    continue
                status, content_type = status_and_type(answer)
                if (
                    not 400 <= status < 500
                    or content_type != "application/problem+json"
                ):
                    wrong.append(f"{name}: {status} {content_type}")
    fault_record(
        fault="hostile input",
        injected=(
            f"{HOSTILE_ROUNDS} x {len(HOSTILE_REQUESTS)} malformed requests "
            "(100 KB URL, oversized and control-character headers, binary junk, "
            "absurd Content-Length, traversal, ...), each a 4xx problem"
        ),
        load="2 client threads, smoke test, new connection per request",
        recovery="none needed",
        **load.total.counts(),
    )
    assert wrong == []
    assert load.failed == [], load.failed[:20]


@pytest.mark.slow
def test_a_body_on_get_is_ignored(server: GunicornServer) -> None:
    request = (
        f"GET {SMOKE_TEST} HTTP/1.1\r\nHost: x\r\nContent-Length: 11\r\n"
        "Connection: close\r\n\r\nhello world"
    ).encode()
    assert status_and_type(raw_exchange(server.port, request)) == (
        200,
        "application/json",
    )
    assert server.request("GET", SMOKE_TEST).status == 200


@pytest.fixture
def fuzz_app(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Flask]:
    """One app for a whole fuzz run, with the health token set."""
    drain = tmp_path_factory.mktemp("fuzz") / "drain"
    app = create_app({"HEALTH_TOKEN": "t", "DRAIN_FILE": str(drain)})
    yield app
    health_of(app).refresher.stop()


PATH_TEXT = st.text(
    alphabet=st.sampled_from(
        string.ascii_letters + string.digits + "/.%-_~:@!$&'()*+,;=é🐶"
    ),
    max_size=60,
)
QUERY_TEXT = st.text(
    alphabet=st.sampled_from(string.ascii_letters + string.digits + "=&%+,;.-_é"),
    max_size=60,
)
HEADER_VALUE = st.text(
    alphabet=st.characters(min_codepoint=32, max_codepoint=126), max_size=80
)


@pytest.mark.slow
@settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck))
@given(
    prefix=st.sampled_from(
        ["/", "/api/v1/", "/livez/", "/readyz/", "/docs/", "/health", "/metrics"]
    ),
    path=PATH_TEXT,
    query=QUERY_TEXT,
    method=st.sampled_from(
        ["GET", "HEAD", "OPTIONS", "POST", "PUT", "DELETE", "PATCH"]
    ),
    header=st.sampled_from(
        [
            "X-Request-ID",
            "Authorization",
            "Accept",
            "If-None-Match",
            "Content-Type",
            "Range",
            "Cookie",
        ]
    ),
    value=HEADER_VALUE,
)
def test_fuzzed_requests_never_fail_the_server(
    fuzz_app: Flask,
    prefix: str,
    path: str,
    query: str,
    method: str,
    header: str,
    value: str,
) -> None:
    client: FlaskClient = fuzz_app.test_client()
    with client.open(
        prefix + path, method=method, query_string=query, headers={header: value}
    ) as response:
        assert response.status_code != 500, (prefix + path, query, header, value)
        if response.mimetype == "application/health+json":
            # A probe's 503 is its verdict (e.g. still starting), not an error.
            assert response.status_code in (200, 503)
        elif response.status_code >= 400:
            assert response.status_code < 500
            assert response.mimetype == "application/problem+json"
            if method != "HEAD":
                assert response.json is not None
                assert response.json["status"] == response.status_code
    assert client.get(SMOKE_TEST).status_code == 200


class TestSecurityHeaders:
    @pytest.mark.parametrize("path", PATHS)
    def test_every_response_carries_them(self, client: FlaskClient, path: str) -> None:
        response = client.get(path)
        assert response.headers["X-Content-Type-Options"] == "nosniff"
        assert response.headers["Referrer-Policy"] == "no-referrer"
        assert response.headers["Content-Security-Policy"].startswith(
            "default-src 'none'"
        )
        assert "unsafe-inline" not in response.headers["Content-Security-Policy"]

    def test_the_docs_page_may_run_its_own_scripts_only(
        self, client: FlaskClient
    ) -> None:
        policy = client.get("/docs/").headers["Content-Security-Policy"]
        assert "script-src 'self' 'unsafe-inline'" in policy
        assert "connect-src 'self'" in policy
        assert "http" not in policy

    @pytest.mark.slow
    def test_gunicorns_own_errors_carry_them(self, server: GunicornServer) -> None:
        answer = raw_exchange(server.port, b"GARBAGE\r\n\r\n").decode("latin-1")
        assert "X-Content-Type-Options: nosniff" in answer
        assert "Content-Security-Policy: default-src 'none'" in answer

    @pytest.mark.slow
    def test_no_versions_are_revealed(self, server: GunicornServer) -> None:
        for path in ("/", SMOKE_TEST, "/no-such-thing", "/livez"):
            response = server.request("GET", path)
            assert response.headers.get("Server") == "gunicorn"
            assert "X-Powered-By" not in response.headers
            text = response.body.decode()
            for name in ("Werkzeug/", "Flask/", "gunicorn/", "Python/"):
                assert name not in text


def test_the_security_page_lists_the_security_headers() -> None:
    page = REPO_ROOT / "docs" / "operators" / "security.md"
    for header in (
        "X-Content-Type-Options",
        "Content-Security-Policy",
        "Referrer-Policy",
    ):
        assert header in page.read_text()
