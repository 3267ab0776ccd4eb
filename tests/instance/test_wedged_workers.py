"""The master replaces a worker whose health thread is stuck, within the bound
docs/operators/probes.md states, while the checker process keeps the instance ready;
and a pause of the whole instance (a frozen cgroup, ``docker pause``) replaces no
worker and kills no checker (petsage.serving.server's InstanceKeeper, against real
gunicorn)."""

import contextlib
import http.client
import os
import signal
import time

import pytest

from petsage.health.shared import LEASE, REPLACE_AFTER, TICK
from tests.faults.threads import frozen_thread
from tests.support.fault_record import FaultRecorder
from tests.support.gunicorn_process import GunicornFactory
from tests.support.instances import ReadinessPoller
from tests.support.management import Instance
from tests.support.processes import (
    all_children,
    answers,
    checkers,
    children,
    gone,
    served_by,
    wait_until,
)
from tests.support.snapshots import Publications, instance_memory

pytestmark = pytest.mark.slow  # real processes: not in the fast tier

LIVENESS = 60.0
POLL_EVERY = 0.25
# Cycles every 2 s, so that several are due while a process is stuck.
PERIOD = 2.0
GRACEFUL = 3
THREAD = "petsage-health"
# The documented bound: silent for REPLACE_AFTER leases, a pass of the master's loop
# (1 s), then the worker's graceful exit (its request threads are free).
REPLACED_WITHIN = REPLACE_AFTER * LEASE + 1 + GRACEFUL


def instance_of_workers(start_gunicorn: GunicornFactory, workers: int) -> Instance:
    """An instance of ``workers`` workers checking every PERIOD, once each worker's
    health thread beats in its slot."""
    instance = Instance(
        start_gunicorn,
        WORKERS=str(workers),
        CHECK_PERIOD=f"{PERIOD:g}",
        GRACEFUL_TIMEOUT=str(GRACEFUL),
    )
    master = instance.server.process.pid
    memory = instance_memory(instance.server)
    wait_until(
        lambda: len(children(master)) == workers == len(memory.slots()),
        LIVENESS,
        "every worker's health thread",
    )
    return instance


def livez_of(worker: int, port: int) -> int | None:
    """/livez as ``worker`` answers it, or None when another worker took the
    connection (or none answered)."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        connection.request("GET", "/livez")
        response = connection.getresponse()
        response.read()
        # Kept alive: the worker holding the server end is the one that answered.
        return response.status if served_by(worker, connection, port) else None
    except (OSError, http.client.HTTPException):
        return None
    finally:
        connection.close()


def livez_until_gone(worker: int, port: int, stopped_at: float) -> list[int | None]:
    """``worker``'s /livez answers from one lease after ``stopped_at`` on, polled
    until the worker is gone (replaced)."""
    seen: list[int | None] = []

    def replaced() -> bool:
        if time.monotonic() - stopped_at > LEASE + 0.5:
            seen.append(livez_of(worker, port))
        return gone(worker)

    wait_until(replaced, REPLACED_WITHIN + LIVENESS, "the wedged worker replaced")
    return seen


@pytest.mark.fault
def test_a_worker_whose_health_thread_is_stuck_is_replaced_within_the_bound(
    start_gunicorn: GunicornFactory, fault_record: FaultRecorder
) -> None:
    instance = instance_of_workers(start_gunicorn, 3)
    master = instance.server.process.pid
    target = min(children(master))
    ports = [instance.port, instance.management_port]
    with ReadinessPoller(ports) as poller, Publications(instance.server) as cycles:
        before = len(cycles.seen)
        with frozen_thread(target, THREAD):
            stopped_at = time.monotonic()
            livez = livez_until_gone(target, instance.port, stopped_at)
            replaced = time.monotonic() - stopped_at
        cycles.wait_for_more(2, "two cycles after the replacement")
    answered = [status for status in livez if status is not None]
    fault_record(
        fault="a stuck worker health thread (3 workers)",
        injected="ptrace stop of one worker's health thread only, its other threads"
        f" serving, check period {PERIOD:g} s, PETSAGE_GRACEFUL_TIMEOUT={GRACEFUL}",
        load=f"/readyz on both ports every {POLL_EVERY} s, new connection each;"
        " the stuck worker's /livez",
        sent=len(poller.statuses),
        failed=poller.failed(),
        lost=poller.lost(),
        recovery=f"the worker replaced {replaced:.1f} s after the stop (bound"
        f" {REPLACED_WITHIN:g} s); {len(cycles.seen) - before} cycles meanwhile",
    )
    assert poller.statuses and poller.failed() == 0 and poller.lost() == 0
    assert answered and set(answered) == {503}, livez
    # Never before its heartbeat was silent for REPLACE_AFTER leases (it last beat
    # up to a tick before the stop).
    assert replaced > REPLACE_AFTER * LEASE - TICK
    assert len(children(master)) == 3 and target not in children(master)


def whole_instance(master: int) -> list[int]:
    """The checker's runners, its checker, the master's workers, then the master."""
    checker = checkers(master)
    runners = {pid for each in checker for pid in all_children(each)}
    return [*sorted(runners), *sorted(checker), *sorted(children(master)), master]


def pause_the_whole_instance(master: int) -> list[int]:
    """SIGSTOP every process of the instance for 4 leases (the master last: it
    finds nothing on its pipes from the checker on resume); SIGCONT the master
    first, for more than a pass of its loop (it wakes every second): it sees every
    heartbeat older than 3 leases, as on a resume where the others get a CPU last.
    The processes paused."""
    paused = whole_instance(master)
    for pid in paused:
        os.kill(pid, signal.SIGSTOP)
    time.sleep(4 * LEASE)  # the fault itself, not a wait for anything
    os.kill(master, signal.SIGCONT)
    time.sleep(1.5)  # likewise
    for pid in paused[:-1]:
        with contextlib.suppress(ProcessLookupError):  # killed meanwhile: asserted
            os.kill(pid, signal.SIGCONT)
    return paused


@pytest.mark.fault
def test_a_pause_of_the_whole_instance_replaces_no_worker(
    start_gunicorn: GunicornFactory, fault_record: FaultRecorder
) -> None:
    instance = instance_of_workers(start_gunicorn, 3)
    master = instance.server.process.pid
    with Publications(instance.server) as publications:
        workers, checker = children(master), checkers(master)
        paused = pause_the_whole_instance(master)
        publications.wait_for_more(3, "three cycles after the pause")
        statuses = [
            answers(port, "/readyz")
            for _ in range(10)
            for port in (instance.port, instance.management_port)
        ]
    log = instance.server.log_lines()
    replaced = [line for line in log if "replacing the worker" in line]
    killed = [line for line in log if "Health checker" in line and "killed" in line]
    fault_record(
        fault="a pause of the whole instance (3 workers)",
        injected=f"SIGSTOP to the master, every worker, the checker and its runners"
        f" ({len(paused)} processes) for {4 * LEASE:g} s, then SIGCONT, the master"
        " 1.5 s before the others",
        load="20 /readyz polls on both ports after the pause",
        sent=len(statuses),
        failed=sum(status not in (200, None) for status in statuses),
        lost=statuses.count(None),
        recovery=f"{len(replaced)} workers replaced, {len(killed)} checkers killed;"
        " 3 cycles after the resume",
    )
    assert replaced == [] and killed == []
    assert children(master) == workers and checkers(master) == checker
    assert statuses == [200] * len(statuses)
