"""The health snapshot an instance publishes in the memory its master shares with its
workers, read from outside as ``petsage drain`` maps it, its cycles awaited, and
every cycle it publishes collected."""

import itertools
import json
import threading
from typing import Any

from petsage.app import create_app
from petsage.health import health_of
from petsage.instance.directory import InstanceRecord
from petsage.instance.memory import InstanceMemory
from tests.support.gunicorn_process import GunicornServer
from tests.support.instances import LIVENESS, instance_directory
from tests.support.processes import wait_until


def instance_memory(server: GunicornServer, state: str = "/dev/shm") -> InstanceMemory:
    """The memory ``server``'s master shares with its workers, mapped here as
    ``petsage drain`` maps it."""
    record = InstanceRecord.load(str(instance_directory(server, state)))
    return InstanceMemory.attach(record.pid, record.memory_fd, record.name)


def published(server: GunicornServer, state: str = "/dev/shm") -> dict[str, Any] | None:
    """The instance's published snapshot, or None before its first cycle."""
    found = instance_memory(server, state).read_snapshot()
    if found is None:
        return None
    document: dict[str, Any] = json.loads(found[2])
    return document


def next_cycle(server: GunicornServer, after: dict[str, Any]) -> dict[str, Any]:
    """The instance's next published cycle after the one ``after`` describes."""

    def newer() -> dict[str, Any] | None:
        document = published(server)
        if document is None or document["completed_at"] <= after["completed_at"]:
            return None
        return document

    wait_until(lambda: newer() is not None, LIVENESS, "the next cycle")
    document = newer()
    assert document is not None
    return document


def first_cycle_begun_after(server: GunicornServer, moment: float) -> dict[str, Any]:
    """The first cycle the instance began after ``moment`` (monotonic clock), as it
    published it: a cycle begins at its predecessor's ``next_cycle_at`` or later.
    (Cycles come seconds apart; the file is read every 20 ms.)"""
    document = published(server)
    assert document is not None
    while document["next_cycle_at"] <= moment:
        document = next_cycle(server, document)
    return next_cycle(server, document)


class Publications:
    """Every snapshot ``server``'s instance publishes, read from its memory every
    20 ms (mapped once) for as long as the ``with`` block lasts, from its first."""

    def __init__(self, server: GunicornServer) -> None:
        self.memory = instance_memory(server)
        self.seen: list[dict[str, Any]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(0.02):
            found = self.memory.read_snapshot()
            document = json.loads(found[2]) if found else None
            if document is not None and (
                not self.seen or document["completed_at"] != self.latest["completed_at"]
            ):
                self.seen.append(document)

    @property
    def latest(self) -> dict[str, Any]:
        """The newest cycle published."""
        return self.seen[-1]

    @property
    def longest_gap(self) -> float:
        """The longest time between two cycles' completions (0 for one cycle)."""
        completed = [document["completed_at"] for document in self.seen]
        return max((b - a for a, b in itertools.pairwise(completed)), default=0.0)

    def __enter__(self) -> "Publications":
        self._thread.start()
        wait_until(lambda: bool(self.seen), LIVENESS, "a first published cycle")
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=30)

    def wait_for_more(self, count: int, what: str) -> None:
        """Wait until ``count`` more cycles than now have been published."""
        published = len(self.seen)
        wait_until(lambda: len(self.seen) >= published + count, LIVENESS, what)


def checks_of_the_application() -> set[str]:
    """The checks PetSage's application registers with no dependency configured,
    built here as a worker builds it: the built-in ones and its features' (the
    database's, once a feature keeps records). A test that configures dependencies
    adds theirs: none of it lists what a new feature may bring."""
    return {check.name for check in health_of(create_app()).checks}
