"""The memory a master shares with its workers (``petsage.instance.memory``), in one
process: each writer's half-done write is checked on its own. The drain state's tests
lay in the memory by hand what a reader can find while a writer (``petsage drain``,
the master on SIGTERM), stopped or killed halfway, or byte by byte in step with the
reader, overwrites one value with the next.
"""

import os
import struct
from collections.abc import Callable, Iterator

import pytest

from petsage.health.refresher import CheckResult, Snapshot
from petsage.health.shared import Published, encode
from petsage.instance.memory import (
    BUFFER,
    DRAIN_AT,
    SLOT,
    SLOTS_AT,
    DrainState,
    InstanceMemory,
    Slot,
)

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
        slot = Slot(0, 4242, 10.5, 1.5, 4.0)
        memory.write_slot(slot)
        assert memory.read_slot(0) == slot
        assert memory.slots() == [slot]

    def test_a_slot_half_written_reads_as_its_last_whole_copy(
        self, memory: InstanceMemory
    ) -> None:
        memory.assign_slot(set())
        whole = Slot(0, 4242, 10.5, 1.5, 4.0)
        memory.write_slot(whole)
        assert memory.read_slot(0) == whole
        # Its writer stopped after the first bytes of the next write: the fields no
        # longer match their checksum.
        struct.pack_into("<d", memory._memory, SLOTS_AT + 8, 11.0)
        assert memory.read_slot(0) == whole, "a worker stopped mid-write is not gone"
        stranger = InstanceMemory.attach(os.getpid(), memory.fd, NAME)
        assert stranger.read_slot(0) is None, "never read whole: unknown"
        again = Slot(0, 4242, 11.0, 1.5, 4.0)
        memory.write_slot(again)
        assert memory.read_slot(0) == again
        assert stranger.read_slot(0) == again

    def test_slots_are_taken_lowest_first_and_cleared_when_freed(
        self, memory: InstanceMemory
    ) -> None:
        assert memory.assign_slot({0, 1}) == 2
        memory.write_slot(Slot(2, 99, 1.0, 1.0, 4.0))
        memory.clear_slot(2)
        assert memory.slots() == []
        assert SLOT.size == 40

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
        assert memory.publish(first, checker=1)
        assert memory.publish(second, checker=1)
        found = memory.read_snapshot()
        assert found is not None and found[2] == second
        # A writer killed halfway through (or a second writer) left the buffer: its
        # content no longer matches its checksum.
        newer = memory._buffer_at(1)
        memory._memory[newer + BUFFER.size] ^= 0xFF
        found = memory.read_snapshot()
        assert found is not None and found[2] == first

    def test_a_snapshot_too_large_is_refused(self, memory: InstanceMemory) -> None:
        assert not memory.publish(b"x" * (64 * 1024 + 1), checker=0)
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
