"""The health snapshot an instance publishes in the memory its master shares with its
workers, read from outside as ``petsage drain`` maps it, and its cycles awaited."""

import json
from typing import Any

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
