"""A worker's health: its availability state, its checks, and what probes conclude."""

import logging
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from petsage.health.checks import Check, Status, worst
from petsage.health.refresher import CheckRefresher, Snapshot
from petsage.health.shared import InstanceHealth

logger = logging.getLogger(__name__)


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


class DrainMarker:
    """A file whose existence tells every worker of an instance to fail readiness.

    A file, because the master (on SIGTERM) and ``petsage drain`` (a separate process)
    both start draining, and every worker must see it at once. It holds why draining
    began: ``shutdown`` (SIGTERM; it cannot be cancelled, the stop is scheduled) or
    ``manual`` (``petsage drain``). With no path (an app outside gunicorn) nothing
    ever drains.
    """

    SHUTDOWN = "shutdown"
    MANUAL = "manual"

    def __init__(self, path: str | None) -> None:
        self.path = path

    def active(self) -> bool:
        """Whether draining has begun."""
        return self.path is not None and os.path.exists(self.path)

    def _lines(self) -> list[str] | None:
        if self.path is None:
            return None
        try:
            with open(self.path, encoding="utf-8") as marker:
                return marker.read().split()
        except FileNotFoundError:
            return None

    def reason(self) -> str | None:
        """Why draining began (``shutdown`` or ``manual``), or None if it has not."""
        lines = self._lines()
        if lines is None:
            return None
        return lines[0] if lines else self.MANUAL

    def began(self) -> float | None:
        """When draining began, on the monotonic clock, or None if unknown.

        The marker holds it as ``time.monotonic()`` read where draining began:
        CLOCK_MONOTONIC is one clock for every process of the host (containers
        included), and unlike the wall clock (or the file's mtime) no clock step
        moves it.
        """
        lines = self._lines()
        try:
            return float(lines[1]) if lines else None
        except (IndexError, ValueError):
            return None

    def begin(self, reason: str = MANUAL) -> float:
        """Begin draining for ``reason``; return when draining began (monotonic).

        Began earlier (``petsage drain`` before a SIGTERM), it keeps that time and
        takes the new reason. Raises OSError when the marker cannot be written.
        """
        if self.path is None:
            raise FileNotFoundError("no drain marker path")
        began = self.began()
        if began is None:
            began = time.monotonic()
        temporary = f"{self.path}.{os.getpid()}.new"
        with open(temporary, "w", encoding="utf-8") as marker:
            marker.write(f"{reason}\n{began!r}\n")
        os.replace(temporary, self.path)
        return began

    def end(self) -> bool:
        """Stop draining: readiness follows the checks again. Whether it was active."""
        if self.path is None:
            return False
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            return False
        return True


class Health:
    """Availability state and cached check results, as this worker process answers.

    Under gunicorn the results are the instance's (``share``): one worker runs the
    checks and every worker answers from the same snapshot. Elsewhere (the test
    client, ``flask run``) this process runs the checks itself (``start``).
    """

    def __init__(
        self, checks: Sequence[Check], period: float, drain_file: str | None
    ) -> None:
        self.refresher = CheckRefresher(checks, period)
        self.refresher.listeners.append(self._cycle_completed)
        self.drain = DrainMarker(drain_file)
        self.broken_reason: str | None = None
        # The instance's shared health, once ``share`` succeeded.
        self.instance: InstanceHealth | None = None
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

    def add_check(self, check: Check) -> None:
        """Register a check; names are unique and fixed before the refresher starts."""
        if self.started:
            raise RuntimeError("checks must be registered before health checks start")
        taken = {item.name for item in self.liveness().items + self.readiness().items}
        if check.name in taken:
            raise ValueError(f"a health check is already named {check.name!r}")
        self.refresher.checks.append(check)

    def start(self) -> None:
        """Start refreshing checks in this process, in the background (idempotent)."""
        if self.instance is None:
            self.refresher.start()

    def share(self, directory: str) -> None:
        """Answer from the snapshot of the instance whose directory is ``directory``,
        loaded before this returns; run the checks while this worker leads.

        When the directory cannot be used, this worker runs its own checks, as
        outside gunicorn, and says so once.
        """
        if self.started:
            raise RuntimeError("health checks already started in this process")
        instance = InstanceHealth(directory, self.refresher, self._notify)
        self.instance = instance
        try:
            instance.start()
        except OSError as error:
            self.instance = None
            logger.error(
                "Health: cannot share check results in %s (%s); this worker runs"
                " its own checks",
                directory,
                error.strerror or error,
            )
            self.refresher.start()

    def mark_broken(self, reason: str) -> None:
        """Fail liveness from now on: for a state only a restart can mend."""
        self.broken_reason = reason

    def liveness(self) -> Verdict:
        """Is this process fit to keep running? In-memory state only, no I/O.

        Sharing the instance's results, a worker is wedged when it no longer follows
        them, or leads and completes no cycle; a stale snapshot another worker
        should have refreshed fails readiness, not this worker's liveness.
        """
        refresher = self.refresher
        instance = self.instance
        stale = self._snapshot_age() > refresher.stale_after
        if instance is not None:
            wedged = (
                not instance.alive
                or time.monotonic() - instance.followed_at > refresher.stale_after
                or (instance.leading and stale)
            )
        else:
            wedged = refresher.started and (not refresher.alive or stale)
        return Verdict(
            (
                Item("process", "fail", "broken")
                if self.broken_reason
                else Item("process", "pass"),
                Item("refresher", "fail", "wedged")
                if wedged
                else Item("refresher", "pass"),
            )
        )

    def readiness(self) -> Verdict:
        """Should this process get traffic? Reads the cached snapshot only."""
        refresher = self.refresher
        snapshot = self.snapshot
        items = [
            Item("startup", "fail", "starting")
            if snapshot is None
            else Item("startup", "pass"),
            Item("shutdown", "fail", "draining")
            if self.drain.active()
            else Item("shutdown", "pass"),
        ]
        if snapshot is not None and (
            not self._refreshed() or self._snapshot_age() > refresher.stale_after
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
            return self.instance.alive
        return not self.refresher.started or self.refresher.alive

    def _snapshot_age(self) -> float:
        snapshot = self.snapshot
        if snapshot is None:
            return 0.0
        return time.monotonic() - snapshot.completed_at

    def _cycle_completed(self, snapshot: Snapshot) -> None:
        """Share a cycle this process ran, or answer from it when not sharing."""
        if self.instance is not None:
            self.instance.publish(snapshot)
        else:
            self._notify(snapshot)

    def _notify(self, snapshot: Snapshot) -> None:
        for listener in self.listeners:
            listener(snapshot)
