"""No single point of failure in an instance's check runner, against real gunicorn.

One worker leads (runs the checks) on a lease in the memory its master shares with
its workers (petsage/health/shared.py). Here its process is stopped (SIGSTOP), or
only its health thread (tests/faults/threads.py stops one thread with ptrace while
the worker's other threads serve), or a follower's health thread. Throughout,
/readyz is polled on both ports; the memory is read as ``petsage drain`` reads it,
to see who publishes each cycle.
"""

import http.client
import os
import signal
import time
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager, suppress
from dataclasses import dataclass, field
from typing import Any

import pytest

from tests.faults.threads import frozen_thread, thread_ids
from tests.support.fault_record import FaultRecorder
from tests.support.gunicorn_process import GunicornFactory
from tests.support.instances import ReadinessPoller
from tests.support.management import Instance
from tests.support.processes import answers, children, gone, served_by, wait_until
from tests.support.snapshots import Publications, instance_memory

pytestmark = pytest.mark.slow  # real processes: not in the fast tier

FULL = os.environ.get("PETSAGE_FAULT_FULL") == "1"
# How long the fault lasts: the 60 s in the full form.
WATCH = 60.0 if FULL else 20.0
POLL_EVERY = 0.25
LIVENESS = 60.0
WORKERS = 5
# Cycles every 2 s, so that several are due while the leader is stopped.
PERIOD = 2.0
# The lease: the longest check timeout (the uptime check's 1 s, the default 2 s of
# none here) plus petsage.health.shared.LEASE_MARGIN.
LEASE = 1.0 + 3.0
THREAD = "petsage-health"


def livez_of(worker: int, port: int) -> int | None:
    """/livez as ``worker`` answers it, or None when another worker took the
    connection."""
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


@contextmanager
def stopped_process(pid: int) -> Iterator[int]:
    """SIGSTOP ``pid`` for the block; SIGCONT after (unless it is gone)."""
    os.kill(pid, signal.SIGSTOP)
    try:
        yield pid
    finally:
        with suppress(ProcessLookupError):
            os.kill(pid, signal.SIGCONT)


def instance_of_workers(start_gunicorn: GunicornFactory, workers: int) -> Instance:
    """An instance of ``workers`` workers checking every PERIOD, once all run."""
    instance = Instance(
        start_gunicorn,
        {"PETSAGE_WORKERS": str(workers), "PETSAGE_CHECK_PERIOD": f"{PERIOD:g}"},
    )
    master = instance.server.process.pid
    memory = instance_memory(instance.server)
    # Booted: each worker's health thread beats in its slot (on a busy host a
    # worker can be forked seconds before it runs its app).
    wait_until(
        lambda: len(children(master)) == workers == len(memory.slots()),
        LIVENESS,
        "every worker's health thread",
    )
    return instance


def worker_to_stick(what: str, leader: int, master: int) -> int:
    """The worker that ``what`` sticks: the leader, or the lowest follower whose
    health thread runs (a worker that has just booted, replacing one, may not have
    started and named it yet)."""
    if what.startswith("leader"):
        return leader

    def followers() -> list[int]:
        others = children(master) - {leader}
        return sorted(pid for pid in others if len(thread_ids(pid, THREAD)) == 1)

    wait_until(lambda: bool(followers()), LIVENESS, "a follower's health thread")
    return followers()[0]


def stick(what: str, target: int) -> AbstractContextManager[Any]:
    """The fault ``what`` on ``target``: its process stopped, or its health thread."""
    return (
        stopped_process(target)
        if what.startswith("leader process")
        else frozen_thread(target, THREAD)
    )


@dataclass
class WhileStuck:
    """When the fault began, the takeover, the replacement, the stuck one's /livez."""

    stopped_at: float
    takeover: float | None = None
    replaced: float | None = None
    livez: list[int | None] = field(default_factory=list)
    cycles_during: int = 0


def watch_while_stuck(
    what: str,
    target: int,
    leader: int,
    instance: Instance,
    publications: Publications,
    before: int,
    watch: float,
) -> WhileStuck:
    """For ``watch`` s: who publishes after ``before``, the stuck one's /livez."""
    stuck = WhileStuck(stopped_at=time.monotonic())
    stuck.takeover = (
        wait_until(
            lambda: bool(publications.by_others(leader, before)),
            LIVENESS,
            "another worker publishing the instance's cycles",
        )
        if what.startswith("leader")
        else None
    )
    while time.monotonic() - stuck.stopped_at < watch:
        if what.endswith("thread") and not gone(target):
            if time.monotonic() - stuck.stopped_at > LEASE + 0.5:
                stuck.livez.append(livez_of(target, instance.port))
        elif what.endswith("thread") and stuck.replaced is None:
            stuck.replaced = time.monotonic() - stuck.stopped_at
        time.sleep(POLL_EVERY)
    stuck.cycles_during = len(publications.seen) - before
    return stuck


def record_the_stuck_worker(
    fault_record: FaultRecorder,
    what: str,
    watch: float,
    poller: ReadinessPoller,
    stuck: WhileStuck,
) -> None:
    """The fault record's row for a stuck ``what``, and its figures printed."""
    recovery = []
    if stuck.takeover is not None:
        recovery.append(
            f"another worker published {stuck.takeover:.1f} s after the stop"
        )
    if stuck.replaced is not None:
        recovery.append(
            f"the wedged worker replaced {stuck.replaced:.1f} s after the stop"
        )
    fault_record(
        fault=f"a stuck {what} ({WORKERS} workers)",
        injected=(
            "SIGSTOP to the leading worker"
            if what.startswith("leader process")
            else f"ptrace stop of the {what} only, its other threads serving"
        )
        + f" for {watch:g} s, check period {PERIOD:g} s",
        load=f"/readyz on both ports every {POLL_EVERY} s, new connection each",
        sent=len(poller.statuses),
        failed=poller.failed(),
        lost=poller.lost(),
        recovery="; ".join(recovery) or "none needed",
    )
    print(
        f"\n{what}: {len(poller.statuses)} polls, {poller.failed()} failed,"
        f" {poller.lost()} lost; {stuck.cycles_during} cycles during the fault;"
        f" livez of the stuck worker: {stuck.livez}; {'; '.join(recovery)}"
    )


@pytest.mark.fault
@pytest.mark.parametrize(
    "what",
    [
        "leader process",
        # Back before the master replaces it (3 leases): it must only follow.
        "leader process, back after 2 leases",
        "leader health thread",
        "follower health thread",
    ],
)
def test_a_stuck_worker_never_makes_the_instance_unready(
    start_gunicorn: GunicornFactory, fault_record: FaultRecorder, what: str
) -> None:
    instance = instance_of_workers(start_gunicorn, WORKERS)
    master = instance.server.process.pid
    with Publications(instance.server) as publications:
        leader = publications.latest["leader"]
        target = worker_to_stick(what, leader, master)
        watch = 2 * LEASE if what.endswith("2 leases") else WATCH
        with ReadinessPoller([instance.port, instance.management_port]) as poller:
            before = len(publications.seen)
            with stick(what, target):
                stuck = watch_while_stuck(
                    what, target, leader, instance, publications, before, watch
                )
            # Two more cycles once the stopped worker runs again (or was replaced).
            publications.wait_for_more(2, "two cycles after the fault")
        if what.endswith("thread") and stuck.replaced is None:
            stuck.replaced = wait_until(
                lambda: gone(target), LIVENESS, "the worker replaced"
            ) + (time.monotonic() - stuck.stopped_at)
    seen = publications.seen
    completed = [document["completed_at"] for document in seen]
    record_the_stuck_worker(fault_record, what, watch, poller, stuck)
    assert poller.statuses and poller.failed() == 0 and poller.lost() == 0
    # Cycles went on during the fault, and none was ever published over a newer one.
    assert stuck.cycles_during >= (1 if what.endswith("2 leases") else 2)
    assert completed == sorted(completed), "a cycle published over a newer one"
    if what.startswith("leader"):
        after_takeover = seen[before:]
        first_other = next(
            index
            for index, document in enumerate(after_takeover)
            if document["leader"] != leader
        )
        assert all(
            document["leader"] != leader for document in after_takeover[first_other:]
        ), "the stopped leader published after another took over"
    if what.endswith("2 leases"):
        # It came back, stayed (no replacement yet), and saw the newer term.
        assert not gone(target)
        assert any(
            f"This worker (pid {target}) no longer runs" in line
            for line in instance.server.log_lines()
        )
    if what.endswith("thread"):
        answered = [status for status in stuck.livez if status is not None]
        assert answered and set(answered) == {503}, stuck.livez
        assert gone(target)


def whole_instance(master: int) -> list[int]:
    """The master and its workers."""
    return [master, *sorted(children(master))]


def pause_the_whole_instance(master: int) -> None:
    """SIGSTOP the master and its workers for 4 leases; SIGCONT the master first."""
    paused = whole_instance(master)
    for pid in paused:
        os.kill(pid, signal.SIGSTOP)
    time.sleep(4 * LEASE)
    # The master first, and for more than one pass of its loop (it wakes every
    # second) before the workers: it sees every heartbeat older than 3 leases,
    # as on a resume where the workers get a CPU last.
    os.kill(master, signal.SIGCONT)
    time.sleep(1.5)
    for pid in paused[1:]:
        os.kill(pid, signal.SIGCONT)


@pytest.mark.fault
def test_a_pause_of_the_whole_instance_replaces_no_worker(
    start_gunicorn: GunicornFactory, fault_record: FaultRecorder
) -> None:
    instance = instance_of_workers(start_gunicorn, 3)
    master = instance.server.process.pid
    with Publications(instance.server) as publications:
        workers = children(master)
        # A frozen cgroup, docker pause, a stalled VM: every process stops, for
        # longer than the master's replacement bound (3 leases).
        pause_the_whole_instance(master)
        publications.wait_for_more(3, "three cycles after the pause")
        answers = [
            answers_of(port)
            for _ in range(10)
            for port in (instance.port, instance.management_port)
        ]
    replaced = [
        line for line in instance.server.log_lines() if "replacing the worker" in line
    ]
    fault_record(
        fault="a pause of the whole instance (3 workers)",
        injected=f"SIGSTOP to the master and every worker for {4 * LEASE:g} s, then"
        " SIGCONT, the master 1.5 s before the workers",
        load="20 /readyz polls on both ports after the pause",
        sent=len(answers),
        failed=sum(answer not in (200, None) for answer in answers),
        lost=answers.count(None),
        recovery=f"{len(replaced)} workers replaced; 3 cycles after the resume",
    )
    assert replaced == []
    assert children(master) == workers
    assert answers == [200] * len(answers)


def answers_of(port: int) -> int | None:
    """/readyz on ``port``, on a new connection."""
    return answers(port, "/readyz")
