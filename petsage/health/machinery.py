"""A worker's watchdog over the machinery PetSage owns: its locks and its threads.

A request thread that logs, records a metric or answers a probe takes a few locks
that PetSage owns (the log handler's, the log queue's, the metrics values', the
health snapshot's), each for microseconds. One held for good (a thread stuck while
holding it) stops every request thread of the worker in turn, and nothing else would
notice: the health thread still beats. So each tick the worker's health thread
(petsage.health.shared) tries each watched lock, waiting TRY_FOR at most, never
longer, and looks at each watched thread. A lock it could not get for longer than
WEDGED_AFTER, or a watched thread that started and died, wedges the worker: its
``/livez`` fails naming what (``machinery: lock NAME held for 12 s``, the log
handler's named after the handler), its health thread stops beating, and the
master replaces it as it replaces a worker whose health thread is silent
(petsage.serving.server).

What is not watched, on purpose: request threads, and whatever they wait on. A
request waiting on a dependency (a slow database, an upstream without a timeout)
holds no lock of PetSage's while it waits, so however many wait, liveness stays
``pass``: an outage must not restart every worker of every instance. Nor is a log
nobody reads a wedge: its lines are dropped and counted
(petsage.serving.log_output), no lock is held while the writer thread waits on the
pipe, and a new worker would find the same pipe.
"""

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

# How long a watched lock may stay out of reach before the worker counts as wedged:
# PetSage holds each for microseconds, so only a thread stuck while holding one gets
# near it, and a busy or briefly paused worker never does.
WEDGED_AFTER = 10.0
# How long one look waits for a lock that is held: a tick's work stays short even
# with every lock held.
TRY_FOR = 0.02


class Lockable(Protocol):
    """A lock as ``threading`` makes them: ``Lock``, ``RLock``."""

    def acquire(self, blocking: bool = ..., timeout: float = ...) -> bool:
        """Take it, waiting ``timeout`` seconds at most; whether it was taken."""

    def release(self) -> None:
        """Let it go."""


@dataclass
class WatchedLock:
    """A lock of PetSage's, and when the watchdog last had it (monotonic clock)."""

    lock: Lockable
    had_at: float


class Machinery:
    """The locks and threads of one process that PetSage owns, and whether any is
    wedged, as the last look found them."""

    def __init__(self, wedged_after: float = WEDGED_AFTER) -> None:
        self.wedged_after = wedged_after
        self._locks: dict[str, WatchedLock] = {}
        self._threads: dict[str, Callable[[], threading.Thread | None]] = {}
        # What the last look found wedged: a lock held (and since when it was last
        # had), or a thread dead (None).
        self._wedged: list[tuple[str, float | None]] = []

    def watch_lock(self, name: str, lock: Lockable) -> None:
        """Watch ``lock``, named ``name`` in what ``/livez`` says."""
        self._locks[name] = WatchedLock(lock, time.monotonic())

    def watch_thread(
        self, name: str, thread: Callable[[], threading.Thread | None]
    ) -> None:
        """Watch the thread ``thread()`` gives (None until it starts), named
        ``name``: one that started and is no longer alive wedges the worker."""
        self._threads[name] = thread

    @property
    def watched(self) -> list[str]:
        """The names of what is watched, locks then threads."""
        return [*self._locks, *self._threads]

    def look(self) -> bool:
        """Try each lock (TRY_FOR at most each), look at each thread; whether the
        worker is wedged. Called by the worker's health thread, once a tick."""
        wedged: list[tuple[str, float | None]] = []
        for name, watched in list(self._locks.items()):
            if watched.lock.acquire(timeout=TRY_FOR):
                watched.lock.release()
                watched.had_at = time.monotonic()
            elif time.monotonic() - watched.had_at > self.wedged_after:
                wedged.append((f"lock {name}", watched.had_at))
        for name, thread_of in list(self._threads.items()):
            thread = thread_of()
            if thread is not None and not thread.is_alive():
                wedged.append((f"thread {name}", None))
        self._wedged = wedged
        return bool(wedged)

    @property
    def problem(self) -> str | None:
        """What the last look found wedged, or None: read by ``/livez``, no lock."""
        wedged = self._wedged
        if not wedged:
            return None
        now = time.monotonic()
        return "; ".join(
            f"{what} dead"
            if had_at is None
            else f"{what} held for {now - had_at:.0f} s"
            for what, had_at in wedged
        )
