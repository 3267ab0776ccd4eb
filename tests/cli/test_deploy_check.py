"""``petsage smoke``: against real gunicorn, and servers that are wrong in every way."""

import json
import os
import subprocess
import sys
import time
import xml.etree.ElementTree as ElementTree
from pathlib import Path
from typing import Any

import pytest

from tests.support.gunicorn_process import REPO_ROOT, GunicornFactory
from tests.support.listeners import Route, answering, refusing, serving
from tests.support.management import free_port

pytestmark = pytest.mark.slow  # real processes: not in the fast tier

PETSAGE = Path(sys.executable).with_name("petsage")
# How long a `petsage smoke` may run: far longer than any run here takes, even on a
# busy machine, and shorter than a --timeout that a test must never wait out.
LIVENESS = 60.0
DOCUMENT = (REPO_ROOT / "openapi.json").read_bytes()
SMOKE_BODY = {"status": "ok", "message": "PetSage smoke test successful!"}
HEALTH = {
    "status": "pass",
    "version": "1",
    "releaseId": "r1",
    "serviceId": "petsage-backend",
    "description": "PetSage Backend API",
}


def smoke(
    *args: str, token: str | None = None, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """Run ``petsage smoke`` as a pipeline would, ``env`` added to its environment."""
    environment = {
        key: value for key, value in os.environ.items() if key != "PETSAGE_HEALTH_TOKEN"
    }
    environment.update(env or {})
    if token is not None:
        environment["PETSAGE_HEALTH_TOKEN"] = token
    try:
        return subprocess.run(
            [str(PETSAGE), "smoke", *args],
            capture_output=True,
            text=True,
            timeout=LIVENESS,
            env=environment,
        )
    except subprocess.TimeoutExpired:
        raise AssertionError(
            f"petsage smoke {' '.join(args)} still ran after {LIVENESS:g} s"
        ) from None


# What a server that is not PetSage, or a wrong base URL, answers.
NOT_FOUND = (
    b"HTTP/1.1 404 Not Found\r\nContent-Type: text/plain\r\nContent-Length: 8\r\n"
    b"Connection: close\r\n\r\nnot here"
)


def json_route(body: Any, status: int = 200, media: str = "application/json") -> Route:
    """A route answering ``body`` as JSON."""
    return status, media, json.dumps(body).encode()


def lookalike(**changes: Route) -> dict[str, Route]:
    """A server shaped like PetSage, with ``changes`` (keyed by path name)."""
    routes = {
        "/readyz": json_route({"status": "pass"}, media="application/health+json"),
        "/livez": json_route({"status": "pass"}, media="application/health+json"),
        "/health": json_route(HEALTH, media="application/health+json"),
        "/api/v1/smoke-test": json_route(SMOKE_BODY),
        "/openapi.json": (200, "application/json", DOCUMENT),
    }
    names = {"smoke": "/api/v1/smoke-test", "health": "/health"}
    routes.update({names[name]: route for name, route in changes.items()})
    return routes


class TestAgainstPetSage:
    def test_a_healthy_release_passes(self, start_gunicorn: GunicornFactory) -> None:
        server = start_gunicorn({"PETSAGE_RELEASE_ID": "git-4f2a9c1"})
        url = f"http://127.0.0.1:{server.port}"
        result = smoke(url, "--expect-release", "git-4f2a9c1")
        assert result.returncode == 0, result.stdout + result.stderr
        lines = result.stdout.splitlines()
        assert [line.split()[:2] for line in lines[:-1]] == [
            ["PASS", "readiness"],
            ["PASS", "openapi"],
            ["PASS", "liveness"],
            ["PASS", "health"],
            ["PASS", "release"],
            ["PASS", "smoke-test"],
        ]
        assert lines[-1].startswith("petsage smoke passed: 6 passed, 0 failed")

    def test_another_release_fails(self, start_gunicorn: GunicornFactory) -> None:
        server = start_gunicorn({"PETSAGE_RELEASE_ID": "old"})
        result = smoke(f"http://127.0.0.1:{server.port}", "--expect-release", "new")
        assert result.returncode == 1
        assert "FAIL  release     expected releaseId 'new', got 'old'" in result.stdout

    def test_a_release_that_never_gets_ready_exits_2(
        self, start_gunicorn: GunicornFactory
    ) -> None:
        with refusing() as port:
            server = start_gunicorn(
                {
                    "PETSAGE_CRITICAL_DEPENDENCIES": f"db=tcp://127.0.0.1:{port}",
                    "PETSAGE_HEALTH_TOKEN": "t0ken",
                }
            )
            result = smoke(
                f"http://127.0.0.1:{server.port}", "--timeout", "2", token="t0ken"
            )
        assert result.returncode == 2
        assert "expected /readyz to answer 200 within 2 s" in result.stdout
        # The token, taken from the environment, reveals why.
        assert "db: ConnectionRefusedError" in result.stdout

    def test_the_management_listener_is_named_in_one_failure(
        self, start_gunicorn: GunicornFactory
    ) -> None:
        management_port = free_port()
        start_gunicorn({"PETSAGE_MANAGEMENT_BIND": f"127.0.0.1:{management_port}"})
        url = f"http://127.0.0.1:{management_port}"
        result = smoke(url)
        assert result.returncode == 1, result.stdout + result.stderr
        lines = result.stdout.splitlines()
        # Readiness passes: the probes are served there. The first check to reach
        # what that listener does not serve fails, saying why; no other runs.
        assert [line for line in lines if line.startswith("FAIL")] == [lines[-2]]
        assert lines[-2].endswith(
            f" {url} is PetSage's management listener (PETSAGE_MANAGEMENT_BIND), which"
            " serves probes and metrics, not the API: point petsage smoke at the"
            " public port (PETSAGE_BIND)"
        )
        assert lines[-1].startswith("petsage smoke FAILED:")


class TestAgainstWrongServers:
    def test_a_wrong_smoke_test_body_fails_naming_both(self) -> None:
        wrong = {"status": "ok", "message": "Hello"}
        with answering(lookalike(smoke=json_route(wrong))) as port:
            result = smoke(f"http://127.0.0.1:{port}")
        assert result.returncode == 1
        assert (
            f"expected body {json.dumps(SMOKE_BODY)}, got {json.dumps(wrong)}"
            in result.stdout
        )

    def test_a_response_that_breaks_the_schema_fails(self) -> None:
        broken = {key: value for key, value in HEALTH.items() if key != "serviceId"}
        route = json_route(broken, media="application/health+json")
        with answering(lookalike(health=route)) as port:
            result = smoke(f"http://127.0.0.1:{port}")
        assert result.returncode == 1
        assert "body: 'serviceId' is a required property" in result.stdout

    def test_a_wrong_media_type_fails(self) -> None:
        with answering(
            lookalike(smoke=json_route(SMOKE_BODY, media="text/html"))
        ) as port:
            result = smoke(f"http://127.0.0.1:{port}")
        assert result.returncode == 1
        assert "media type text/html is not documented for 200" in result.stdout

    def test_refused_connections_exit_2(self) -> None:
        with refusing() as port:
            result = smoke(f"http://127.0.0.1:{port}", "--timeout", "1")
        assert result.returncode == 2
        assert "Connection refused" in result.stdout

    def test_a_server_that_never_answers_exits_2_in_time(self) -> None:
        with serving(None) as silent:
            result = smoke(
                f"http://127.0.0.1:{silent.port}",
                "--timeout",
                "2",
                "--request-timeout",
                "0.5",
            )
        assert result.returncode == 2
        assert "no answer within the request timeout" in result.stdout


class TestWaitingForReadiness:
    def test_a_wrong_base_url_fails_at_once(self) -> None:
        with serving(NOT_FOUND) as wrong:
            # Longer than smoke() lets it run: waiting it out would fail the test.
            timeout = str(10 * LIVENESS)
            result = smoke(f"http://127.0.0.1:{wrong.port}/wrong", "--timeout", timeout)
        assert result.returncode == 1, result.stdout
        assert wrong.accepted == 1, "asked /readyz again after a 404"
        assert "expected /readyz to answer 200, got 404 not here" in result.stdout

    # 503 from PetSage itself: TestAgainstPetSage; these come from gateways in front.
    @pytest.mark.parametrize("status", [502, 504])
    def test_a_not_ready_answer_is_waited_out(self, status: int) -> None:
        not_ready = json_route({"status": "fail"}, status, "application/health+json")
        with answering({"/readyz": not_ready}) as port:
            started = time.monotonic()
            result = smoke(f"http://127.0.0.1:{port}", "--timeout", "1")
        assert result.returncode == 2
        assert time.monotonic() - started >= 1
        assert f"last: /readyz answered {status}" in result.stdout

    def test_a_zero_timeout_still_asks_once(self) -> None:
        with answering(lookalike()) as port:
            result = smoke(f"http://127.0.0.1:{port}", "--timeout", "0")
        assert result.returncode == 0, result.stdout
        assert result.stdout.startswith("PASS  readiness")

    def test_server_settings_in_the_environment_are_not_read(self) -> None:
        server_settings = {"PETSAGE_THREADS": "lots", "PETSAGE_BIND": "nowhere"}
        with answering(lookalike()) as port:
            result = smoke(f"http://127.0.0.1:{port}", env=server_settings)
        assert result.returncode == 0, result.stdout + result.stderr
        assert result.stderr == ""


class TestReports:
    def test_json_report(self) -> None:
        with answering(lookalike()) as port:
            result = smoke(f"http://127.0.0.1:{port}", "--format", "json")
        report = json.loads(result.stdout)
        assert result.returncode == 0
        assert report["passed"] is True
        assert report["exitCode"] == 0
        assert [check["name"] for check in report["checks"]] == [
            "readiness",
            "openapi",
            "liveness",
            "health",
            "smoke-test",
        ]

    def test_junit_report(self) -> None:
        with answering(lookalike(smoke=json_route({"status": "down"}))) as port:
            result = smoke(f"http://127.0.0.1:{port}", "--format", "junit")
        assert result.returncode == 1
        suite = ElementTree.fromstring(result.stdout).find("testsuite")
        assert suite is not None
        assert (suite.get("tests"), suite.get("failures")) == ("5", "1")
        failed = [
            case.get("name")
            for case in suite.iter("testcase")
            if case.find("failure") is not None
        ]
        assert failed == ["smoke-test"]


class TestUsage:
    @pytest.mark.parametrize(
        "args",
        [
            ["ftp://example.invalid"],
            ["not a url"],
            [],
            ["http://127.0.0.1:1", "--format", "yaml"],
            ["http://127.0.0.1:1", "--timeout", "-1"],
            ["http://127.0.0.1:1", "--bogus"],
            ["http://127.0.0.1:99999"],
        ],
    )
    def test_usage_errors_exit_64(self, args: list[str]) -> None:
        result = smoke(*args)
        assert result.returncode == 64, result.stderr
        assert "Usage: petsage smoke" in result.stderr
