"""Health of a gunicorn instance: one worker runs the checks, every worker answers.

A load balancer asks the instance, and gets whichever worker the kernel picks; checks
must not multiply by the worker count; and no one worker, thread or file may make a
serving instance unready. So, in the memory the master shares with its workers
(petsage.instance.memory):

- **A lease, not a lock.** Each worker's health thread (``petsage-health`` in ``top
  -H``) writes a heartbeat into its own slot every TICK seconds. The leader is the
  worker holding the highest claim (term), the youngest among equals, while its
  heartbeat is fresh; it runs the checks (CheckRefresher). A worker that is not the
  leader holds no claim (term 0), so a worker that starts later never displaces it.
  When the lease is vacant (no claim, or the leader's heartbeat older than its
  lease: the longest check timeout plus LEASE_MARGIN, whether its process or only
  its thread is stuck), the youngest worker with a fresh heartbeat claims the next
  term and leads from that tick, while a stuck old leader still lives. A leader that
  comes back sees the newer term and only follows: it never publishes over the new
  leader's cycles. A new leader carries on with the last published results
  (consecutive failures, logged transitions) and the published time of the next
  cycle, so a cycle that was due, or that a leader had under way when it went, runs
  at once.
- **The youngest takes a vacant lease.** gunicorn stops its oldest workers first: a
  scale-down (SIGTTOU) the oldest, a reload (SIGHUP) every worker older than the
  ones it starts; and under ``max_requests`` the oldest has served the most. The
  youngest is the worker least likely to go next, without counting requests in the
  slots. Measured with 5 workers under ``wrk -c10`` recycled by ``--max-requests
  2000`` (a worker lived about 3 s) plus 20 SIGTTIN and SIGTTOU in 60 s: the leader
  changed 28 and 24 times, and each led 2.0 and 2.4 s on average; with the oldest
  taking it (the rule before) 73 and 62 times, 0.7 and 0.8 s each.
- **A worker leaving on purpose hands over before it goes.** gunicorn stops a worker
  by clearing its ``alive`` flag (``max_requests``, a reload, a scale-down, a stop):
  its health thread sees that at its next tick, and gunicorn's ``worker_exit`` hook
  (petsage.serving.server) calls ``leave`` before the interpreter winds down, for a
  worker that goes before its next tick. A leaving leader first finishes the cycle it
  has under way and runs one that is due (unless the instance is stopping), so a
  cycle never dies with its leader; then it empties its slot, and the youngest worker
  left claims the lease at its next tick. That delays its exit by one cycle at most
  (the longest check timeout), and only when a cycle was due or under way. Its slot
  emptied, it never writes there again. The leaver finishes rather than its
  successor starting over because under reloads a second apart a worker lives about
  a second, less than a cycle with a 1.5 s check: each new leader would die in its
  turn mid-cycle (before, 20 such reloads went by with no cycle completed, and
  readiness failed as stale). Without the hand-over, a worker that had exited kept
  its slot until its master reaped it (2 s and more on a busy host while the
  interpreter wound down), and, the oldest leading, it was the leader: under
  ``--max-requests 5`` a worker lives a fraction of a second, and such slots held the
  lease for the whole run while no cycle ran, until readiness failed as stale. The
  master still empties the slot of a worker that exits otherwise (SIGKILL, a crash).
- **One snapshot.** The leader writes each cycle's results into the shared memory; a
  probe compares one generation number with the one it last decoded and reads the
  memory only when a cycle changed it: no I/O, no thread between the cycle and the
  answer. A new, respawned or reloaded worker answers from the instance's current
  results at once.
- **Its own liveness.** A worker whose health thread has not run for longer than its
  lease fails ``/livez`` on every poll it answers, and the master replaces it
  (petsage.serving.server) once it has been silent for REPLACE_AFTER leases.

An orderly change of leader adds at most a tick, plus, when every worker leaves at
once (a reload), the new workers' start, to the snapshot's age: the leaver leaves no
due cycle behind. Readiness fails as stale only past ``stale_after``, which also
covers a stuck leader (a period, two leases and the longest timeout) and is at least
the refresher's own three periods.
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
from petsage.health.machinery import Machinery
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


def leader_of(slots: Sequence[Slot], now: float) -> Slot | None:
    """The leading slot: the highest claim (term), the youngest among equals, while
    its heartbeat is fresh; None while the lease is vacant (no claim, or the highest
    one silent for longer than its lease)."""
    claims = [slot for slot in slots if slot.term]
    if not claims:
        return None
    leader = max(claims, key=lambda slot: (slot.term, slot.started, slot.index))
    if now - leader.beat > leader.lease:
        return None
    return leader


def successor_of(slots: Sequence[Slot], now: float) -> Slot | None:
    """The slot that claims a vacant lease: the youngest whose heartbeat is fresh,
    which gunicorn will stop last."""
    fresh = [slot for slot in slots if now - slot.beat <= slot.lease]
    return max(fresh, key=lambda slot: (slot.started, slot.index), default=None)


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
        # hands the lease on and gives up its slot (see leave).
        self.serving = serving
        # True once its slot is given up: it never writes there again.
        self.retired = False
        self.slot = slot
        self.refresher = refresher
        self.lease = (
            max((check.timeout for check in refresher.checks), default=0.0)
            + LEASE_MARGIN
        )
        # Age after which the instance's snapshot can no longer be trusted: the
        # refresher's, or, with short periods, the longest a takeover can take (the
        # cycle that was due, a lease for a stuck leader, another for the new
        # workers of a reload to start and claim it, the new leader's cycle),
        # whichever is longer. A change of leader on purpose costs a tick, and a
        # reload the new workers' start. The checks are fixed by now.
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
        # PetSage's own locks and threads, looked at each tick: while one is wedged
        # this worker stops beating, and the master replaces it.
        self.machinery = Machinery()
        self.machinery.watch_lock("petsage.health.snapshot", self._lock)
        # Held by the health thread for a tick (and a cycle in it), and by leave:
        # a leaving worker waits for the cycle under way.
        self._turn = threading.Lock()
        # Held for each write of the slot, and to give it up.
        self._slot_lock = threading.Lock()
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
        with self._slot_lock:
            if self.retired:
                return
            self.beat_at = now
            self.memory.write_slot(
                Slot(self.slot, os.getpid(), self.term, now, self.started, self.lease)
            )

    def _run(self) -> None:
        name_this_thread(THREAD_NAME)
        while True:
            with self._turn:
                if self.retired:
                    return
                if not self.serving():
                    self._hand_over(run_due=True)
                    return
                try:
                    delay = TICK if self.machinery.look() else self.tick()
                except Exception:
                    # A listener's failure (metrics) must not end the beating.
                    logger.exception(
                        "Health: this worker's health thread failed a tick"
                    )
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
            # Vacant: the leader handed over, exited, or its process or thread is
            # stuck. The youngest worker claims the next term and leads at once;
            # two that claim together (one read the slots before the other
            # started) hold equal terms, and the younger wins at the older's next
            # publication or tick.
            successor = successor_of(slots, now)
            if successor is None or successor.index != self.slot:
                self._step_down(None)
                return TICK
            self.term = max(slot.term for slot in slots) + 1
            self._beat(now)
        elif leader.index != self.slot:
            self._step_down(leader)
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
        """Follow: drop this worker's claim (a worker that does not lead holds
        none), and say so if it led."""
        if self.term:
            self.term = 0
            self._beat(time.monotonic())
        if self.leading:
            self.leading = False
            logger.warning(
                "This worker (pid %d) no longer runs the instance's health checks:"
                " %s leads now",
                os.getpid(),
                f"pid {leader.pid}" if leader else "another worker",
            )

    def leave(self) -> None:
        """Hand the lease on before this worker goes: called on its way out
        (gunicorn's ``worker_exit``), once it no longer serves.

        Waits for the cycle under way on the health thread, a lease at most (a
        health thread stuck longer is left behind, its cycle run by the next
        leader); then, as the health thread does when it sees the worker stop, runs
        a cycle that is due while this worker leads, and gives up the slot.
        """
        if self.slot < 0:
            return  # no slot: it never led
        finished = self._turn.acquire(timeout=self.lease)
        try:
            if not self.retired:
                self._hand_over(run_due=finished)
        finally:
            if finished:
                self._turn.release()

    def _hand_over(self, run_due: bool) -> None:
        """Leave no due cycle behind (unless the instance stops), then give up the
        slot: the youngest worker left claims the lease at its next tick."""
        now = time.monotonic()
        leader = leader_of(self.memory.slots(), now)
        stopping = self.memory.drain_state().shutdown is not None
        if run_due and not stopping and leader and leader.index == self.slot:
            if not self.leading:
                self._take_over()
            due = self.refresher.next_cycle_at
            if due is None or now >= due:
                self._beat(now)
                self.refresher.run_cycle()  # published: it still leads
        self._retire()

    def _retire(self) -> None:
        """Give up the slot: this worker is leaving, and another leads."""
        with self._slot_lock:
            self.retired = True
            self.memory.clear_slot(self.slot)
        if self.leading:
            self.leading = False
            logger.info(
                "This worker (pid %d) is shutting down and hands the instance's"
                " health checks on",
                os.getpid(),
            )

    def _report(self, problem: str) -> None:
        if self._problem != problem:
            self._problem = problem
            logger.error("Health snapshot: %s", problem)
