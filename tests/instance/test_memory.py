"""The memory a master shares with its workers (``petsage.instance.memory``), and the
lease elected in it (``petsage.health.shared``), in one process.

The fault tests (tests/instance/test_leadership.py) run the same code in real
gunicorn workers; here each writer's half-done write and each election rule is
checked on its own. The drain state's tests lay in the memory by hand what a reader
can find while a writer (``petsage drain``, the master on SIGTERM), stopped or killed
halfway, or byte by byte in step with the reader, overwrites one value with the next.
"""

import os
import struct
import threading
import time
from collections.abc import Callable, Iterator, Sequence

import pytest

from petsage.health.checks import Check
from petsage.health.refresher import CheckRefresher, CheckResult, Snapshot
from petsage.health.shared import (
    InstanceHealth,
    Published,
    encode,
    leader_of,
    successor_of,
)
from petsage.instance.memory import (
    BUFFER,
    DRAIN_AT,
    SLOT,
    SLOTS_AT,
    DrainState,
    InstanceMemory,
    Slot,
)
from tests.support.blocking import blocking_check
from tests.support.processes import wait_until

NAME = "petsage-1-2-3"


@pytest.fixture
def memory() -> InstanceMemory:
    return InstanceMemory.create(NAME)


def snapshot(output: str, completed_at: float) -> bytes:
    result = CheckResult("pass", 1, "s", output, "t", 0.1, 0)
    return encode(Published(Snapshot({"uptime": result}, completed_at), 7, None))


class TestMemory:
    def test_a_slot_reads_as_written(self, memory: InstanceMemory) -> None:
        index = memory.assign_slot(set())
        assert index == 0
        slot = Slot(0, 4242, 3, 10.5, 1.5, 4.0)
        memory.write_slot(slot)
        assert memory.read_slot(0) == slot
        assert memory.slots() == [slot]

    def test_a_slot_half_written_reads_as_its_last_whole_copy(
        self, memory: InstanceMemory
    ) -> None:
        memory.assign_slot(set())
        whole = Slot(0, 4242, 3, 10.5, 1.5, 4.0)
        memory.write_slot(whole)
        assert memory.read_slot(0) == whole
        # Its writer stopped after the first bytes of the next write: the fields no
        # longer match their checksum.
        struct.pack_into("<d", memory._memory, SLOTS_AT + 16, 11.0)
        assert memory.read_slot(0) == whole, "a worker stopped mid-write is not gone"
        stranger = InstanceMemory.attach(os.getpid(), memory.fd, NAME)
        assert stranger.read_slot(0) is None, "never read whole: unknown"
        again = Slot(0, 4242, 3, 11.0, 1.5, 4.0)
        memory.write_slot(again)
        assert memory.read_slot(0) == again
        assert stranger.read_slot(0) == again

    def test_slots_are_taken_lowest_first_and_cleared_when_freed(
        self, memory: InstanceMemory
    ) -> None:
        assert memory.assign_slot({0, 1}) == 2
        memory.write_slot(Slot(2, 99, 0, 1.0, 1.0, 4.0))
        memory.clear_slot(2)
        assert memory.slots() == []
        assert SLOT.size == 48

    def test_its_size_is_sealed(self, memory: InstanceMemory) -> None:
        with pytest.raises(PermissionError):
            os.ftruncate(memory.fd, 4096)

    def test_the_drain_state_has_two_halves(self, memory: InstanceMemory) -> None:
        assert memory.drain_state().began is None
        memory.set_manual_drain(5.0)
        memory.set_shutdown_drain(7.0)
        state = memory.drain_state()
        assert (state.manual, state.shutdown, state.began) == (5.0, 7.0, 5.0)
        memory.set_manual_drain(None)
        assert memory.drain_state().began == 7.0

    def test_a_snapshot_torn_by_a_second_writer_falls_back_to_the_other(
        self, memory: InstanceMemory
    ) -> None:
        first, second = snapshot("first", 1.0), snapshot("second", 2.0)
        assert memory.publish(first, term=1)
        assert memory.publish(second, term=1)
        found = memory.read_snapshot()
        assert found is not None and found[2] == second
        # Two leaders at once (the moment of a takeover) wrote the same buffer: its
        # content no longer matches its checksum.
        newer = memory._buffer_at(1)
        memory._memory[newer + BUFFER.size] ^= 0xFF
        found = memory.read_snapshot()
        assert found is not None and found[2] == first

    def test_a_snapshot_too_large_is_refused(self, memory: InstanceMemory) -> None:
        assert not memory.publish(b"x" * (64 * 1024 + 1), term=0)
        assert memory.read_snapshot() is None

    def test_a_command_maps_the_same_memory_through_proc(
        self, memory: InstanceMemory
    ) -> None:
        other = InstanceMemory.attach(os.getpid(), memory.fd, NAME)
        other.set_manual_drain(3.0)
        assert memory.drain_state().manual == 3.0
        with pytest.raises(ValueError, match="not petsage-9-9-9's memory"):
            InstanceMemory.attach(os.getpid(), memory.fd, "petsage-9-9-9")
        with pytest.raises(OSError):
            InstanceMemory.attach(os.getpid(), 1_000_000, NAME)


def worker(
    memory: InstanceMemory, slot: int, checks: Sequence[Check] = ()
) -> InstanceHealth:
    """A worker's part in the instance's health, publishing its own cycles, as
    Health.share wires it."""
    refresher = CheckRefresher(checks, period=10)
    instance = InstanceHealth(memory, slot, refresher, lambda snapshot: None)
    refresher.listeners.append(instance.publish)
    return instance


class TestElection:
    def test_the_highest_claim_leads_the_youngest_among_equals(self) -> None:
        slots = [
            Slot(0, 10, 1, 100.0, 5.0, 4.0),
            Slot(1, 11, 2, 100.0, 7.0, 4.0),
            Slot(2, 12, 2, 100.0, 9.0, 4.0),
            Slot(3, 13, 0, 100.0, 11.0, 4.0),
        ]
        assert leader_of(slots, now=101.0) == slots[2]

    def test_a_silent_leader_leaves_the_lease_vacant_until_a_claim(self) -> None:
        slots = [Slot(0, 10, 1, 90.0, 5.0, 4.0), Slot(1, 11, 0, 100.0, 1.0, 4.0)]
        assert leader_of(slots, now=100.0) is None, "a worker without a claim leads"
        assert leader_of(slots[1:], now=100.0) is None

    def test_the_youngest_fresh_worker_claims_a_vacant_lease(self) -> None:
        slots = [
            Slot(0, 10, 0, 100.0, 5.0, 4.0),
            Slot(1, 11, 0, 100.0, 9.0, 4.0),
            Slot(2, 12, 0, 90.0, 12.0, 4.0),  # younger, but silent
        ]
        assert successor_of(slots, now=100.0) == slots[1]
        assert successor_of([], now=100.0) is None

    def test_a_worker_started_later_never_displaces_the_leader(
        self, memory: InstanceMemory
    ) -> None:
        memory.assign_slot(set())
        first = worker(memory, 0)
        first.tick()
        assert first.leading and first.term == 1
        memory.assign_slot({0})
        later = worker(memory, 1)
        later.tick()
        first.tick()
        assert first.leading and not later.leading and later.term == 0

    def test_a_stuck_leader_is_taken_over_and_never_publishes_after(
        self, memory: InstanceMemory
    ) -> None:
        memory.assign_slot(set())
        memory.assign_slot({0})
        leader, follower = worker(memory, 0), worker(memory, 1)
        leader.tick()
        follower.tick()
        assert leader.leading and not follower.leading
        published = memory.generation()
        # The leader's thread stops beating (stopped, or stuck in a call): its slot
        # ages past its lease.
        stale = time.monotonic() - 2 * leader.lease
        memory.write_slot(Slot(0, os.getpid(), 1, stale, leader.started, leader.lease))
        leader.beat_at = stale
        follower.tick()  # claims the next term and leads at once
        assert follower.term == 2 and follower.leading
        follower.refresher.run_cycle()  # its first cycle, when it is due
        assert memory.generation() > published
        taken_over = memory.generation()
        # The old leader comes back with a cycle it completed before it stopped.
        leader.publish(Snapshot({}, time.monotonic()))
        assert not leader.leading and leader.term == 0
        assert memory.generation() == taken_over, "published over the new leader"


class TestLeaving:
    def test_a_leaving_leader_runs_the_due_cycle_then_empties_its_slot(
        self, memory: InstanceMemory
    ) -> None:
        memory.assign_slot(set())
        memory.assign_slot({0})
        leader, follower = worker(memory, 0), worker(memory, 1)
        leader.tick()
        follower.tick()
        leader.refresher.next_cycle_at = time.monotonic()  # due
        published = memory.generation()
        leader.leave()
        assert memory.generation() == published + 1, "the due cycle, published"
        assert [slot.index for slot in memory.slots()] == [1]
        follower.tick()
        assert follower.leading, "the worker left leads at its next tick"
        assert memory.generation() == published + 1, "nothing due: no cycle"

    def test_a_leaving_leader_finishes_the_cycle_under_way(
        self, memory: InstanceMemory
    ) -> None:
        memory.assign_slot(set())
        release = threading.Event()
        leader = worker(memory, 0, [blocking_check("db", release, timeout=30)])
        leader.start()  # its health thread leads, and its first cycle waits on db
        wait_until(lambda: leader.leading, 10, "the health thread leading")
        leaving = threading.Thread(target=leader.leave)
        leaving.start()
        leaving.join(0.5)
        assert leaving.is_alive(), "it waits for the cycle under way"
        release.set()
        leaving.join(10)
        assert memory.read_snapshot() is not None, "that cycle, published"
        assert memory.slots() == []

    def test_a_worker_that_left_never_writes_its_slot_again(
        self, memory: InstanceMemory
    ) -> None:
        memory.assign_slot(set())
        leaving = worker(memory, 0)
        leaving.tick()
        leaving.leave()
        published = memory.generation()
        # Its health thread, a tick late, finishing a cycle.
        leaving.publish(Snapshot({}, time.monotonic()))
        assert memory.slots() == [], "its slot written again, for a worker gone"
        assert memory.generation() == published
        assert leaving.alive, "a worker that left is not wedged"

    def test_a_leaving_leader_runs_no_cycle_when_the_instance_stops(
        self, memory: InstanceMemory
    ) -> None:
        memory.assign_slot(set())
        leader = worker(memory, 0)
        leader.tick()
        memory.set_shutdown_drain(time.monotonic())
        leader.refresher.next_cycle_at = time.monotonic()
        published = memory.generation()
        leader.leave()
        assert memory.generation() == published
        assert memory.slots() == []


# The drain state's bytes, and a little more: the test lays them in whole.
REGION = slice(DRAIN_AT, SLOTS_AT)
WORD = 8
# Monotonic times whose mantissas differ in every byte: a mix of two is neither.
BEFORE, AFTER = 81234.56789, 97531.86420


def views_during_a_write(before: bytes, after: bytes) -> Iterator[tuple[str, bytes]]:
    """What a reader can find while ``before`` is overwritten with ``after``.

    A writer stopped after its first (or, storing in the other order, its last) n
    bytes; and a reader keeping pace with a writer that stores byte by byte (as
    CPython packs a double), which finds the first n bytes of every word new.
    """
    size = len(before)
    for n in range(1, size):
        yield f"first {n} bytes written", after[:n] + before[n:]
        yield f"last {n} bytes written", before[: size - n] + after[size - n :]
    for n in range(1, WORD):
        words = bytes(after[at] if at % WORD < n else before[at] for at in range(size))
        yield f"first {n} bytes of each word written", words


HALVES: dict[str, tuple[str, Callable[[DrainState], float | None]]] = {
    "manual": ("set_manual_drain", lambda state: state.manual),
    "shutdown": ("set_shutdown_drain", lambda state: state.shutdown),
}


@pytest.mark.parametrize("half", sorted(HALVES))
def test_a_write_in_progress_reads_as_the_last_whole_value_or_the_next(
    half: str,
) -> None:
    memory = InstanceMemory.create(NAME)
    setter, read = HALVES[half]
    write: Callable[[float], None] = getattr(memory, setter)
    write(BEFORE)
    assert read(memory.drain_state()) == BEFORE
    before = bytes(memory._memory[REGION])
    write(AFTER)
    after = bytes(memory._memory[REGION])
    torn = []
    for how, view in views_during_a_write(before, after):
        memory._memory[REGION] = view
        found = read(memory.drain_state())
        if found not in (BEFORE, AFTER):
            torn.append(f"{how}: {found!r}")
        # The last whole value this reader reads is BEFORE again.
        memory._memory[REGION] = before
        assert read(memory.drain_state()) == BEFORE
    assert torn == [], "torn reads:\n" + "\n".join(torn)
    write(AFTER)
    assert read(memory.drain_state()) == AFTER, "the write done, the new value"


def test_a_reader_that_never_read_a_drain_time_whole_finds_no_drain() -> None:
    memory = InstanceMemory.create(NAME)
    memory.set_manual_drain(BEFORE)
    before = bytes(memory._memory[REGION])
    memory.set_manual_drain(AFTER)
    assert memory.drain_state().manual == AFTER
    after = bytes(memory._memory[REGION])
    # The next writer stopped in the middle of the manual drain's time.
    memory._memory[REGION] = before[:4] + after[4:]
    command = InstanceMemory.attach(os.getpid(), memory.fd, NAME)
    assert command.drain_state() == DrainState(None, None)
    assert memory.drain_state().manual == AFTER, "its last whole value"


def test_a_command_of_another_release_refuses_the_memory_saying_why() -> None:
    memory = InstanceMemory.create(NAME)
    memory._memory[:8] = b"PETSAGE1"
    with pytest.raises(ValueError, match="runs another PetSage version"):
        InstanceMemory.attach(os.getpid(), memory.fd, NAME)
