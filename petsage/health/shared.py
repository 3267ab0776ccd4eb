"""Health of a gunicorn instance: one checker process runs the checks, every worker
answers.

A load balancer asks the instance, and gets whichever worker the kernel picks; checks
must not multiply by the worker count; and no check, worker or thread may make a
serving instance unready. So:

- **One checker process runs the checks** (petsage.serving.checker), started and
  supervised by the master, holding no listening socket, each check in a runner
  process of its own (petsage.health.runners). A check that holds the GIL, blocks or
  crashes freezes only its runner: the checker judges it (``timed out after 2 s``)
  and publishes on time, so the check is reported by its own verdict, a
  non-critical one never failing readiness, and its changes of status are logged
  once per instance. Workers never run checks.
- **One snapshot.** The checker writes each cycle's results into the memory the
  master shares with its workers (petsage.instance.memory), naming itself; a probe
  compares one generation number with the one it last decoded and reads the memory
  only when a cycle changed it: no I/O, no thread between the cycle and the answer.
  A new, respawned or reloaded worker answers from the instance's current results
  at once. A new checker carries on from the last published results (consecutive
  failures, logged transitions).
- **Its own liveness.** Each worker's health thread (``petsage-health`` in ``top
  -H``) beats in its own slot every TICK seconds. A worker whose health thread has
  not run for longer than its lease fails ``/livez`` on every poll it answers, and
  the master replaces it (petsage.serving.server) once it has been silent for
  REPLACE_AFTER leases.

Readiness fails as stale only past ``stale_after``: a period, the longest check
timeout and the time the master takes to find a checker gone or silent and start
another (CHECKER_RESTART), and at least the refresher's own three periods.
"""

import ctypes
import json
import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime

from petsage.health.checks import SEVERITY
from petsage.health.machinery import Machinery
from petsage.health.refresher import JITTER, CheckRefresher, CheckResult, Snapshot
from petsage.instance.memory import InstanceMemory, Slot

logger = logging.getLogger(__name__)

# How often each worker's health thread beats and looks for a new snapshot.
TICK = 0.25
# A worker's lease: how long its health thread may be silent before the worker
# counts as wedged. A constant: the thread only beats and reads the snapshot (checks
# run in the checker process), so no check's timeout lengthens it.
LEASE = 4.0
# The master replaces a worker whose health thread has been silent this many leases.
REPLACE_AFTER = 3
# How long the master may take to find its checker gone or silent and have a new
# one started and publishing (beside that checker's first cycle), or to hand over
# to a reload's checker: a pass of its loop,
# the silence that gets a checker killed (petsage.serving.supervisor), and a new
# interpreter loading the application on a busy host.
CHECKER_RESTART = 15.0
# A snapshot's outputs are shortened to this many characters when it does not fit.
SHORT_OUTPUT = 200
THREAD_NAME = "petsage-health"


@dataclass(frozen=True)
class Published:
    """A snapshot as the instance's checker published it."""

    snapshot: Snapshot
    # The pid of the checker process that ran it.
    checker: int
    # When the checker meant to run its next cycle (monotonic clock).
    next_cycle_at: float | None


def encode(published: Published, output_limit: int | None = None) -> bytes:
    """The snapshot as it is shared: JSON, outputs cut to ``output_limit``."""
    snapshot = published.snapshot
    results = {
        name: asdict(
            result
            if output_limit is None
            else replace(result, output=result.output[:output_limit])
        )
        for name, result in snapshot.results.items()
    }
    document = {
        "checker": published.checker,
        # For people reading it; ages are computed from completed_at.
        "completed": datetime.now(UTC).isoformat(timespec="milliseconds"),
        "completed_at": snapshot.completed_at,
        "next_cycle_at": published.next_cycle_at,
        "results": results,
    }
    return json.dumps(document, separators=(",", ":")).encode()


def decode(content: bytes) -> Published:
    """A shared snapshot as a Published; ValueError when it is not one."""
    try:
        document = json.loads(content)
        results = {
            name: CheckResult(**fields) for name, fields in document["results"].items()
        }
        completed_at = float(document["completed_at"])
        next_cycle_at = document["next_cycle_at"]
        checker = int(document["checker"])
    except (KeyError, TypeError, AttributeError) as error:
        raise ValueError(f"not a health snapshot: {error!r}") from None
    if any(result.status not in SEVERITY for result in results.values()):
        raise ValueError("not a health snapshot: unknown status")
    return Published(
        Snapshot(results, completed_at),
        checker,
        None if next_cycle_at is None else float(next_cycle_at),
    )


def read_published(memory: InstanceMemory) -> Published | None:
    """The instance's latest snapshot, None before the first or when unreadable."""
    found = memory.read_snapshot()
    if found is None:
        return None
    try:
        return decode(found[2])
    except ValueError:
        return None


def publish(memory: InstanceMemory, published: Published) -> bool:
    """Share a cycle, its outputs shortened when it does not fit whole; False when
    it does not fit even so. Called by the instance's one checker process only."""
    return memory.publish(encode(published), published.checker) or memory.publish(
        encode(published, SHORT_OUTPUT), published.checker
    )


def name_this_thread(name: str) -> None:
    """Give the calling thread ``name`` in the operating system (``top -H``, ``ps
    -L``, ``/proc/<pid>/task/<tid>/comm``), where Python 3.11 leaves the process's."""
    libc = ctypes.CDLL(None, use_errno=True)
    pr_set_name = 15
    libc.prctl(pr_set_name, name.encode()[:15], 0, 0, 0)


class InstanceHealth:
    """This worker's part in its instance's health.

    It answers from the instance's snapshot in shared memory, which the instance's
    checker process publishes, and its health thread beats in slot ``slot``.
    ``adopted`` is called with each snapshot this worker starts answering from.
    """

    def __init__(
        self,
        memory: InstanceMemory,
        slot: int,
        refresher: CheckRefresher,
        adopted: Callable[[Snapshot], None],
    ) -> None:
        self.memory = memory
        self.slot = slot
        self.refresher = refresher
        longest = max((check.timeout for check in refresher.checks), default=0.0)
        self.lease = LEASE
        # Age after which the instance's snapshot can no longer be trusted: the
        # refresher's, or the longest the master takes to replace a checker that is
        # gone or silent (the cycle that was due, the replacement, its first
        # cycle), whichever is longer. The checks are fixed by now.
        replaced = refresher.period * (1 + JITTER) + CHECKER_RESTART + longest
        self.stale_after = max(refresher.stale_after, replaced)
        self.published: Published | None = None
        self.started = time.monotonic()
        # When this worker's health thread last ran (monotonic clock).
        self.beat_at = self.started
        self._generation = -1
        self._adopted = adopted
        self._lock = threading.Lock()
        # PetSage's own locks and threads, looked at each tick: while one is wedged
        # this worker stops beating, and the master replaces it.
        self.machinery = Machinery()
        self.machinery.watch_lock("petsage.health.snapshot", self._lock)
        self._thread: threading.Thread | None = None
        self._problem: str | None = None

    @property
    def snapshot(self) -> Snapshot | None:
        """The instance's latest snapshot: read from memory when a cycle changed it."""
        if self.memory.generation() != self._generation:
            self.follow()
        published = self.published
        return published.snapshot if published else None

    @property
    def alive(self) -> bool:
        """Whether this worker's health thread runs and has beaten within its lease."""
        thread = self._thread
        return (
            thread is not None
            and thread.is_alive()
            and time.monotonic() - self.beat_at <= self.lease
        )

    def start(self) -> None:
        """Load the instance's snapshot now, then beat.

        Call it before the worker serves, so that its first answer is the instance's.
        """
        self.follow()
        self._beat(time.monotonic())
        self._thread = threading.Thread(target=self._run, name=THREAD_NAME, daemon=True)
        self._thread.start()

    def follow(self) -> None:
        """Answer from the newest snapshot in memory, if it is newer than this one."""
        with self._lock:
            generation = self.memory.generation()
            if generation == self._generation:
                return
            found = self.memory.read_snapshot()
            if found is None:
                return  # none published yet, or one is being written: next time
            self._generation = found[0]
            try:
                published = decode(found[2])
            except ValueError as error:
                self._report(f"cannot read the shared snapshot: {error}")
                return
        self._adopt(published)

    def _adopt(self, published: Published) -> None:
        with self._lock:
            current = self.published
            if (
                current is not None
                and current.snapshot.completed_at >= published.snapshot.completed_at
            ):
                return
            self.published = published
        self._adopted(published.snapshot)

    def _beat(self, now: float) -> None:
        self.beat_at = now
        self.memory.write_slot(
            Slot(self.slot, os.getpid(), now, self.started, self.lease)
        )

    def _run(self) -> None:
        name_this_thread(THREAD_NAME)
        while True:
            try:
                if not self.machinery.look():
                    self.tick()
            except Exception:
                # A listener's failure (metrics) must not end the beating.
                logger.exception("Health: this worker's health thread failed a tick")
            time.sleep(TICK)

    def tick(self) -> None:
        """Beat, and answer from the newest snapshot."""
        self._beat(time.monotonic())
        self.follow()

    def _report(self, problem: str) -> None:
        if self._problem != problem:
            self._problem = problem
            logger.error("Health snapshot: %s", problem)
