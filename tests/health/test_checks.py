"""Checks and their refresher: real listeners, timeouts, hung checks, transitions."""

import base64
import http.server
import logging
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from urllib.parse import quote

import pytest

from petsage.health.checks import (
    Check,
    CheckFailed,
    Observation,
    process_uptime_check,
)
from petsage.health.dependencies import (
    Dependency,
    dependency_check,
    parse_dependencies,
    redact_url,
)
from petsage.health.refresher import CheckRefresher
from tests.support.listeners import hanging_tcp, http_reply, refusing, serving

# Bounds on waiting for what must happen: far longer than it takes on a busy machine.
LIVENESS = 60.0


@contextmanager
def basic_auth_server(user: str, password: str) -> Iterator[tuple[int, list[str]]]:
    """An HTTP server on 127.0.0.1 answering 200 only to Basic auth as ``user``.

    Yields its port and the ``user:password`` of every request, as decoded.
    """
    received: list[str] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            scheme, _, token = self.headers.get("Authorization", "").partition(" ")
            credentials = base64.b64decode(token).decode() if scheme == "Basic" else ""
            received.append(credentials)
            self.send_response(200 if credentials == f"{user}:{password}" else 401)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, format: str, *args: object) -> None:
            """Keep test output quiet."""

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1], received
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def run_once(check: Check) -> tuple[str, str]:
    """Run ``check`` in one refresher cycle; its status and output."""
    result = CheckRefresher([check], period=10).run_cycle().results[check.name]
    return result.status, result.output


def counting_check(
    name: str = "counted", outcome: Callable[[], Observation] = Observation
) -> tuple[Check, list[float]]:
    """A check that records each run's start time."""
    runs: list[float] = []

    def run() -> Observation:
        runs.append(time.monotonic())
        return outcome()

    return Check(name, run, component=name, measurement="runs"), runs


class TestDependencyChecks:
    def test_tcp_check_passes_when_the_port_accepts(self) -> None:
        with serving(b"") as listener:
            check = dependency_check(
                Dependency("db", f"tcp://127.0.0.1:{listener.port}"), True, 1.0
            )
            result = CheckRefresher([check], 10).run_cycle().results["db"]
            # The listener accepts on its own thread, maybe after the check returned.
            deadline = time.monotonic() + 5
            while listener.accepted == 0 and time.monotonic() < deadline:
                time.sleep(0.01)
        assert result.status == "pass"
        assert result.unit == "ms"
        assert isinstance(result.value, float)
        assert listener.accepted == 1

    def test_tcp_check_fails_when_the_port_refuses(self) -> None:
        with refusing() as port:
            check = dependency_check(
                Dependency("db", f"tcp://127.0.0.1:{port}"), True, 1
            )
            assert run_once(check) == (
                "fail",
                "ConnectionRefusedError: Connection refused",
            )

    def test_tcp_check_fails_when_the_connect_hangs(self) -> None:
        with hanging_tcp() as port:
            check = dependency_check(
                Dependency("db", f"tcp://127.0.0.1:{port}"), True, 0.3
            )
            assert run_once(check)[0] == "fail"

    def test_http_check_passes_on_2xx(self) -> None:
        with serving(http_reply(204)) as listener:
            url = f"http://127.0.0.1:{listener.port}/healthz"
            assert run_once(dependency_check(Dependency("api", url), True, 1)) == (
                "pass",
                "",
            )

    def test_http_check_fails_on_5xx(self) -> None:
        with serving(http_reply(503)) as listener:
            url = f"http://127.0.0.1:{listener.port}/healthz"
            assert run_once(dependency_check(Dependency("api", url), True, 1)) == (
                "fail",
                "HTTP 503",
            )

    def test_http_check_fails_on_refusal(self) -> None:
        with refusing() as port:
            url = f"http://127.0.0.1:{port}/"
            status, output = run_once(dependency_check(Dependency("api", url), True, 1))
        assert (status, output) == (
            "fail",
            "ConnectionRefusedError: Connection refused",
        )

    def test_http_check_times_out_when_the_server_never_answers(self) -> None:
        with serving(None) as listener:
            url = f"http://127.0.0.1:{listener.port}/"
            check = dependency_check(Dependency("api", url), True, 0.3)
            status, output = run_once(check)
        assert status == "fail"
        assert output in ("timed out", "timed out after 0.3 s")

    def test_failing_optional_dependency_only_warns(self) -> None:
        with refusing() as port:
            check = dependency_check(
                Dependency("db", f"tcp://127.0.0.1:{port}"), False, 1
            )
            assert run_once(check)[0] == "warn"

    def test_http_check_sends_url_credentials_as_basic_auth(self) -> None:
        with serving(http_reply(200)) as listener:
            url = f"http://user:pw@127.0.0.1:{listener.port}/"
            check = dependency_check(Dependency("api", url), True, 1)
            assert check.target == f"http://127.0.0.1:{listener.port}/"
            assert run_once(check)[0] == "pass"

    @pytest.mark.parametrize(
        "password", ["a/b#c", "comma,here", "p@ss:w%rd?x=1&y", "ünïcode"]
    )
    def test_percent_encoded_credentials_reach_the_server_decoded(
        self, password: str
    ) -> None:
        with basic_auth_server("svc user", password) as (port, received):
            encoded = f"{quote('svc user', safe='')}:{quote(password, safe='')}"
            [dependency] = parse_dependencies(
                f"api=http://{encoded}@127.0.0.1:{port}/ping"
            )
            result = run_once(dependency_check(dependency, True, 1))
        assert received == [f"svc user:{password}"]
        assert result == ("pass", "")

    def test_wrong_credentials_fail_the_check(self) -> None:
        with basic_auth_server("user", "a/b#c") as (port, received):
            url = f"http://user:a%2Fb%23d@127.0.0.1:{port}/ping"
            result = run_once(dependency_check(Dependency("api", url), True, 1))
        assert received == ["user:a/b#d"]
        assert result == ("fail", "HTTP 401")

    @pytest.mark.parametrize(
        ("url", "shown"),
        [
            (
                "https://user:secret@api.example:8443/h?key=k",
                "https://api.example:8443/h",
            ),
            ("tcp://db:5432", "tcp://db:5432"),
            ("http://[::1]:80/", "http://[::1]:80/"),
        ],
    )
    def test_urls_are_shown_without_credentials(self, url: str, shown: str) -> None:
        assert redact_url(url) == shown


class TestRefresher:
    def test_uptime_check_observes_seconds(self) -> None:
        check = process_uptime_check(started=time.monotonic() - 5)
        result = CheckRefresher([check], 10).run_cycle().results["uptime"]
        assert result.status == "pass"
        assert result.unit == "s"
        assert isinstance(result.value, float) and result.value >= 5

    def test_checks_run_concurrently(self) -> None:
        # Each check returns only once all five are inside their call at the same
        # time; run one after another, the first would wait alone until it fails.
        together = threading.Barrier(5, timeout=LIVENESS)

        def meet() -> Observation:
            together.wait()
            return Observation()

        checks = [
            Check(f"meet{i}", meet, f"meet{i}", "x", timeout=2 * LIVENESS)
            for i in range(5)
        ]
        snapshot = CheckRefresher(checks, 10).run_cycle()
        assert {name: result.status for name, result in snapshot.results.items()} == {
            f"meet{i}": "pass" for i in range(5)
        }

    def test_a_hung_check_is_reported_and_not_started_again(self) -> None:
        release = threading.Event()
        runs: list[float] = []

        def hang() -> Observation:
            runs.append(time.monotonic())
            release.wait(60)
            return Observation()

        check = Check("hung", hang, "hung", "x", timeout=0.2)
        refresher = CheckRefresher([check], 10)
        try:
            first = refresher.run_cycle().results["hung"]
            second = refresher.run_cycle().results["hung"]
        finally:
            release.set()
        assert (first.status, first.output) == ("fail", "timed out after 0.2 s")
        assert second.output == "timed out after 0.2 s"
        assert second.consecutive_failures == 2
        assert len(runs) == 1

    def test_an_exception_fails_the_check_without_its_text(self) -> None:
        def broken() -> Observation:
            raise RuntimeError("password=hunter2 at db.internal")

        assert run_once(Check("broken", broken, "broken", "x")) == (
            "fail",
            "RuntimeError",
        )

    def test_check_failed_gives_its_output(self) -> None:
        def failing() -> Observation:
            raise CheckFailed("queue depth over limit")

        assert run_once(Check("queue", failing, "queue", "depth")) == (
            "fail",
            "queue depth over limit",
        )

    def test_next_cycle_comes_after_the_period_with_jitter(self) -> None:
        check, _ = counting_check()
        refresher = CheckRefresher([check], period=10)
        snapshot = refresher.run_cycle()
        delays = [refresher.next_delay(snapshot) for _ in range(200)]
        assert 9 <= min(delays) < max(delays) <= 11

    def test_next_cycle_comes_sooner_after_a_failure(self) -> None:
        def failing() -> Observation:
            raise CheckFailed("down")

        refresher = CheckRefresher([Check("down", failing, "down", "x")], period=10)
        snapshot = refresher.run_cycle()
        delays = [refresher.next_delay(snapshot) for _ in range(200)]
        assert 4.5 <= min(delays) <= max(delays) <= 5.5

    def test_background_refresher_repeats_cycles(self) -> None:
        check, runs = counting_check()
        refresher = CheckRefresher([check], period=0.05)
        refresher.start()
        try:
            deadline = time.monotonic() + 5
            while len(runs) < 3 and time.monotonic() < deadline:
                time.sleep(0.01)
        finally:
            refresher.stop()
        assert len(runs) >= 3
        assert not refresher.alive


class TestTransitionLogging:
    def test_each_transition_is_logged_once(
        self, caplog: pytest.LogCaptureFixture
    ) -> None:
        outcomes = iter(["pass", "fail", "fail", "warn", "warn", "pass", "pass"])

        def scripted() -> Observation:
            status = next(outcomes)
            if status == "fail":
                raise CheckFailed("down")
            return Observation(status="warn" if status == "warn" else "pass")

        refresher = CheckRefresher([Check("db", scripted, "db", "x")], 10)
        with caplog.at_level(logging.INFO, logger="petsage.health.refresher"):
            for _ in range(7):
                refresher.run_cycle()
        assert [(r.levelno, r.getMessage()) for r in caplog.records] == [
            (logging.ERROR, "health check db failed: down"),
            (logging.WARNING, "health check db warns: warn"),
            (logging.INFO, "health check db passes again"),
        ]
