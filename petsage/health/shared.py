"""Health of a gunicorn instance: one worker runs the checks, every worker answers.

A load balancer asks the instance, and gets whichever worker the kernel picks; checks
must not multiply by the worker count; and no one worker, thread or file may make a
serving instance unready. So, in the memory the master shares with its workers
(petsage.instance.memory):

- **A lease, not a lock.** Each worker's health thread (``petsage-health`` in ``top
  -H``) writes a heartbeat into its own slot every TICK seconds. The leader is the
  worker whose claim has the highest term, the oldest among equals, while its
  heartbeat is fresh; it runs the checks (CheckRefresher). When the leader's
  heartbeat is older than its lease (the longest check timeout plus LEASE_MARGIN),
  whether its process or only its thread is stuck, another worker claims the next
  term and leads, while the old leader still lives. A leader that comes back sees
  the newer term and only follows: it never publishes over the new leader's cycles.
  When a worker exits, its master empties its slot, and the next leader takes over
  at its next tick. A new leader carries on with the last published results
  (consecutive failures, logged transitions) and the published time of the next
  cycle.
- **One snapshot.** The leader writes each cycle's results into the shared memory; a
  probe compares one generation number with the one it last decoded and reads the
  memory only when a cycle changed it: no I/O, no thread between the cycle and the
  answer. A new, respawned or reloaded worker answers from the instance's current
  results at once.
- **Its own liveness.** A worker whose health thread has not run for longer than its
  lease fails ``/livez`` on every poll it answers, and the master replaces it
  (petsage.serving.server) once it has been silent for REPLACE_AFTER leases.
"""

import ctypes
import json
import logging
import os
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime

from petsage.health.checks import SEVERITY
from petsage.health.refresher import JITTER, CheckRefresher, CheckResult, Snapshot
from petsage.instance.memory import InstanceMemory, Slot

logger = logging.getLogger(__name__)

# How often each worker's health thread beats, looks at the lease and, while it
# leads, at the next cycle's due time.
TICK = 0.25
# A lease: how long a leader's heartbeat may be silent before another worker takes
# over, beyond the longest check timeout (a cycle waits for its checks that long).
LEASE_MARGIN = 3.0
# The master replaces a worker whose health thread has been silent this many leases.
REPLACE_AFTER = 3
# A snapshot's outputs are shortened to this many characters when it does not fit.
SHORT_OUTPUT = 200
THREAD_NAME = "petsage-health"


@dataclass(frozen=True)
class Published:
    """A snapshot as the instance's leader published it."""

    snapshot: Snapshot
    leader: int
    # When the leader meant to run its next cycle (monotonic clock), for the next
    # leader to keep the cadence.
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
        "leader": published.leader,
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
        leader = int(document["leader"])
    except (KeyError, TypeError, AttributeError) as error:
        raise ValueError(f"not a health snapshot: {error!r}") from None
    if any(result.status not in SEVERITY for result in results.values()):
        raise ValueError("not a health snapshot: unknown status")
    return Published(
        Snapshot(results, completed_at),
        leader,
        None if next_cycle_at is None else float(next_cycle_at),
    )


def rightful_leader(slots: Sequence[Slot]) -> Slot | None:
    """The slot whose claim wins, fresh or not: highest term, oldest among equals."""
    if not slots:
        return None
    return max(slots, key=lambda slot: (slot.term, -slot.started, -slot.index))


def leader_of(slots: Sequence[Slot], now: float) -> Slot | None:
    """The leading slot: the rightful leader while its heartbeat is fresh, else None
    (until another worker claims the next term)."""
    leader = rightful_leader(slots)
    if leader is None or now - leader.beat > leader.lease:
        return None
    return leader


def name_this_thread(name: str) -> None:
    """Give the calling thread ``name`` in the operating system (``top -H``, ``ps
    -L``, ``/proc/<pid>/task/<tid>/comm``), where Python 3.11 leaves the process's."""
    libc = ctypes.CDLL(None, use_errno=True)
    pr_set_name = 15
    libc.prctl(pr_set_name, name.encode()[:15], 0, 0, 0)


class InstanceHealth:
    """This worker's part in its instance's health.

    It answers from the instance's snapshot in shared memory, and its health thread
    beats in slot ``slot`` and runs ``refresher``'s cycles while it leads.
    ``adopted`` is called with each snapshot this worker starts answering from.
    """

    def __init__(
        self,
        memory: InstanceMemory,
        slot: int,
        refresher: CheckRefresher,
        adopted: Callable[[Snapshot], None],
        serving: Callable[[], bool] = lambda: True,
    ) -> None:
        self.memory = memory
        # False once the worker is shutting down (a reload, max_requests): it then
        # gives up its slot, so that a worker staying on leads.
        self.serving = serving
        self.retired = False
        self.slot = slot
        self.refresher = refresher
        self.lease = (
            max((check.timeout for check in refresher.checks), default=0.0)
            + LEASE_MARGIN
        )
        # Age after which the instance's snapshot can no longer be trusted: the
        # refresher's, or, with short periods, the longest a takeover can take (the
        # cycle that was due, a lease for the stuck leader, one for the claim, the
        # new leader's cycle), whichever is longer. The checks are fixed by now.
        longest = max((check.timeout for check in refresher.checks), default=0.0)
        takeover = refresher.period * (1 + JITTER) + 2 * self.lease + longest
        self.stale_after = max(refresher.stale_after, takeover)
        self.published: Published | None = None
        self.leading = False
        self.term = 0
        self.started = time.monotonic()
        # When this worker's health thread last ran (monotonic clock).
        self.beat_at = self.started
        self._generation = -1
        self._adopted = adopted
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._claimed_at: float | None = None
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
        return self.retired or (
            thread is not None
            and thread.is_alive()
            and time.monotonic() - self.beat_at <= self.lease
        )

    def start(self) -> None:
        """Load the instance's snapshot now, then beat, and lead when chosen.

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

    def publish(self, snapshot: Snapshot) -> None:
        """Share a cycle this worker completed, unless it no longer leads."""
        now = time.monotonic()
        self._beat(now)
        leader = leader_of(self.memory.slots(), now)
        if leader is None or leader.index != self.slot:
            self._step_down(leader)
            return
        published = Published(snapshot, os.getpid(), self.refresher.next_cycle_at)
        fits = self.memory.publish(encode(published), self.term) or (
            self.memory.publish(encode(published, SHORT_OUTPUT), self.term)
        )
        if not fits:
            self._report("a cycle's results do not fit in the shared memory")
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
            Slot(self.slot, os.getpid(), self.term, now, self.started, self.lease)
        )

    def _run(self) -> None:
        name_this_thread(THREAD_NAME)
        while True:
            if not self.serving():
                self._retire()
                return
            try:
                delay = self.tick()
            except Exception:
                # A listener's failure (metrics) must not end the beating.
                logger.exception("Health: this worker's health thread failed a tick")
                delay = TICK
            time.sleep(delay)

    def tick(self) -> float:
        """Beat; take the lead, keep it or leave it; run a cycle when one is due.

        Returns how long to wait before the next tick.
        """
        now = time.monotonic()
        self._beat(now)
        self.follow()
        slots = self.memory.slots()
        leader = leader_of(slots, now)
        if leader is None:
            # The rightful leader's heartbeat is stale: its process or its thread is
            # stuck. Claim the next term; lead from the next tick, once a rival's
            # claim would show (the oldest claimant wins).
            self.term = max((slot.term for slot in slots), default=0) + 1
            self._claimed_at = now
            self._beat(now)
            return TICK
        if leader.index != self.slot:
            self._step_down(leader)
            return TICK
        if self._claimed_at is not None and now - self._claimed_at < TICK:
            return TICK
        if not self.leading:
            self._take_over()
        due = self.refresher.next_cycle_at
        if due is None or now >= due:
            self.refresher.run_cycle()
            due = self.refresher.next_cycle_at
        if due is None:
            return TICK
        return min(TICK, max(0.0, due - time.monotonic()))

    def _take_over(self) -> None:
        """Carry on from the last published cycle, as if this worker had run it."""
        self.leading = True
        self._claimed_at = None
        logger.info(
            "This worker (pid %d) now runs the instance's health checks (term %d)",
            os.getpid(),
            self.term,
        )
        refresher = self.refresher
        refresher.seed()
        self.follow()
        published = self.published
        if published is None:
            return
        refresher.snapshot = published.snapshot
        # Checks that changed with a reload (new code) run at once.
        names = {check.name for check in refresher.checks}
        refresher.next_cycle_at = (
            published.next_cycle_at
            if names == set(published.snapshot.results)
            else None
        )

    def _step_down(self, leader: Slot | None) -> None:
        self._claimed_at = None
        if self.leading:
            self.leading = False
            logger.warning(
                "This worker (pid %d) no longer runs the instance's health checks:"
                " %s leads now",
                os.getpid(),
                f"pid {leader.pid}" if leader else "another worker",
            )

    def _retire(self) -> None:
        """Give up the slot: this worker is leaving, and another leads at once."""
        self.retired = True
        self.memory.clear_slot(self.slot)
        if self.leading:
            self.leading = False
            logger.info(
                "This worker (pid %d) is shutting down and no longer runs the"
                " instance's health checks",
                os.getpid(),
            )

    def _report(self, problem: str) -> None:
        if self._problem != problem:
            self._problem = problem
            logger.error("Health snapshot: %s", problem)
