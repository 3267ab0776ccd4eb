"""Health belongs to the instance: one check runner per gunicorn master, and one
snapshot every worker answers from, across reloads, respawns and a dead checker.

Each test starts a real gunicorn on 127.0.0.1 and counts what a real dependency (a
local TCP or HTTP listener) sees, or what /readyz answers from whichever worker the
kernel hands each new connection.
"""

import contextlib
import json
import os
import signal
import time

import pytest
from prometheus_client.parser import text_string_to_metric_families

from petsage.health.refresher import JITTER, CheckResult, Snapshot
from petsage.health.shared import (
    SHORT_OUTPUT,
    Published,
    decode,
    encode,
    publish,
)
from petsage.instance.memory import SNAPSHOT_CAPACITY, InstanceMemory
from tests.support.fault_record import FaultRecorder
from tests.support.gunicorn_process import GunicornFactory, GunicornServer
from tests.support.instances import AUTH, LIVENESS, TOKEN, readiness
from tests.support.listeners import answering, refusing, serving
from tests.support.processes import checkers, children, wait_until
from tests.support.snapshots import (
    checks_of_the_application,
    first_cycle_begun_after,
    published,
)

pytestmark = pytest.mark.slow  # real processes: not in the fast tier

# A dependency as slow as the one that showed the reload gap: 1.5 s per answer.
SLOW = 1.5
# Why readiness fails, to a token holder, once the instance saw its TCP check refused.
REFUSED = "db: ConnectionRefusedError: Connection refused"


def slow_dependency(port: int) -> dict[str, str]:
    """Settings with a critical HTTP check of 127.0.0.1:``port`` that has time."""
    return {
        "PETSAGE_CRITICAL_DEPENDENCIES": f"catalog=http://127.0.0.1:{port}/",
        "PETSAGE_CHECK_TIMEOUT": "3",
        "PETSAGE_CHECK_PERIOD": "10",
    }


def poll_readiness(port: int, seconds: float, every: float) -> list[int | None]:
    """/readyz answers of ``port`` on a new connection each, every ``every`` s."""
    answers = []
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        answers.append(readiness(port))
        time.sleep(every)
    return answers


def tcp_dependency(port: int, period: float, workers: int) -> dict[str, str]:
    """Settings with a critical TCP check of 127.0.0.1:``port`` every ``period``."""
    return {
        "PETSAGE_WORKERS": str(workers),
        "PETSAGE_CRITICAL_DEPENDENCIES": f"db=tcp://127.0.0.1:{port}",
        "PETSAGE_CHECK_PERIOD": str(period),
    }


def poll_counts(answers: list[int | None]) -> dict[str, int]:
    """Polls of /readyz as the fault record counts them: 503 failed, None lost."""
    return {
        "sent": len(answers),
        "failed": answers.count(503),
        "lost": answers.count(None),
    }


def workers_ready(server: GunicornServer, count: int) -> None:
    """Wait until ``count`` workers run and /readyz answers 200 ten times in a row."""
    pid = server.process.pid
    wait_until(lambda: len(children(pid)) == count, 20, f"{count} workers")
    wait_until(
        lambda: all(readiness(server.port) == 200 for _ in range(10)),
        20,
        "/readyz 200 from every worker",
    )


@pytest.mark.parametrize("workers", [1, 5])
def test_checks_run_once_per_period_whatever_the_worker_count(
    start_gunicorn: GunicornFactory, workers: int
) -> None:
    period, checks = 0.5, 8
    with serving(b"") as dependency:
        server = start_gunicorn(tcp_dependency(dependency.port, period, workers))
        workers_ready(server, workers)
        before = dependency.accepted
        started = time.monotonic()
        wait_until(
            lambda: dependency.accepted - before >= checks, LIVENESS, f"{checks} checks"
        )
        elapsed = time.monotonic() - started
        hits = dependency.accepted - before
    print(
        f"\n{workers} worker(s): {hits} checks in {elapsed:.2f} s ="
        f" {hits * period / elapsed:.2f} per {period:g} s period"
    )
    # At most one cycle per shortest jittered period, plus the one under way and one
    # the listener counted late: a busy machine only makes cycles come later.
    assert hits <= elapsed / (period * (1 - JITTER)) + 2


def test_a_reload_answers_readiness_from_the_instances_snapshot_at_once(
    start_gunicorn: GunicornFactory,
) -> None:
    with answering({"/": (200, "text/plain", b"ok")}, delay=SLOW) as port:
        server = start_gunicorn(slow_dependency(port))
        workers_ready(server, 2)
        old = children(server.process.pid)
        server.process.send_signal(signal.SIGHUP)
        # Long enough for the new workers to boot and a first check to finish.
        answers = poll_readiness(server.port, 2 * SLOW + 1, every=0.1)
        new = children(server.process.pid)
    unready = [answer for answer in answers if answer != 200]
    print(
        f"\nSIGHUP: {len(answers)} /readyz polls every 100 ms,"
        f" {answers.count(503)} answered 503, {answers.count(None)} unanswered"
    )
    assert new and not new & old, "the reload replaced every worker"
    assert unready == []


@pytest.mark.fault
def test_a_respawned_worker_answers_readiness_at_once(
    start_gunicorn: GunicornFactory, fault_record: FaultRecorder
) -> None:
    with answering({"/": (200, "text/plain", b"ok")}, delay=SLOW) as port:
        server = start_gunicorn(slow_dependency(port))
        workers_ready(server, 2)
        killed = max(children(server.process.pid))
        signal_sent = time.monotonic()
        # Between two polls, so that no poll of ours is in flight on that worker.
        os.kill(killed, signal.SIGKILL)
        answers = poll_readiness(server.port, 2 * SLOW + 1, every=0.1)
        respawned = children(server.process.pid) - {killed}
    took = time.monotonic() - signal_sent
    fault_record(
        fault="worker killed, respawned while a critical check takes 1.5 s",
        injected="SIGKILL to one of 2 workers; a critical HTTP check answers in 1.5 s",
        load="1 client polling /readyz every 100 ms, new connection per request",
        recovery=f"none needed: /readyz 200 throughout {took:.1f} s",
        **poll_counts(answers),
    )
    assert len(respawned) == 2, "gunicorn replaced the killed worker"
    assert [answer for answer in answers if answer != 200] == []


def test_a_failing_dependency_makes_every_worker_agree_within_one_period(
    start_gunicorn: GunicornFactory,
) -> None:
    period = 3.0
    with contextlib.ExitStack() as dependency_up:
        dependency = dependency_up.enter_context(serving(b""))
        server = start_gunicorn(
            {
                **tcp_dependency(dependency.port, period, workers=2),
                "PETSAGE_HEALTH_TOKEN": TOKEN,
            }
        )
        workers_ready(server, 2)
        # A third worker half a period later: workers started at different times
        # (respawns, TTIN) are what made per-worker cycles disagree.
        time.sleep(period / 2)
        server.process.send_signal(signal.SIGTTIN)
        workers_ready(server, 3)
    # The dependency's port now refuses connections.
    failed_at = time.monotonic()
    noticed = first_cycle_begun_after(server, failed_at)
    wait_until(lambda: readiness(server.port) == 503, LIVENESS, "a first 503")
    first_503 = time.monotonic() - failed_at
    # Followers reread the instance's snapshot every 0.1 s: then every worker fails
    # readiness for the dependency, as that cycle saw it. A worker that did not follow
    # would answer 200, then fail as stale: never for the dependency.
    answers: list[str] = []

    def agreed() -> bool:
        answers.append(why_unready(server))
        return answers[-50:] == [REFUSED] * 50

    wait_until(agreed, LIVENESS, f"50 answers in a row of {REFUSED!r}")
    print(
        f"\ndependency down: the next cycle {noticed['completed_at'] - failed_at:.2f} s"
        f" later, first 503 after {first_503:.2f} s; then {len(answers)} polls to 50"
        f" in a row failing for the dependency: {answers.count('')} passed,"
        f" {len(answers) - answers.count(REFUSED) - answers.count('')} failed otherwise"
    )
    # The instance's first cycle after the failure is the one that saw it.
    assert noticed["results"]["db"]["status"] == "fail"


def why_unready(server: GunicornServer) -> str:
    """Why /readyz fails, as a token holder reads it on a new connection; "" when it
    passes."""
    answer = server.request("GET", "/readyz", headers=AUTH)
    output: str = json.loads(answer.body).get("output", "")
    return output


def check_status(server: GunicornServer) -> dict[str, float]:
    """``petsage_health_check_status`` by check, as a scrape of the instance reads."""
    text = server.request("GET", "/metrics").body.decode()
    return {
        sample.labels["check"]: sample.value
        for family in text_string_to_metric_families(text)
        if family.name == "petsage_health_check_status"
        for sample in family.samples
    }


@pytest.mark.fault
def test_check_metrics_outlive_the_checker_that_ran_the_checks(
    start_gunicorn: GunicornFactory, fault_record: FaultRecorder
) -> None:
    period = 5.0
    with refusing() as port:
        server = start_gunicorn(
            {
                **tcp_dependency(port, period, workers=3),
                "PETSAGE_PUBLIC_METRICS": "true",
            }
        )
        pid = server.process.pid
        wait_until(lambda: len(children(pid)) == 3, 20, "3 workers")
        wait_until(lambda: published(server) is not None, 10, "a first cycle")
        earlier = published(server)
        assert earlier is not None
        # Right after a cycle, so that the next (half a period after a failure) is
        # seconds away while the checker is gone.
        wait_until(
            lambda: (
                (published(server) or earlier)["completed_at"]
                != earlier["completed_at"]
            ),
            period,
            "the next cycle",
        )
        checker = earlier["checker"]
        os.kill(checker, signal.SIGKILL)
        wait_until(lambda: checker not in checkers(pid), 5, "the checker reaped")
        time.sleep(0.2)  # the master folds a dead checker's metrics as it notices
        status = check_status(server)
        after = published(server)
    assert after is not None
    fault_record(
        fault="the checker process killed, metrics scraped",
        injected="SIGKILL to the checker of 3 workers between two cycles (db failing)",
        load="1 scrape of /metrics right after the checker was reaped",
        sent=1,
        failed=0 if status.get("db") == 2.0 else 1,
        lost=0,
        recovery="none needed: the other workers' gauges hold the instance's status",
    )
    assert after["checker"] == checker, "no new cycle yet: the workers answered"
    # Every check's gauge outlives the checker: the failing dependency's and the
    # passing rest (the built-in and any feature's).
    assert status == {**dict.fromkeys(checks_of_the_application(), 0.0), "db": 2.0}


class TestSnapshotWithoutGunicorn:
    """The snapshot file's format and the in-process fallback, on their own."""

    def test_a_snapshot_survives_the_file(self) -> None:
        result = CheckResult("fail", 1.5, "ms", "HTTP 503", "t", 1.5, 3)
        published = Published(Snapshot({"db": result}, 12.5), 4242, 22.5)
        assert decode(encode(published)) == published

    @pytest.mark.parametrize(
        "content",
        [
            b"",
            b"[]",
            b'{"checker": 1}',
            b'{"checker":1,"completed_at":1,"next_cycle_at":null,"results":{"db":'
            b'{"status":"fine","value":null,"unit":null,"output":"","time":"t",'
            b'"duration_ms":1,"consecutive_failures":0}}}',
        ],
    )
    def test_anything_else_is_refused(self, content: bytes) -> None:
        with pytest.raises(ValueError):
            decode(content)

    def test_a_snapshot_too_long_for_the_memory_is_shared_with_short_outputs(
        self,
    ) -> None:
        memory = InstanceMemory.create("petsage-1-2-3")
        long = CheckResult("fail", None, None, "x" * SNAPSHOT_CAPACITY, "t", 1.5, 3)
        published = Published(Snapshot({"db": long}, time.monotonic()), 7, None)
        assert publish(memory, published)
        found = memory.read_snapshot()
        assert found is not None
        shared = decode(found[2]).snapshot.results["db"]
        assert shared.output == "x" * SHORT_OUTPUT
