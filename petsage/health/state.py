"""A worker's health: its availability state, its checks, and what probes conclude."""

import logging
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from petsage.health.checks import Check, Status, process_uptime_check, worst
from petsage.health.machinery import Machinery
from petsage.health.refresher import CheckRefresher, Snapshot
from petsage.health.shared import InstanceHealth
from petsage.instance.memory import DrainState, InstanceMemory

logger = logging.getLogger(__name__)

# Why a worker whose gunicorn master has exited fails both probes: it no longer
# accepts, and exits once it has answered what it holds (petsage.serving.worker).
MASTER_GONE = "master gone"


@dataclass(frozen=True)
class Item:
    """One line of a probe's verdict: a name, its status, and why when not pass."""

    name: str
    status: Status
    output: str = ""


@dataclass(frozen=True)
class Verdict:
    """A probe's answer: the worst status of the items it weighed."""

    items: tuple[Item, ...]

    @property
    def status(self) -> Status:
        """The worst status among the items."""
        return worst([item.status for item in self.items])

    @property
    def names(self) -> frozenset[str]:
        """The items' names."""
        return frozenset(item.name for item in self.items)

    @property
    def output(self) -> str:
        """Why the verdict is not pass, item by item."""
        return "; ".join(
            f"{item.name}: {item.output}"
            for item in self.items
            if item.status != "pass"
        )


class Drain:
    """Whether the instance drains, which makes every worker's readiness fail.

    Under gunicorn the drain state lives in the memory the master shares with its
    workers (petsage.instance.memory): the master begins a shutdown drain on
    SIGTERM and ``petsage drain`` a manual one, every worker sees it at its next
    probe, and no full, read-only or deleted directory can stop either. A marker
    file (PETSAGE_DRAIN_FILE, when the operator sets one) drains too, for as long as
    it exists. A shutdown drain cannot be cancelled: the stop is scheduled. With
    neither (an app outside gunicorn) nothing ever drains.
    """

    SHUTDOWN = "shutdown"
    MANUAL = "manual"

    def __init__(
        self, memory: InstanceMemory | None = None, marker: str | None = None
    ) -> None:
        self.memory = memory
        self.marker = marker or None

    def _state(self) -> DrainState:
        if self.memory is None:
            return DrainState(None, None)
        return self.memory.drain_state()

    def _marked(self) -> bool:
        return self.marker is not None and os.path.exists(self.marker)

    def active(self) -> bool:
        """Whether draining has begun."""
        memory = self.memory
        return (memory is not None and memory.draining()) or self._marked()

    def reason(self) -> str | None:
        """Why draining began (``shutdown`` or ``manual``), or None if it has not."""
        state = self._state()
        if state.shutdown is not None:
            return self.SHUTDOWN
        if state.manual is not None or self._marked():
            return self.MANUAL
        return None

    def began(self) -> float | None:
        """When draining began, on the monotonic clock (one clock for every process
        of the host, which no wall-clock step moves), or None if unknown."""
        return self._state().began

    def begin(self, reason: str = MANUAL) -> float:
        """Begin draining for ``reason``; return when draining began (monotonic).

        Began earlier (``petsage drain`` before a SIGTERM), it keeps that time.
        Without shared memory (an app outside gunicorn) it creates the marker file,
        and raises OSError when it cannot, RuntimeError when there is none.
        """
        if self.memory is None:
            if self.marker is None:
                raise RuntimeError("nothing to drain: no shared memory, no marker")
            with open(self.marker, "a", encoding="utf-8"):
                pass
            return time.monotonic()
        state = self._state()
        began = state.began or time.monotonic()
        if reason == self.SHUTDOWN:
            self.memory.set_shutdown_drain(state.shutdown or began)
        elif state.manual is None:
            self.memory.set_manual_drain(began)
        return began

    def end(self) -> bool:
        """Stop a manual drain (and remove the marker file): readiness follows the
        checks again. Whether it was draining."""
        was = self._state().manual is not None
        if self.memory is not None:
            self.memory.set_manual_drain(None)
        if self.marker is not None:
            try:
                os.unlink(self.marker)
                was = True
            except FileNotFoundError:
                pass
        return was


class Health:
    """Availability state and cached check results, as this worker process answers.

    Under gunicorn the results are the instance's (``share``): its checker process
    runs the checks and every worker answers from the same snapshot. Elsewhere (the test
    client, ``flask run``) this process runs the checks itself (``start``).
    """

    def __init__(
        self, checks: Sequence[Check], period: float, drain_file: str | None
    ) -> None:
        self.refresher = CheckRefresher(checks, period)
        self.refresher.listeners.append(self._cycle_completed)
        self.drain = Drain(None, drain_file)
        self.broken_reason: str | None = None
        # The instance's shared health, once ``share`` succeeded.
        self.instance: InstanceHealth | None = None
        # The pid of this worker's gunicorn master, once ``share`` succeeded.
        self.master: int | None = None
        # Called with each new snapshot this worker answers from.
        self.listeners: list[Callable[[Snapshot], None]] = []

    @property
    def checks(self) -> list[Check]:
        """The registered checks."""
        return self.refresher.checks

    @property
    def snapshot(self) -> Snapshot | None:
        """The latest check results this worker answers from."""
        if self.instance is not None:
            return self.instance.snapshot
        return self.refresher.snapshot

    @property
    def started(self) -> bool:
        """Whether checks are refreshed, here or by the instance."""
        return self.instance is not None or self.refresher.started

    @property
    def names(self) -> frozenset[str]:
        """The names taken: the checks', and those of the items the probes weigh
        besides them."""
        return self.liveness().names | self.readiness().names

    def add_check(self, check: Check) -> None:
        """Register a check; names are unique and fixed before the refresher starts."""
        if self.started:
            raise RuntimeError("checks must be registered before health checks start")
        if check.name in self.names:
            raise ValueError(f"a health check is already named {check.name!r}")
        self.refresher.checks.append(check)

    def start(self) -> None:
        """Start refreshing checks in this process, in the background (idempotent)."""
        if self.instance is None:
            self.refresher.start()

    def share(
        self, memory: InstanceMemory, slot: int | None, master: int | None = None
    ) -> None:
        """Answer from the instance's snapshot in ``memory``, loaded before this
        returns, and drain with the instance; beat in ``slot``.

        The instance's checker process runs the checks and publishes each cycle
        there; this worker never runs them. With no slot (more workers than slots)
        this worker only answers. Both probes fail once ``master``, this worker's
        gunicorn master, is gone.
        """
        if self.started:
            raise RuntimeError("health checks already started in this process")
        self.drain = Drain(memory, self.drain.marker)
        self.master = master
        instance = InstanceHealth(
            memory, -1 if slot is None else slot, self.refresher, self._notify
        )
        self.instance = instance
        if slot is None:
            logger.warning(
                "Health: no slot left in the instance's shared memory; this worker"
                " answers probes, with no heartbeat the master can watch"
            )
            instance.follow()
            return
        instance.start()

    @property
    def machinery(self) -> Machinery | None:
        """The locks and threads this worker's health thread watches, once it
        shares the instance's health and has a slot; None otherwise."""
        instance = self.instance
        return (
            instance.machinery if instance is not None and instance.slot >= 0 else None
        )

    def mark_broken(self, reason: str) -> None:
        """Fail liveness from now on: for a state only a restart can mend."""
        self.broken_reason = reason

    def master_gone(self) -> bool:
        """Whether this worker's gunicorn master has exited (its parent changed)."""
        return self.master is not None and os.getppid() != self.master

    def liveness(self) -> Verdict:
        """Is this process fit to keep running? In-memory state only, no I/O.

        Sharing the instance's results, a worker is wedged when its health thread
        no longer beats within its lease; a stale snapshot fails readiness, not this
        worker's liveness. A worker whose master is gone is on its way out: nothing
        will replace it. A worker whose own machinery is wedged (a lock of PetSage's
        held for good, its log writer dead: petsage.health.machinery) fails
        ``machinery``, naming it.
        """
        refresher = self.refresher
        instance = self.instance
        if instance is not None:
            wedged = instance.slot >= 0 and not instance.alive
        else:
            stale = self._snapshot_age() > refresher.stale_after
            wedged = refresher.started and (not refresher.alive or stale)
        return Verdict(
            (
                Item("process", "fail", MASTER_GONE)
                if self.master_gone()
                else Item("process", "fail", "broken")
                if self.broken_reason
                else Item("process", "pass"),
                Item("refresher", "fail", "wedged")
                if wedged
                else Item("refresher", "pass"),
                self._machinery_item(),
            )
        )

    def _machinery_item(self) -> Item:
        machinery = self.machinery
        problem = machinery.problem if machinery is not None else None
        return (
            Item("machinery", "fail", problem) if problem else Item("machinery", "pass")
        )

    def readiness(self) -> Verdict:
        """Should this process get traffic? Reads the cached snapshot only."""
        refresher = self.refresher
        snapshot = self.snapshot
        items = [
            Item("startup", "fail", "starting")
            if snapshot is None
            else Item("startup", "pass"),
            Item("shutdown", "fail", MASTER_GONE)
            if self.master_gone()
            else Item("shutdown", "fail", "draining")
            if self.drain.active()
            else Item("shutdown", "pass"),
        ]
        stale_after = (
            refresher.stale_after
            if self.instance is None
            else self.instance.stale_after
        )
        if snapshot is not None and (
            not self._refreshed()
            or time.monotonic() - snapshot.completed_at > stale_after
        ):
            items.append(Item("refresher", "fail", "stale"))
        else:
            items.append(Item("refresher", "pass"))
        results = snapshot.results if snapshot else {}
        for check in self.checks:
            result = results.get(check.name)
            if result is None:
                status: Status = "fail" if check.critical else "warn"
                items.append(Item(check.name, status, "not run yet"))
            else:
                items.append(Item(check.name, result.status, result.output))
        return Verdict(tuple(items))

    def _refreshed(self) -> bool:
        """Whether something still refreshes the snapshot this worker answers from."""
        if self.instance is not None:
            return True  # the checker process publishes: the snapshot's age tells
        return not self.refresher.started or self.refresher.alive

    def _snapshot_age(self) -> float:
        snapshot = self.snapshot
        if snapshot is None:
            return 0.0
        return time.monotonic() - snapshot.completed_at

    def _cycle_completed(self, snapshot: Snapshot) -> None:
        """Answer from a cycle this process ran (outside gunicorn)."""
        self._notify(snapshot)

    def _notify(self, snapshot: Snapshot) -> None:
        for listener in self.listeners:
            listener(snapshot)


def new_health(period: float, drain_file: str | None) -> Health:
    """A health state with the check every app has: its process's uptime."""
    health = Health([], period, drain_file)
    health.add_check(process_uptime_check(started=time.monotonic()))
    return health
