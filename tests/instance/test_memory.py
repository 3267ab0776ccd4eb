"""The drain state in the memory a master shares with its workers
(``petsage.instance.memory``): a read never mixes two writes.

A writer (``petsage drain``, the master on SIGTERM) may be stopped or killed halfway
through a write, and a reader in another process may read while a write is under
way, byte by byte in step with it. Each test lays in the memory by hand what such a
reader can find, between the bytes of the last whole value and those of the next.
"""

import os
from collections.abc import Callable, Iterator

import pytest

from petsage.instance.memory import DRAIN_AT, SLOTS_AT, DrainState, InstanceMemory

NAME = "petsage-1-2-3"
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
