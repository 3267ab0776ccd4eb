"""Metrics storage faults against real gunicorn: full, read-only or vanished storage
degrades metrics and never serving; storage stays bounded over worker restarts.

The tests run a real gunicorn with PROMETHEUS_MULTIPROC_DIR on a filesystem the
test mounts (a tmpfs of a few KiB, a read-only one, a read-only bind mount), so they
need root; where mounting is refused they are skipped with the reason. Metric files
are found anywhere under the directory given, since each instance keeps its own
directory inside it.
"""

import contextlib
import http.client
import os
import re
import shutil
import signal
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.support.fault_record import FaultRecorder
from tests.support.gunicorn_process import GunicornFactory, GunicornServer, HttpResult
from tests.support.instances import LIVENESS
from tests.support.load import SMOKE_TEST, ClientLoad
from tests.support.metrics_files import metric_files, samples
from tests.support.mounts import mounted, read_only_bind_mount
from tests.support.processes import answers, checkers, wait_until

pytestmark = pytest.mark.slow  # real processes: not in the fast tier

# /metrics on the public port, where these tests scrape it.
PUBLIC_METRICS = {"PETSAGE_PUBLIC_METRICS": "true"}
TRAFFIC = (SMOKE_TEST, "/", "/livez", "/readyz", "/health")
LOAD = "4 client threads (smoke test, /, /livez, /readyz, /health), new connection"
LOAD_SECONDS = 2.0
BOOTED = re.compile(r"Booting worker with pid: (\d+)")
DEGRADED_IN = re.compile(r"metrics are degraded in worker (\d+)")
STORAGE_LOGGER = "petsage.metrics.storage"
# A live worker's files: its counters, histograms and two kinds of live gauges (livesum,
# livemax); readiness and draining are read when scraped, stored nowhere.
FILES_PER_WORKER = 4
REQUESTS = ("petsage_http_requests_total", "GET", SMOKE_TEST, "200")
# The figure is 1,000 restarts, about three minutes here on two shared cores:
# the long form (``bash tests/faults/run``) runs that; the short one
# (the test suite's and CI's, ``--quick``) keeps the test near 20 s; the full form
# (PETSAGE_FAULT_FULL=1, ``bash tests/faults/run``) restarts 1,000.
RESTARTS = 1000 if os.environ.get("PETSAGE_FAULT_FULL") == "1" else 100


def booted_workers(server: GunicornServer) -> list[int]:
    """The pid of every worker the master has booted so far, in order."""
    return [int(pid) for pid in BOOTED.findall(server.log())]


def storage_errors(server: GunicornServer) -> list[str]:
    """The messages of the ERROR records about the metrics storage."""
    return [
        record["message"]
        for record in server.log_records()
        if record["level"] == "ERROR" and record["logger"] == STORAGE_LOGGER
    ]


def degraded_workers(server: GunicornServer) -> list[int]:
    """The pid in each ERROR line saying a worker's metrics are degraded."""
    return [
        int(pid)
        for message in storage_errors(server)
        for pid in DEGRADED_IN.findall(message)
    ]


def crashes(server: GunicornServer) -> list[str]:
    """gunicorn's warnings and errors: a worker killed by a signal (SIGBUS is a
    warning), exiting with an error, timing out, failing to boot. The master's own
    line that the instance's metrics directory cannot be made is none of those."""
    return [
        record["message"]
        for record in server.log_records()
        if record["logger"] == "gunicorn.error"
        and record["level"] in ("WARNING", "ERROR", "CRITICAL")
        and not record["message"].startswith("Metrics are degraded: ")
    ]


def is_degraded(answer: HttpResult) -> bool:
    """Whether a /metrics answer says that metrics are degraded, both ways it can."""
    degraded = samples(answer.body).get(("petsage_metrics_degraded",))
    header = answer.headers.get("PetSage-Metrics")
    assert (degraded == 1.0) == (header == "degraded"), (degraded, header)
    return degraded == 1.0


def wait_for_service(server: GunicornServer, workers: int = 2) -> list[int]:
    """Wait until every worker has booted and is ready; their pids.

    A worker fails readiness until its first check cycle ends, a moment after it
    boots: 20 answers 200 in a row, each on a new connection, come from both.
    """
    wait_until(lambda: len(booted_workers(server)) >= workers, 10, "workers booted")
    wait_until(
        lambda: all(answers(server.port, "/readyz") == 200 for _ in range(20)),
        10,
        "/readyz 200 from every worker",
    )
    return booted_workers(server)


def probes_by_every_method(server: GunicornServer) -> list[str]:
    """GET, HEAD and OPTIONS on /livez and /readyz; what did not answer 200."""
    wrong = []
    for method in ("GET", "HEAD", "OPTIONS"):
        for path in ("/livez", "/readyz"):
            status = server.request(method, path).status
            if status != 200:
                wrong.append(f"{method} {path}: {status}")
    return wrong


def check_every_worker_degraded_and_serving(
    server: GunicornServer, fault_record: FaultRecorder, fault: str, injected: str
) -> None:
    """Under load, every request and probe is answered normally, no worker is
    replaced, each worker logged exactly one ERROR line and /metrics says degraded.
    """
    workers = wait_for_service(server)
    with ClientLoad(server.port, threads=4, paths=TRAFFIC) as load:
        time.sleep(LOAD_SECONDS)
        scrapes = [server.request("GET", "/metrics") for _ in range(10)]
        wrong_probes = probes_by_every_method(server)
    fault_record(
        fault=fault,
        injected=injected,
        load=f"{LOAD} per request, {LOAD_SECONDS:.0f} s; 10 scrapes; probes by"
        " GET, HEAD and OPTIONS",
        sent=load.sent + len(scrapes) + 6,
        failed=len(load.failed) - load.total.lost + len(wrong_probes),
        lost=load.total.lost,
        recovery="none needed: no worker crashed; metrics degraded, one ERROR line"
        " per worker",
    )
    assert load.sent > 0 and load.failed == []
    assert wrong_probes == []
    assert [answer.status for answer in scrapes] == [200] * len(scrapes)
    assert all(is_degraded(answer) for answer in scrapes)
    assert booted_workers(server) == workers  # none crashed, none replaced
    checker = checkers(server.process.pid)  # its metrics degraded too, once
    degraded = degraded_workers(server)
    assert sorted(pid for pid in degraded if pid not in checker) == sorted(workers)
    assert len(storage_errors(server)) == len(degraded) <= len(workers) + 1
    assert crashes(server) == []


def add_a_worker_and_retire_the_oldest(server: GunicornServer) -> int:
    """TTIN, then TTOU once the added worker has degraded: the added worker's pid."""
    server.process.send_signal(signal.SIGTTIN)
    wait_until(lambda: len(booted_workers(server)) == 3, 10, "a third worker")
    [added] = booted_workers(server)[2:]
    wait_until(lambda: added in degraded_workers(server), 10, "it degrades")
    server.process.send_signal(signal.SIGTTOU)
    wait_until(lambda: len(storage_errors(server)) == 2, 10, "a failed fold")
    return added


def record_made_read_only(
    fault_record: FaultRecorder,
    load: ClientLoad,
    scrapes: list[HttpResult],
    wrong_probes: list[str],
) -> None:
    """The fault record's row for metrics storage made read-only while running."""
    fault_record(
        fault="metrics storage made read-only",
        injected="read-only bind mount over the instance's metrics directory while"
        " running; a worker added (TTIN), the oldest retired (TTOU)",
        load="4 client threads (/, /livez), new connection per request, while"
        " the workers changed; 10 scrapes",
        sent=load.sent + len(scrapes) + 6,
        failed=len(load.failed) - load.total.lost + len(wrong_probes),
        lost=load.total.lost,
        recovery="none needed: the new worker's metrics degraded, no count lost",
    )


def files_and_bytes(directory: Path) -> tuple[int, int]:
    """How many metrics files there are under ``directory``, and their bytes."""
    files = metric_files(directory)
    size = 0
    for path in files:
        with contextlib.suppress(FileNotFoundError):  # folded meanwhile
            size += path.stat().st_size
    return len(files), size


def assert_scraped_whole_and_count(server: GunicornServer) -> float:
    """Assert that /metrics answers 200, not degraded; the smoke tests it counts."""
    answer = server.request("GET", "/metrics")
    assert answer.status == 200 and not is_degraded(answer)
    return samples(answer.body).get(REQUESTS, 0.0)


@dataclass
class Restarts:
    """Requests sent while workers restart, and what each checkpoint saw."""

    totals: list[float]
    most: int  # files at the fullest checkpoint
    sent: int = 0
    failed: int = 0
    lost: int = 0


def restart_workers_by_requests(
    server: GunicornServer, directory: Path, workers: int, run: Restarts
) -> None:
    """Send the smoke test until RESTARTS workers were replaced; check every 50."""
    while len(booted_workers(server)) - workers < RESTARTS:
        run.sent += 1
        try:
            # No bound on the answer's time here (a worker booting on a loaded
            # machine takes seconds): a request is lost only if never answered.
            answer = server.request("GET", SMOKE_TEST, timeout=LIVENESS)
            run.failed += answer.status != 200
        except (OSError, http.client.HTTPException):
            run.lost += 1
        if run.sent % 50 == 0:
            run.totals.append(assert_scraped_whole_and_count(server))
            run.most = max(run.most, files_and_bytes(directory)[0])


def record_the_restarts(
    fault_record: FaultRecorder,
    run: Restarts,
    restarts: int,
    elapsed: float,
    before: tuple[int, int],
    after: tuple[int, int],
) -> None:
    """Print the files, bytes and counts over the restarts; the fault record's row."""
    print(
        f"\n{restarts} worker restarts in {elapsed:.1f} s: files {before[0]} at"
        f" start, at most {run.most} at any checkpoint, {after[0]} at the end;"
        f" bytes {before[1]} -> {after[1]}; {REQUESTS[0]} of the smoke test"
        f" {run.totals[0]:.0f} -> {run.totals[-1]:.0f} ({run.sent} sent)"
    )
    fault_record(
        fault="worker restarts",
        injected=f"{restarts} worker restarts (gunicorn --max-requests 1)",
        load="1 client, new connection per request, smoke test; a scrape every"
        " 50 requests",
        sent=run.sent,
        failed=run.failed,
        lost=run.lost,
        recovery=f"none needed: {after[0]} metrics files ({after[1]} bytes) at"
        f" the end, at most {run.most} meanwhile; every request counted once",
    )


class TestStorageFaults:
    @pytest.mark.fault
    def test_full_storage_degrades_metrics_and_every_request_is_answered(
        self,
        start_gunicorn: GunicornFactory,
        fault_record: FaultRecorder,
        tmp_path: Path,
    ) -> None:
        directory = tmp_path / "metrics"
        directory.mkdir()
        with mounted("-t", "tmpfs", "-o", "size=8k", "tmpfs", str(directory)):
            server = start_gunicorn(
                {"PROMETHEUS_MULTIPROC_DIR": str(directory), **PUBLIC_METRICS}
            )
            try:
                check_every_worker_degraded_and_serving(
                    server,
                    fault_record,
                    fault="metrics storage full",
                    injected="PROMETHEUS_MULTIPROC_DIR on an 8 KiB tmpfs, smaller"
                    " than one metrics file",
                )
                assert "No space left on device" in storage_errors(server)[0]
            finally:
                server.stop()

    @pytest.mark.fault
    def test_read_only_storage_degrades_metrics_and_every_request_is_answered(
        self,
        start_gunicorn: GunicornFactory,
        fault_record: FaultRecorder,
        tmp_path: Path,
    ) -> None:
        directory = tmp_path / "metrics"
        directory.mkdir()
        with mounted("-t", "tmpfs", "-o", "size=1m,ro", "tmpfs", str(directory)):
            server = start_gunicorn(
                {"PROMETHEUS_MULTIPROC_DIR": str(directory), **PUBLIC_METRICS}
            )
            try:
                check_every_worker_degraded_and_serving(
                    server,
                    fault_record,
                    fault="metrics storage read-only",
                    injected="PROMETHEUS_MULTIPROC_DIR on a read-only tmpfs",
                )
            finally:
                server.stop()

    @pytest.mark.fault
    def test_storage_made_read_only_while_running_loses_no_count(
        self,
        start_gunicorn: GunicornFactory,
        fault_record: FaultRecorder,
        tmp_path: Path,
    ) -> None:
        directory = tmp_path / "metrics"
        directory.mkdir()
        server = start_gunicorn(
            {"PROMETHEUS_MULTIPROC_DIR": str(directory), **PUBLIC_METRICS}
        )
        workers = wait_for_service(server)
        # Until each worker has made all its files too: one made later would fail.
        counted = 0
        while counted < 20 or len(metric_files(directory)) < FILES_PER_WORKER * 2:
            assert counted < 500, "a worker answered no request"
            assert server.request("GET", SMOKE_TEST).status == 200
            counted += 1
        instance = metric_files(directory)[0].parent
        # Not readiness: a worker that is starting fails it, by design.
        with (
            read_only_bind_mount(instance),
            ClientLoad(server.port, threads=4, paths=("/", "/livez")) as load,
        ):
            # A worker started now cannot create its files; the oldest worker retired
            # now cannot be folded into the archive, so its files stay and count.
            added = add_a_worker_and_retire_the_oldest(server)
            scrapes = [server.request("GET", "/metrics") for _ in range(10)]
            wrong_probes = probes_by_every_method(server)
        record_made_read_only(fault_record, load, scrapes, wrong_probes)
        assert load.sent > 0 and load.failed == []
        assert wrong_probes == []
        assert [answer.status for answer in scrapes] == [200] * len(scrapes)
        # Every worker can still read the storage: each answer has every count.
        for answer in scrapes:
            assert samples(answer.body)[REQUESTS] == counted
        assert degraded_workers(server) == [added]
        assert "Read-only file system" in storage_errors(server)[0]
        assert "Could not fold" in storage_errors(server)[1]
        assert booted_workers(server) == [*workers, added]
        assert crashes(server) == []

    @pytest.mark.fault
    def test_storage_deleted_while_running_degrades_metrics(
        self,
        start_gunicorn: GunicornFactory,
        fault_record: FaultRecorder,
        tmp_path: Path,
    ) -> None:
        directory = tmp_path / "metrics"
        directory.mkdir()
        server = start_gunicorn(
            {"PROMETHEUS_MULTIPROC_DIR": str(directory), **PUBLIC_METRICS}
        )
        workers = wait_for_service(server)
        before = server.request("GET", "/metrics")
        assert not is_degraded(before)
        while directory.exists():  # a worker still booting may add files meanwhile
            shutil.rmtree(directory, ignore_errors=True)
        with ClientLoad(server.port, threads=4, paths=TRAFFIC) as load:
            time.sleep(LOAD_SECONDS)
            scrapes = [server.request("GET", "/metrics") for _ in range(10)]
            wrong_probes = probes_by_every_method(server)
        fault_record(
            fault="metrics storage deleted",
            injected="PROMETHEUS_MULTIPROC_DIR deleted (rm -r) while running",
            load=f"{LOAD} per request, {LOAD_SECONDS:.0f} s; 10 scrapes",
            sent=load.sent + len(scrapes) + 6,
            failed=len(load.failed) - load.total.lost + len(wrong_probes),
            lost=load.total.lost,
            recovery="none needed: metrics degraded in each worker that scraped",
        )
        assert load.sent > 0 and load.failed == []
        assert wrong_probes == []
        # A worker learns of it when it reads the storage: every scrape says so.
        assert [answer.status for answer in scrapes] == [200] * len(scrapes)
        assert all(is_degraded(answer) for answer in scrapes)
        degraded = degraded_workers(server)
        assert degraded and len(set(degraded)) == len(degraded)  # once per worker
        assert set(degraded) <= set(workers)
        assert len(storage_errors(server)) == len(degraded)
        assert booted_workers(server) == workers
        assert crashes(server) == []

    @pytest.mark.fault
    @pytest.mark.long
    def test_storage_stays_bounded_over_worker_restarts(
        self,
        start_gunicorn: GunicornFactory,
        fault_record: FaultRecorder,
        tmp_path: Path,
    ) -> None:
        directory = tmp_path / "metrics"
        directory.mkdir()
        # Each worker answers one request and is replaced.
        server = start_gunicorn(
            {
                "PROMETHEUS_MULTIPROC_DIR": str(directory),
                "GUNICORN_CMD_ARGS": "--max-requests 1",
                **PUBLIC_METRICS,
            }
        )
        workers = 2
        bound = FILES_PER_WORKER * workers + 2  # and the counter and histogram archives
        totals = [assert_scraped_whole_and_count(server)]
        before = files_and_bytes(directory)
        run = Restarts(totals, most=before[0])
        started = time.monotonic()
        restart_workers_by_requests(server, directory, workers, run)
        elapsed = time.monotonic() - started
        restarts = len(booted_workers(server)) - workers
        with contextlib.suppress(AssertionError):  # the last exits, reaped and folded
            wait_until(
                lambda: files_and_bytes(directory)[0] <= bound,
                10,
                f"at most {bound} files",
            )
        run.totals.append(assert_scraped_whole_and_count(server))
        after = files_and_bytes(directory)
        record_the_restarts(fault_record, run, restarts, elapsed, before, after)
        assert run.failed == run.lost == 0
        # At a checkpoint, up to two workers may have exited and not yet been reaped.
        assert run.most <= bound + 2 * FILES_PER_WORKER
        assert after[0] <= bound
        assert after[1] <= bound * 2 * 65536
        assert run.totals == sorted(run.totals)  # monotonic
        assert run.totals[-1] == run.sent  # complete: none lost, none counted twice
        assert crashes(server) == []
