"""/livez, /readyz and /health through the test client, in every state."""

import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from flask_smorest import Blueprint
from werkzeug.test import Client, TestResponse

from petsage import PROBE_APP, create_app
from petsage.health import (
    Check,
    CheckFailed,
    Health,
    Observation,
    health_of,
    register_check,
)
from petsage.health.openapi import HealthSchema, ProbeStatusSchema
from tests.support.blocking import blocking_check
from tests.support.listeners import refusing

TOKEN = "s3cret-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
PROBES = ("/livez", "/readyz", "/health")
# Bounds on waiting for what must happen: far longer than it takes on a busy machine.
LIVENESS = 60.0
# Longer than any test: a check that hangs this long never returns while it runs.
HUNG_CHECK_TIMEOUT = 3600.0


@dataclass
class Service:
    """A PetSage app under test, its client and its health state."""

    app: Flask
    client: FlaskClient
    health: Health

    def wait_until(
        self, path: str, status: int, timeout: float = LIVENESS
    ) -> TestResponse:
        """Probe ``path`` until it answers ``status`` (or ``timeout`` passes)."""
        deadline = time.monotonic() + timeout
        while True:
            response = self.client.get(path)
            if response.status_code == status or time.monotonic() > deadline:
                return response
            time.sleep(0.01)


ServiceFactory = Callable[..., Service]


def management_client(service: Service) -> Client:
    """A test client of the service's management listener's app."""
    return Client(service.app.extensions[PROBE_APP])


def json_of(response: TestResponse) -> dict[str, Any]:
    """A response's JSON object body."""
    body = response.json
    assert isinstance(body, dict)
    return body


@pytest.fixture
def make_service(tmp_path: Path) -> Iterator[ServiceFactory]:
    """Build PetSage apps with extra checks and settings; stop their refreshers."""
    services: list[Service] = []

    def make(checks: tuple[Check, ...] = (), **config: Any) -> Service:
        app = create_app(
            {"TESTING": True, "DRAIN_FILE": str(tmp_path / "drain"), **config}
        )
        health = health_of(app)
        for check in checks:
            health.add_check(check)
        service = Service(app, app.test_client(), health)
        services.append(service)
        return service

    yield make
    for service in services:
        service.health.refresher.stop()


def failing(output: str = "down") -> Callable[[], Observation]:
    """A check function that always fails with ``output``."""

    def run() -> Observation:
        raise CheckFailed(output)

    return run


def check(name: str, run: Callable[[], Observation], critical: bool = True) -> Check:
    """A check named ``name``."""
    return Check(name, run, component=name, measurement="status", critical=critical)


@pytest.fixture
def ready(make_service: ServiceFactory) -> Service:
    """A service past its first check cycle, with the health token set."""
    service = make_service(HEALTH_TOKEN=TOKEN)
    assert service.wait_until("/readyz", 200).status_code == 200
    return service


class TestLiveness:
    def test_livez_passes(self, ready: Service) -> None:
        response = ready.client.get("/livez")
        assert response.status_code == 200
        assert response.mimetype == "application/health+json"
        assert response.json == {"status": "pass"}

    def test_livez_is_never_cached(self, ready: Service) -> None:
        assert ready.client.get("/livez").headers["Cache-Control"] == "no-store"

    def test_livez_ignores_failing_dependencies(
        self, make_service: ServiceFactory
    ) -> None:
        service = make_service((check("db", failing()),))
        service.wait_until("/readyz/db", 503)
        assert service.client.get("/livez").status_code == 200

    def test_livez_fails_once_the_app_marks_itself_broken(self, ready: Service) -> None:
        ready.health.mark_broken("event loop corrupted")
        response = ready.client.get("/livez")
        assert response.status_code == 503
        assert response.json == {"status": "fail"}

    @pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")
    def test_livez_fails_when_the_refresher_dies(
        self, make_service: ServiceFactory
    ) -> None:
        service = make_service(HEALTH_TOKEN=TOKEN, CHECK_PERIOD=0.05)
        service.wait_until("/readyz", 200)
        kill_refresher(service.health)
        response = service.client.get("/livez", headers=AUTH)
        assert response.status_code == 503
        assert response.json == {"status": "fail", "output": "refresher: wedged"}


def kill_refresher(health: Health) -> None:
    """End the refresher's thread at its next cycle, as an unexpected error would."""

    def die() -> None:
        raise SystemExit("the refresher thread ends")

    health.refresher.run_cycle = die  # type: ignore[assignment,method-assign]
    deadline = time.monotonic() + 5
    while health.refresher.alive and time.monotonic() < deadline:
        time.sleep(0.01)
    assert not health.refresher.alive


class TestReadiness:
    def test_readyz_fails_while_starting(self, make_service: ServiceFactory) -> None:
        release = threading.Event()
        blocking = blocking_check("slow", release, timeout=10)
        service = make_service((blocking,), HEALTH_TOKEN=TOKEN)
        try:
            response = service.client.get("/readyz", headers=AUTH)
            assert response.status_code == 503
            assert "startup: starting" in json_of(response)["output"]
        finally:
            release.set()
        assert service.wait_until("/readyz", 200).status_code == 200

    def test_readyz_passes_after_the_first_cycle(self, ready: Service) -> None:
        response = ready.client.get("/readyz")
        assert response.json == {"status": "pass"}
        assert response.headers["Cache-Control"] == "no-store"

    def test_failing_critical_check_fails_readiness(
        self, make_service: ServiceFactory
    ) -> None:
        service = make_service((check("db", failing()),), CHECK_PERIOD=10)
        response = service.wait_until("/readyz", 503)
        assert response.status_code == 503
        assert response.json == {"status": "fail"}
        assert response.headers["Retry-After"] == "5"

    def test_failing_optional_check_only_warns(
        self, make_service: ServiceFactory
    ) -> None:
        service = make_service((check("cache", failing(), critical=False),))
        service.wait_until("/readyz/startup", 200)
        response = service.client.get("/readyz")
        assert response.status_code == 200
        assert response.json == {"status": "warn"}
        assert "Retry-After" not in response.headers

    def test_readyz_fails_when_draining(self, ready: Service) -> None:
        ready.health.drain.begin()
        response = ready.client.get("/readyz", headers=AUTH)
        assert response.status_code == 503
        assert response.json == {"status": "fail", "output": "shutdown: draining"}

    def test_service_keeps_serving_while_draining(self, ready: Service) -> None:
        ready.health.drain.begin()
        assert ready.client.get("/api/v1/smoke-test").status_code == 200
        assert ready.client.get("/livez").status_code == 200

    def test_readyz_passes_again_when_draining_is_cancelled(
        self, ready: Service
    ) -> None:
        ready.health.drain.begin()
        ready.health.drain.end()
        assert ready.client.get("/readyz").status_code == 200

    @pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")
    def test_readyz_fails_as_stale_when_the_refresher_dies(
        self, make_service: ServiceFactory
    ) -> None:
        service = make_service(HEALTH_TOKEN=TOKEN, CHECK_PERIOD=0.05)
        service.wait_until("/readyz", 200)
        kill_refresher(service.health)
        response = service.client.get("/readyz", headers=AUTH)
        assert response.status_code == 503
        assert response.json == {"status": "fail", "output": "refresher: stale"}

    def test_readyz_fails_as_stale_when_results_are_old(
        self, make_service: ServiceFactory
    ) -> None:
        service = make_service(CHECK_PERIOD=0.05, HEALTH_TOKEN=TOKEN)
        refresher = service.health.refresher
        service.wait_until("/readyz", 200)
        refresher.stop()  # no more cycles: the snapshot ages
        time.sleep(refresher.stale_after + 0.1)
        response = service.client.get("/readyz", headers=AUTH)
        assert response.json == {"status": "fail", "output": "refresher: stale"}

    def test_excluded_check_does_not_count(self, make_service: ServiceFactory) -> None:
        service = make_service((check("db", failing()),))
        service.wait_until("/readyz/startup", 200)
        assert service.client.get("/readyz").status_code == 503
        assert service.client.get("/readyz?exclude=db").status_code == 200

    def test_exclude_repeats_for_each_item(self, make_service: ServiceFactory) -> None:
        service = make_service((check("db", failing()), check("mq", failing())))
        service.wait_until("/readyz/startup", 200)
        assert service.client.get("/readyz?exclude=db").status_code == 503
        assert service.client.get("/readyz?exclude=db&exclude=mq").status_code == 200


class TestOneItem:
    def test_an_item_answers_its_own_status(self, make_service: ServiceFactory) -> None:
        service = make_service((check("db", failing()),))
        service.wait_until("/readyz/startup", 200)
        assert service.client.get("/readyz/db").status_code == 503
        assert service.client.get("/readyz/uptime").json == {"status": "pass"}
        assert service.client.get("/livez/process").status_code == 200

    @pytest.mark.parametrize("path", ["/readyz/nope", "/livez/db", "/livez/"])
    def test_unknown_item_is_a_404_problem(self, ready: Service, path: str) -> None:
        response = ready.client.get(path)
        assert response.status_code == 404
        assert response.mimetype == "application/problem+json"

    @pytest.mark.parametrize("listener", ["public", "management"])
    def test_an_unknown_item_answers_the_items_there_are(
        self, make_service: ServiceFactory, listener: str
    ) -> None:
        service = make_service((check("db", failing()),))
        client = service.client if listener == "public" else management_client(service)
        for probe, known in (
            ("readyz", ["db", "refresher", "shutdown", "startup", "uptime"]),
            ("livez", ["machinery", "process", "refresher"]),
        ):
            response = client.get(f"/{probe}/dbx?verbose")
            assert response.status_code == 404
            assert response.mimetype == "application/problem+json"
            assert response.json == {
                "type": "about:blank",
                "title": "Not Found",
                "status": 404,
                "detail": f"/{probe} has no item 'dbx'; its items are"
                f" {', '.join(known)}.",
                "unknown": ["dbx"],
                "known": known,
            }

    @pytest.mark.parametrize("listener", ["public", "management"])
    def test_excluding_an_unknown_item_is_a_400_naming_it(
        self, make_service: ServiceFactory, listener: str
    ) -> None:
        service = make_service((check("db", failing()),))
        client = service.client if listener == "public" else management_client(service)
        response = client.get("/readyz?exclude=db&exclude=dbx&exclude=mq&exclude=dbx")
        assert response.status_code == 400
        assert response.mimetype == "application/problem+json"
        known = ["db", "refresher", "shutdown", "startup", "uptime"]
        assert response.json == {
            "type": "about:blank",
            "title": "Bad Request",
            "status": 400,
            "detail": "exclude names items /readyz does not have: 'dbx', 'mq'; its"
            f" items are {', '.join(known)}.",
            "unknown": ["dbx", "mq"],
            "known": known,
        }
        single = client.get("/livez?exclude=db").json
        assert single is not None
        assert single["detail"] == (
            "exclude names an item /livez does not have: 'db'; its items are"
            " machinery, process, refresher."
        )
        assert (single["unknown"], single["known"]) == (
            ["db"],
            ["machinery", "process", "refresher"],
        )

    def test_the_unknown_item_problems_match_the_document(
        self, make_service: ServiceFactory
    ) -> None:
        # Imported here, so that the module's other tests run against code without it.
        from petsage.health.openapi import UnknownItemsProblemSchema

        service = make_service()
        schema = UnknownItemsProblemSchema()
        for path in ("/readyz/nope", "/livez/nope", "/readyz?exclude=nope"):
            assert schema.validate(json_of(service.client.get(path))) == {}, path


class TestMethods:
    @pytest.mark.parametrize("path", PROBES)
    @pytest.mark.parametrize("method", ["HEAD", "OPTIONS"])
    def test_head_and_options_answer_like_get_when_passing(
        self, ready: Service, path: str, method: str
    ) -> None:
        get = ready.client.get(path)
        other = ready.client.open(path, method=method)
        assert other.status_code == get.status_code == 200
        assert other.headers["Content-Type"] == get.headers["Content-Type"]

    @pytest.mark.parametrize("path", PROBES)
    @pytest.mark.parametrize("method", ["HEAD", "OPTIONS"])
    def test_head_and_options_answer_like_get_when_failing(
        self, ready: Service, path: str, method: str
    ) -> None:
        ready.health.mark_broken("test")
        ready.health.drain.begin()
        get = ready.client.get(path)
        other = ready.client.open(path, method=method)
        assert other.status_code == get.status_code == 503
        assert other.headers["Retry-After"] == get.headers["Retry-After"]

    @pytest.mark.parametrize("path", PROBES)
    def test_head_has_no_body(self, ready: Service, path: str) -> None:
        assert ready.client.head(path).data == b""

    @pytest.mark.parametrize("path", PROBES)
    def test_options_names_the_allowed_methods(self, ready: Service, path: str) -> None:
        allow = ready.client.options(path).headers["Allow"]
        assert allow == "GET, HEAD, OPTIONS"

    @pytest.mark.parametrize("path", [*PROBES, "/readyz/startup"])
    @pytest.mark.parametrize("method", ["POST", "PUT", "DELETE", "PATCH"])
    def test_other_methods_are_a_405_problem_with_allow(
        self, ready: Service, path: str, method: str
    ) -> None:
        response = ready.client.open(path, method=method)
        assert response.status_code == 405
        assert response.mimetype == "application/problem+json"
        assert response.headers["Allow"] == "GET, HEAD, OPTIONS"


class TestVerbose:
    def test_verbose_with_the_token_lists_every_item(
        self, make_service: ServiceFactory
    ) -> None:
        service = make_service(
            (check("db", failing("refused")), check("cache", failing(), False)),
            HEALTH_TOKEN=TOKEN,
        )
        service.wait_until("/readyz/startup", 200)
        response = service.client.get("/readyz?verbose&exclude=uptime", headers=AUTH)
        assert response.status_code == 503
        assert response.mimetype == "text/plain"
        assert response.get_data(as_text=True) == (
            "[+]startup ok\n"
            "[+]shutdown ok\n"
            "[+]refresher ok\n"
            "[-]db failed: refused\n"
            "[!]cache warn: down\n"
            "[+]uptime excluded: ok\n"
            "readyz check failed\n"
        )

    def test_a_warning_is_marked_apart_from_healthy_items(
        self, make_service: ServiceFactory
    ) -> None:
        service = make_service((check("cache", failing(), False),), HEALTH_TOKEN=TOKEN)
        service.wait_until("/readyz/startup", 200)
        response = service.client.get("/readyz?verbose&exclude=uptime", headers=AUTH)
        assert response.status_code == 200
        assert response.get_data(as_text=True) == (
            "[+]startup ok\n"
            "[+]shutdown ok\n"
            "[+]refresher ok\n"
            "[!]cache warn: down\n"
            "[+]uptime excluded: ok\n"
            "readyz check passed\n"
        )

    def test_livez_verbose_passes(self, ready: Service) -> None:
        response = ready.client.get("/livez?verbose", headers=AUTH)
        assert response.get_data(as_text=True) == (
            "[+]process ok\n[+]refresher ok\n[+]machinery ok\nlivez check passed\n"
        )

    def test_verbose_without_the_token_is_status_only(self, ready: Service) -> None:
        response = ready.client.get("/readyz?verbose")
        assert response.mimetype == "application/health+json"
        assert response.json == {"status": "pass"}


class TestToken:
    def test_wrong_token_sees_status_only(self, make_service: ServiceFactory) -> None:
        service = make_service((check("db", failing()),), HEALTH_TOKEN=TOKEN)
        response = service.wait_until("/readyz", 503)
        wrong = service.client.get("/readyz", headers={"Authorization": "Bearer nope"})
        assert wrong.status_code == response.status_code == 503
        assert wrong.json == {"status": "fail"}

    def test_no_token_configured_means_no_details(
        self, make_service: ServiceFactory
    ) -> None:
        service = make_service((check("db", failing()),))
        service.wait_until("/readyz", 503)
        for authorization in ("Bearer ", "Bearer", "Bearer None"):
            response = service.client.get(
                "/health", headers={"Authorization": authorization}
            )
            assert "checks" not in json_of(response)
            assert "output" not in json_of(response)

    def test_status_code_never_depends_on_the_caller(
        self, make_service: ServiceFactory
    ) -> None:
        service = make_service((check("db", failing()),), HEALTH_TOKEN=TOKEN)
        service.wait_until("/readyz", 503)
        for path in ("/readyz", "/readyz?verbose", "/health"):
            public = service.client.get(path).status_code
            assert service.client.get(path, headers=AUTH).status_code == public


class TestHealthDocument:
    def test_public_document_has_status_and_identity_only(
        self, make_service: ServiceFactory
    ) -> None:
        service = make_service(RELEASE_ID="git-4f2a9c1")
        response = service.wait_until("/health", 200)
        assert response.mimetype == "application/health+json"
        assert response.json == {
            "status": "pass",
            "version": "1",
            "releaseId": "git-4f2a9c1",
            "serviceId": "petsage-backend",
            "description": "PetSage Backend API",
        }

    def test_document_with_the_token_shows_every_check(
        self, make_service: ServiceFactory
    ) -> None:
        service = make_service(
            (check("cache", failing("evicting"), critical=False),), HEALTH_TOKEN=TOKEN
        )
        service.wait_until("/readyz/startup", 200)
        document = service.client.get("/health", headers=AUTH).json
        assert document is not None
        assert document["status"] == "warn"
        assert document["output"] == "cache: evicting"
        assert set(document["checks"]) == {"process:uptime", "cache:status"}
        [uptime] = document["checks"]["process:uptime"]
        assert uptime["componentType"] == "system"
        assert uptime["observedUnit"] == "s"
        assert uptime["status"] == "pass"
        assert "time" in uptime
        [cache] = document["checks"]["cache:status"]
        assert (cache["status"], cache["output"], cache["critical"]) == (
            "warn",
            "evicting",
            False,
        )

    def test_document_fails_when_readiness_fails(self, ready: Service) -> None:
        ready.health.drain.begin()
        response = ready.client.get("/health")
        assert response.status_code == 503
        assert response.json is not None
        assert response.json["status"] == "fail"

    def test_dependency_is_shown_without_credentials_even_to_the_token(
        self, make_service: ServiceFactory
    ) -> None:
        with refusing() as port:
            service = make_service(
                HEALTH_TOKEN=TOKEN,
                CRITICAL_DEPENDENCIES=f"api=http://admin:pw@127.0.0.1:{port}/",
            )
            service.wait_until("/readyz/startup", 200)
        body = service.client.get("/health", headers=AUTH).get_data(as_text=True)
        assert f"http://127.0.0.1:{port}/" in body
        assert "admin" not in body
        assert "pw@" not in body

    def test_public_answers_name_no_host(self, make_service: ServiceFactory) -> None:
        with refusing() as port:
            service = make_service(
                HEALTH_TOKEN=TOKEN,
                CRITICAL_DEPENDENCIES=f"db=tcp://127.0.0.1:{port}",
            )
            service.wait_until("/readyz/startup", 200)
        for path in ("/livez", "/readyz", "/readyz?verbose", "/readyz/db", "/health"):
            assert "127.0.0.1" not in service.client.get(path).get_data(as_text=True)


class TestSchemas:
    def test_probe_bodies_match_the_documented_schema(
        self, make_service: ServiceFactory
    ) -> None:
        service = make_service((check("db", failing()),), HEALTH_TOKEN=TOKEN)
        service.wait_until("/readyz", 503)
        for path in ("/livez", "/readyz", "/readyz/db"):
            for headers in ({}, AUTH):
                body = json_of(service.client.get(path, headers=headers))
                assert ProbeStatusSchema().validate(body) == {}, path

    def test_health_documents_match_the_documented_schema(
        self, make_service: ServiceFactory
    ) -> None:
        service = make_service((check("db", failing()),), HEALTH_TOKEN=TOKEN)
        service.wait_until("/readyz", 503)
        for headers in ({}, AUTH):
            body = json_of(service.client.get("/health", headers=headers))
            assert HealthSchema().validate(body) == {}


class TestChecksNeverRunInRequests:
    def test_a_probe_storm_runs_no_check(self, make_service: ServiceFactory) -> None:
        runs: list[float] = []

        def counted() -> Observation:
            runs.append(time.monotonic())
            return Observation()

        service = make_service((check("counted", counted),), CHECK_PERIOD=600)
        service.wait_until("/readyz", 200)
        before = len(runs)
        for index in range(1000):
            service.client.get(PROBES[index % 3])
        assert len(runs) == before == 1

    def test_a_hung_check_never_delays_a_probe(
        self, make_service: ServiceFactory
    ) -> None:
        entered, release = threading.Event(), threading.Event()
        runs = 0

        def hangs_after_its_first_run() -> Observation:
            nonlocal runs
            runs += 1
            if runs > 1:
                entered.set()
                release.wait(HUNG_CHECK_TIMEOUT)
            return Observation()

        # Its timeout is far longer than the test: a probe that waited for the check,
        # or for the cycle it hangs in, would not return at all.
        hung = Check(
            "hung", hangs_after_its_first_run, "hung", "x", timeout=HUNG_CHECK_TIMEOUT
        )
        service = make_service((hung,), CHECK_PERIOD=0.05)
        statuses: list[int] = []

        def probe() -> None:
            statuses.extend(
                service.client.get("/readyz").status_code for _ in range(100)
            )

        prober = threading.Thread(target=probe, daemon=True)
        try:
            assert service.wait_until("/readyz", 200).status_code == 200
            assert entered.wait(LIVENESS), "the check never ran a second time"
            snapshot = service.health.snapshot
            prober.start()
            prober.join(LIVENESS)
            # Still the first cycle's: the second is still waiting for the check.
            assert service.health.snapshot is snapshot
        finally:
            release.set()
        assert not prober.is_alive(), "a probe waited for the hung check"
        assert statuses == [200] * 100


class TestRegistry:
    def test_a_feature_blueprint_can_register_a_check(self, tmp_path: Path) -> None:
        bp = Blueprint("pantry", __name__)
        bp.record_once(
            lambda state: register_check(
                state.app, check("pantry", failing("empty"), critical=False)
            )
        )
        app = create_app({"TESTING": True, "DRAIN_FILE": str(tmp_path / "d")})
        app.register_blueprint(bp)
        assert [c.name for c in health_of(app).checks] == ["uptime", "pantry"]
        health_of(app).refresher.stop()

    def test_check_names_are_unique(self, make_service: ServiceFactory) -> None:
        service = make_service()
        for name in ("uptime", "startup", "shutdown", "refresher"):
            with pytest.raises(ValueError, match="already named"):
                service.health.add_check(check(name, failing()))

    def test_checks_cannot_be_added_once_running(self, ready: Service) -> None:
        with pytest.raises(RuntimeError):
            ready.health.add_check(check("late", failing()))
