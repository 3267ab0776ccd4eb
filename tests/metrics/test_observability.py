"""Logs, request ids and metrics, read from a real gunicorn as operators read them."""

import json
import os
import re
import signal
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.support.fault_record import FaultRecorder
from tests.support.gunicorn_process import GunicornFactory, GunicornServer
from tests.support.load import ClientLoad
from tests.support.logs import access_records, wait_for_log
from tests.support.management import Instance
from tests.support.snapshots import checks_of_the_application

pytestmark = pytest.mark.slow  # real processes: not in the fast tier

SMOKE_TEST = "/api/v1/smoke-test"


def worker_pids(metrics_dir: Path, kind: str) -> set[int]:
    """The pids of the workers with ``kind`` metrics files (counter, gauge_livesum),
    in the instance's directory inside ``metrics_dir``; the archive is not a worker."""
    return {
        int(pid)
        for path in metrics_dir.glob(f"**/{kind}_*.db")
        if (pid := path.stem.rsplit("_", 1)[1]).isdigit()
    }


def wait_until(condition: Callable[[], bool], timeout: float = 60.0) -> None:
    """Wait until ``condition`` holds; fail the test if it does not in time."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "the condition did not hold in time"
        time.sleep(0.05)


def raw_request(port: int, request: bytes) -> bytes:
    """Send bytes as they are and read the whole answer."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as connection:
        connection.sendall(request)
        chunks = []
        while chunk := connection.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


def scrape(instance: Instance, headers: dict[str, str] | None = None) -> dict[str, Any]:
    """/metrics of the management listener, parsed by prometheus_client's own parser,
    samples by name and labels."""
    response = instance.management("/metrics", headers=headers)
    assert response.status == 200
    samples: dict[str, Any] = {}
    for family in text_string_to_metric_families(response.body.decode()):
        for sample in family.samples:
            key = (sample.name, tuple(sorted(sample.labels.items())))
            samples[str(key)] = sample.value
            samples.setdefault(sample.name, []).append((sample.labels, sample.value))
    return samples


class TestLogs:
    def test_every_line_is_json(self, gunicorn: GunicornServer) -> None:
        gunicorn.request("GET", SMOKE_TEST)
        wait_for_log(gunicorn, SMOKE_TEST)
        lines = [line for line in gunicorn.log_lines() if line.strip()]
        assert lines
        for line in lines:
            record = json.loads(line)
            assert {"timestamp", "level", "logger", "message"} <= set(record)

    def test_access_line_fields(self, gunicorn: GunicornServer) -> None:
        gunicorn.request(
            "GET", SMOKE_TEST + "?pet=cat", headers={"X-Request-ID": "deploy-42"}
        )
        wait_for_log(gunicorn, "deploy-42")
        [record] = access_records(gunicorn, SMOKE_TEST)
        assert datetime.fromisoformat(record["timestamp"]).tzinfo is not None
        assert record["level"] == "INFO"
        assert record["logger"] == "gunicorn.access"
        assert record["request_id"] == "deploy-42"
        assert record["method"] == "GET"
        assert record["path"] == SMOKE_TEST
        assert record["query"] == "pet=cat"
        assert record["status"] == 200
        assert isinstance(record["duration_ms"], float) and record["duration_ms"] > 0
        assert record["remote_addr"] == "127.0.0.1"
        assert record["response_bytes"] == 59
        assert "deploy-42" in record["message"]

    def test_records_inside_a_request_carry_its_id(
        self, start_gunicorn: GunicornFactory
    ) -> None:
        server = start_gunicorn(app="tests.support.apps.crashing:app")
        response = server.request("GET", "/crash", headers={"X-Request-ID": "crash-1"})
        assert response.status == 500
        assert "hunter2" not in response.body.decode()

        def crash_records() -> list[dict[str, Any]]:
            return [r for r in server.log_records() if r.get("request_id") == "crash-1"]

        # The access line comes last, once the answer is sent (not the start's GET /).
        wait_until(
            lambda: any(r["logger"] == "gunicorn.access" for r in crash_records()),
            timeout=30.0,
        )
        by_logger = {record["logger"]: record for record in crash_records()}
        warning = by_logger["petsage.tests"]
        assert (warning["level"], warning["method"], warning["path"]) == (
            "WARNING",
            "GET",
            "/crash",
        )
        error = by_logger["petsage"]
        assert error["level"] == "ERROR"
        assert "RuntimeError" in error["exc_info"]
        assert by_logger["gunicorn.access"]["status"] == 500

    def test_text_format_for_local_use(self, start_gunicorn: GunicornFactory) -> None:
        server = start_gunicorn({"PETSAGE_LOG_FORMAT": "text"})
        server.request("GET", SMOKE_TEST, headers={"X-Request-ID": "local-1"})
        wait_for_log(server, "local-1")
        [line] = [line for line in server.log_lines() if "local-1" in line]
        assert not line.startswith("{")
        assert (
            ' INFO gunicorn.access: 127.0.0.1 "GET /api/v1/smoke-test HTTP/1.1" 200'
            in line
        )

    def test_successful_probes_are_not_logged_failures_are(
        self, start_gunicorn: GunicornFactory, tmp_path: Path
    ) -> None:
        drain_file = tmp_path / "drain"
        server = start_gunicorn({"PETSAGE_DRAIN_FILE": str(drain_file)})
        # Until the instance's first cycle, /readyz fails (and those answers are
        # logged): wait for it to pass, counting the failures.
        starting = 0
        while server.request("GET", "/readyz").status != 200:
            starting += 1
            assert starting < 1000, "never ready"
            time.sleep(0.02)
        for path in ("/livez", "/readyz", "/readyz/uptime"):
            assert server.request("GET", path).status == 200
        drain_file.touch()
        assert server.request("GET", "/readyz").status == 503
        server.request("GET", SMOKE_TEST)
        wait_for_log(server, SMOKE_TEST)
        assert access_records(server, "/livez") == []
        assert access_records(server, "/readyz/uptime") == []
        readyz = [r["status"] for r in access_records(server, "/readyz")]
        assert readyz == [503] * (starting + 1)


HOSTILE_IDS = [
    "line\r\nbreak",
    "escape\x1b[31mred",
    "x" * 10_000,
    'quote" injected="1',
    "",
]


class TestRequestIds:
    def test_a_safe_id_is_kept_and_echoed(self, gunicorn: GunicornServer) -> None:
        response = gunicorn.request(
            "GET", SMOKE_TEST, headers={"X-Request-ID": "a1b2-c3.d4:e5_f6"}
        )
        assert response.headers["X-Request-ID"] == "a1b2-c3.d4:e5_f6"

    def test_without_an_id_one_is_made(self, gunicorn: GunicornServer) -> None:
        first = gunicorn.request("GET", SMOKE_TEST).headers["X-Request-ID"]
        second = gunicorn.request("GET", "/livez").headers["X-Request-ID"]
        assert len(first) == 32 and int(first, 16) >= 0
        assert first != second

    def test_errors_carry_the_id_too(self, gunicorn: GunicornServer) -> None:
        response = gunicorn.request(
            "DELETE", SMOKE_TEST, headers={"X-Request-ID": "e-1"}
        )
        assert response.status == 405
        assert response.headers["X-Request-ID"] == "e-1"

    @pytest.mark.parametrize("hostile", HOSTILE_IDS, ids=range(len(HOSTILE_IDS)))
    def test_a_hostile_id_is_replaced_and_never_logged(
        self, gunicorn: GunicornServer, hostile: str
    ) -> None:
        request = (
            f"GET {SMOKE_TEST} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            f"X-Request-ID: {hostile}\r\nConnection: close\r\n\r\n"
        ).encode("latin-1")
        answer = raw_request(gunicorn.port, request)
        head = answer.split(b"\r\n\r\n")[0].decode("latin-1")
        if head.startswith("HTTP/1.1 200"):
            echoed = [
                line.split(": ", 1)[1]
                for line in head.split("\r\n")
                if line.lower().startswith("x-request-id:")
            ]
            assert len(echoed) == 1 and len(echoed[0]) == 32
        else:
            # gunicorn refuses some of them before PetSage sees the request.
            assert head.startswith(("HTTP/1.1 400", "HTTP/1.1 431"))
        assert gunicorn.request("GET", SMOKE_TEST).status == 200
        if hostile:
            assert hostile not in gunicorn.log()
        for line in gunicorn.log_lines():
            json.loads(line)


@dataclass(frozen=True)
class OneWorker:
    """An instance of one worker at a time, so that which worker answers is certain,
    with its metrics files in ``metrics_dir``."""

    instance: Instance
    metrics_dir: Path

    def kill_worker(self) -> int:
        """SIGKILL the worker, wait until the master has retired it (its counts folded
        into the archive, the last step), and return its pid; gunicorn starts a
        replacement."""
        [victim] = worker_pids(self.metrics_dir, "counter")
        assert victim in worker_pids(self.metrics_dir, "gauge_livesum")
        os.kill(victim, signal.SIGKILL)
        wait_until(lambda: victim not in worker_pids(self.metrics_dir, "counter"))
        return victim


@pytest.fixture
def one_worker(start_gunicorn: GunicornFactory, tmp_path: Path) -> OneWorker:
    """A PetSage instance with one worker, its metrics files in the test's directory."""
    metrics_dir = tmp_path / "metrics"
    metrics_dir.mkdir()
    instance = Instance(
        start_gunicorn, {"PROMETHEUS_MULTIPROC_DIR": str(metrics_dir)}, WORKERS="1"
    )
    return OneWorker(instance, metrics_dir)


class TestMetrics:
    def test_counts_are_summed_over_workers(self, one_worker: OneWorker) -> None:
        instance, metrics_dir = one_worker.instance, one_worker.metrics_dir
        server = instance.server
        # The first worker serves 30 requests and is killed; its replacement 30 more.
        for _ in range(30):
            assert server.request("GET", SMOKE_TEST).status == 200
        first = one_worker.kill_worker()
        for _ in range(30):
            assert server.request("GET", SMOKE_TEST).status == 200
        # The dead worker's counts are folded into the archive, its files deleted.
        assert worker_pids(metrics_dir, "counter") != {first}
        assert len(list(metrics_dir.glob("**/counter_archive.db"))) == 1
        samples = scrape(instance)
        smoke_200 = [
            value
            for labels, value in samples["petsage_http_requests_total"]
            if labels == {"method": "GET", "route": SMOKE_TEST, "status": "200"}
        ]
        assert smoke_200 == [60.0]
        assert samples["petsage_build_info"][0][0] == {
            "version": "1.0.0",
            "release_id": "1.0.0",
        }
        wait_until(lambda: scrape(instance)["petsage_ready"][0][1] == 1.0)
        samples = scrape(instance)
        assert [value for _, value in samples["petsage_draining"]] == [0.0]
        status = {
            labels["check"]: value
            for labels, value in samples["petsage_health_check_status"]
        }
        assert status == dict.fromkeys(checks_of_the_application(), 0.0)
        assert "petsage_http_request_duration_seconds_bucket" in samples
        assert "petsage_http_requests_in_flight" in samples

    def test_label_values_stay_bounded(self, start_gunicorn: GunicornFactory) -> None:
        instance = Instance(start_gunicorn)
        gunicorn = instance.server
        for index in range(1000):
            assert gunicorn.request("GET", f"/unknown/{index}").status == 404
        gunicorn.request("BREW", "/pot")
        series = scrape(instance)["petsage_http_requests_total"]
        routes = {labels["route"] for labels, _ in series}
        assert "unmatched" in routes
        assert not any(route.startswith("/unknown/") for route in routes)
        assert {labels["method"] for labels, _ in series} <= {"GET", "HEAD", "other"}
        assert len(series) < 10

    def test_a_dead_workers_live_gauges_are_dropped(
        self, one_worker: OneWorker
    ) -> None:
        metrics_dir = one_worker.metrics_dir
        scrape(one_worker.instance)
        victim = one_worker.kill_worker()
        assert victim not in worker_pids(metrics_dir, "gauge_livesum")
        # Its counts still count, from the archive.
        assert len(list(metrics_dir.glob("**/counter_archive.db"))) == 1
        assert one_worker.instance.server.request("GET", SMOKE_TEST).status == 200

    def test_metrics_need_the_token_when_one_is_set(
        self, start_gunicorn: GunicornFactory
    ) -> None:
        instance = Instance(start_gunicorn, HEALTH_TOKEN="s3cret")
        refused = instance.management("/metrics")
        assert refused.status == 401
        assert refused.headers["Content-Type"] == "application/problem+json"
        assert "Bearer" in refused.headers["WWW-Authenticate"]
        scrape(instance, headers={"Authorization": "Bearer s3cret"})

    def test_a_trusted_network_needs_no_token(
        self, start_gunicorn: GunicornFactory
    ) -> None:
        instance = Instance(
            start_gunicorn, HEALTH_TOKEN="s3cret", TRUSTED_NETWORKS="127.0.0.0/8"
        )
        scrape(instance)

    def test_an_untrusted_network_is_refused(
        self, start_gunicorn: GunicornFactory
    ) -> None:
        instance = Instance(start_gunicorn, TRUSTED_NETWORKS="10.0.0.0/8")
        assert instance.management("/metrics").status == 403

    def test_metrics_can_be_switched_off(self, start_gunicorn: GunicornFactory) -> None:
        instance = Instance(start_gunicorn, METRICS="false", PUBLIC_METRICS="true")
        assert instance.management("/metrics").status == 404
        assert instance.public("/metrics").status == 404


@pytest.mark.fault
def test_the_ready_gauge_agrees_with_readyz_while_workers_recycle(
    start_gunicorn: GunicornFactory, fault_record: FaultRecorder
) -> None:
    # Every worker answers 20 requests and is replaced: new workers all the time.
    instance = Instance(
        start_gunicorn,
        {"GUNICORN_CMD_ARGS": "--max-requests 20", "PETSAGE_WORKERS": "3"},
    )
    wait_until(lambda: instance.management("/readyz").status == 200, 30)
    pairs = []
    with ClientLoad(instance.port, threads=2) as load:
        load.wait_for_requests(100)
        for _ in range(30):
            gauge = scrape(instance)["petsage_ready"][0][1]
            probe = instance.management("/readyz").status
            pairs.append((gauge, probe))
    disagreements = [pair for pair in pairs if (pair[0] == 1.0) != (pair[1] == 200)]
    restarts = len(BOOTED.findall(instance.server.log())) - 3
    print(f"\n{len(pairs)} scrapes and probes, {restarts} worker restarts: {pairs}")
    fault_record(
        fault="workers recycled (--max-requests 20) while Prometheus scrapes",
        injected=f"{restarts} worker restarts; petsage_ready scraped, then /readyz"
        " probed, 30 times",
        load="2 client threads on the smoke test",
        sent=len(pairs),
        failed=len(disagreements),
        lost=0,
        recovery="none needed: the gauge is read when scraped",
    )
    assert restarts > 0
    assert disagreements == []
    assert {probe for _, probe in pairs} == {200}


BOOTED = re.compile(r"Booting worker with pid: \d+")
