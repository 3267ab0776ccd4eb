"""Memory a master shares with its workers: drain state, heartbeats, the snapshot.

The master makes it before it forks (a memfd, mapped shared), so every worker has
it from birth, and none of it lives in a directory: a full, read-only or deleted
state directory cannot touch readiness or draining. It holds:

- **the drain state**: when a manual drain (``petsage drain``) and a shutdown drain
  (SIGTERM) began, on the monotonic clock, each with a checksum;
- **one slot per worker**, which only that worker writes: its pid, when its health
  thread last ran (its heartbeat), and how long that may stay silent before the
  worker counts as wedged (the master replaces it, petsage.serving.server);
- **the latest health snapshot**, in two buffers the instance's checker process
  writes in turn (petsage.serving.checker), each naming the checker that wrote it.

The ``petsage`` command maps the same memory through ``/proc/<master>/fd/<fd>`` (as
the master's user or root, in its PID namespace) to begin or cancel a drain.

Nothing here takes a lock, so a process stopped or killed halfway through a write
blocks no other. Each field has one writer, and is written so that a reader can tell
a write in progress, whatever order another CPU sees the bytes land in, and read
again: a checksum over each slot, each drain time and each snapshot. A reader that
keeps meeting a write in progress (its writer stopped halfway) uses the last whole
value it read.

Two copies of a value are no such check: CPython stores and loads a double byte by
byte, so a reader keeping pace with a writer finds the same mix of old and new bytes
in both copies, and takes it for a value.
"""

import fcntl
import mmap
import os
import struct
import time
import zlib
from dataclasses import dataclass

# The layout's version: a ``petsage`` command reads only the layout it knows.
MAGIC = b"PETSAGE3"
HEADER = struct.Struct("<8sII64s")  # magic, slots in use, slot count, instance name
# A checked record: its fields, then the CRC-32 of their bytes, then padding to 8.
CHECKSUM = struct.Struct("<I")
DRAIN_TIME = struct.Struct("<d")  # when it began (0.0: it has not), CRC-32 after it
DRAIN_TIMES = struct.Struct("<d8xd8x")  # the manual and shutdown times, unchecked
SLOT_FIELDS = struct.Struct("<Qddd")  # pid, beat, started, lease
SLOT = struct.Struct("<QdddI4x")  # those fields, then their CRC-32
# generation, the pid of the checker that wrote it, length, CRC-32 of the content
BUFFER = struct.Struct("<QQII")

SLOT_COUNT = 256
# A snapshot's JSON: about 300 bytes a check, so room for a few hundred checks.
SNAPSHOT_CAPACITY = 64 * 1024

DRAIN_AT = 128
MANUAL_AT, SHUTDOWN_AT = DRAIN_AT, DRAIN_AT + 16  # 8 bytes, a checksum, padding
SLOTS_AT = 192
BUFFERS_AT = SLOTS_AT + SLOT_COUNT * SLOT.size
SIZE = BUFFERS_AT + 2 * (BUFFER.size + SNAPSHOT_CAPACITY)
FIRST_BUFFER, SECOND_BUFFER = BUFFERS_AT, BUFFERS_AT + BUFFER.size + SNAPSHOT_CAPACITY
GENERATION = struct.Struct("<Q")

# How often a reader tries again when it met a write in progress.
READ_ATTEMPTS = 100


@dataclass(frozen=True)
class Slot:
    """One worker's slot, as last written by that worker."""

    index: int
    pid: int
    # When its health thread last ran, and when it started (monotonic clock).
    beat: float
    started: float
    # How long its health thread may stay silent before the worker counts as wedged.
    lease: float


@dataclass(frozen=True)
class DrainState:
    """When draining began (monotonic clock), by what; None where it has not."""

    manual: float | None
    shutdown: float | None

    @property
    def began(self) -> float | None:
        """When the drain began: the earlier of the two, or None."""
        times = [t for t in (self.manual, self.shutdown) if t is not None]
        return min(times) if times else None


class InstanceMemory:
    """The shared memory of one instance, as a master, a worker or a command maps it."""

    def __init__(self, fd: int, memory: mmap.mmap) -> None:
        self.fd = fd
        self._memory = memory
        # The last whole copy of each checked record this process read, by offset.
        self._whole: dict[int, bytes] = {}

    @classmethod
    def create(cls, name: str) -> "InstanceMemory":
        """Make the memory of the instance called ``name``, in the master.

        Every page is written now, so that no later write needs memory the kernel
        might not have, and its size is sealed: nobody (a command opening it through
        ``/proc``) can shrink it under the processes that map it. The descriptor is
        closed on exec: a new master that a SIGUSR2 upgrade starts makes its own.
        """
        fd = os.memfd_create("petsage-instance", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
        os.ftruncate(fd, SIZE)
        fcntl.fcntl(fd, fcntl.F_ADD_SEALS, fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW)
        memory = mmap.mmap(fd, SIZE, mmap.MAP_SHARED)
        memory.write(bytes(SIZE))
        HEADER.pack_into(memory, 0, MAGIC, 0, SLOT_COUNT, name.encode()[:64])
        created = cls(fd, memory)
        # Zeros do not match their checksum: every checked record starts whole.
        for offset in (MANUAL_AT, SHUTDOWN_AT):
            created._write_checked(offset, DRAIN_TIME.pack(0.0))
        for index in range(SLOT_COUNT):
            created.clear_slot(index)
        return created

    @classmethod
    def inherited(cls, fd: int) -> "InstanceMemory":
        """Map the memory whose descriptor ``fd`` a process was started with (the
        checker process, which its master starts with exec); ValueError when ``fd``
        is not PetSage's."""
        if os.fstat(fd).st_size != SIZE:
            raise ValueError(f"descriptor {fd} is not an instance's memory")
        memory = mmap.mmap(fd, SIZE, mmap.MAP_SHARED)
        if HEADER.unpack_from(memory, 0)[0] != MAGIC:
            memory.close()
            raise ValueError(f"descriptor {fd} is not an instance's memory")
        return cls(fd, memory)

    @classmethod
    def attach(cls, pid: int, fd: int, name: str) -> "InstanceMemory":
        """Map the memory of the instance ``name``, whose master is ``pid`` here.

        OSError when the master's descriptors cannot be opened (another user, another
        PID namespace, a master gone); ValueError when ``fd`` is not its memory.
        """
        own = os.open(f"/proc/{pid}/fd/{fd}", os.O_RDWR | os.O_CLOEXEC)
        try:
            if os.fstat(own).st_size != SIZE:
                raise ValueError(f"descriptor {fd} of pid {pid} is not PetSage's")
            memory = mmap.mmap(own, SIZE, mmap.MAP_SHARED)
        finally:
            os.close(own)
        magic, _, _, named = HEADER.unpack_from(memory, 0)
        if magic != MAGIC or named.rstrip(b"\0") != name.encode()[:64]:
            memory.close()
            if magic[:7] == MAGIC[:7] and magic != MAGIC:
                raise ValueError(
                    f"instance {name} runs another PetSage version: its memory's"
                    f" layout is {magic.decode(errors='replace')}, this command reads"
                    f" {MAGIC.decode()}; run the petsage command of its release"
                )
            raise ValueError(f"descriptor {fd} of pid {pid} is not {name}'s memory")
        return cls(-1, memory)

    # Checked records, slots and drain times: fields, then the CRC-32 of their bytes.
    # A reader that finds the two disagree read during a write, whatever order its
    # bytes landed in.

    def _write_checked(self, offset: int, fields: bytes) -> None:
        """Write ``fields`` at ``offset``, then their checksum."""
        self._memory[offset : offset + len(fields)] = fields
        CHECKSUM.pack_into(self._memory, offset + len(fields), zlib.crc32(fields))

    def _read_checked(self, offset: int, length: int) -> bytes | None:
        """The ``length`` bytes of fields at ``offset``, as last written whole; None
        when this process never read them whole.

        Fields being written are read again, letting other threads run between
        tries; fields whose writer stopped halfway read as the last whole copy this
        process saw.
        """
        end = offset + length
        for attempt in range(READ_ATTEMPTS):
            raw = self._memory[offset : end + CHECKSUM.size]
            fields = raw[:length]
            if zlib.crc32(fields) == CHECKSUM.unpack_from(raw, length)[0]:
                self._whole[offset] = fields
                return fields
            if attempt % 10 == 9:
                time.sleep(0)
        return self._whole.get(offset)

    # The drain state: the manual half written by ``petsage drain``, the shutdown
    # half by the master.

    def drain_state(self) -> DrainState:
        """When each kind of drain began, each as last written whole (one never
        read whole, its writer stopped halfway, has not begun)."""
        return DrainState(self._drain_time(MANUAL_AT), self._drain_time(SHUTDOWN_AT))

    def _drain_time(self, offset: int) -> float | None:
        fields = self._read_checked(offset, DRAIN_TIME.size)
        began: float = DRAIN_TIME.unpack(fields)[0] if fields is not None else 0.0
        return began or None

    def draining(self) -> bool:
        """Whether either kind of drain has begun (read on every probe, unchecked:
        one read, no checksum). A drain being written shows at the next probe."""
        manual, shutdown = DRAIN_TIMES.unpack_from(self._memory, DRAIN_AT)
        return bool(manual or shutdown)

    def set_manual_drain(self, began: float | None) -> None:
        """Record when a manual drain began, or (None) that it ended."""
        self._write_checked(MANUAL_AT, DRAIN_TIME.pack(began or 0.0))

    def set_shutdown_drain(self, began: float) -> None:
        """Record when the shutdown drain began."""
        self._write_checked(SHUTDOWN_AT, DRAIN_TIME.pack(began))

    # Worker slots: each written by its worker only, or by the master while no
    # worker owns it.

    def assign_slot(self, taken: set[int]) -> int | None:
        """A free slot for a worker about to be forked, cleared; None if none is."""
        for index in range(SLOT_COUNT):
            if index not in taken:
                self.clear_slot(index)
                in_use = HEADER.unpack_from(self._memory, 0)[1]
                if index >= in_use:
                    struct.pack_into("<I", self._memory, 8, index + 1)
                return index
        return None

    def clear_slot(self, index: int) -> None:
        """Empty a slot whose worker is gone, or not yet forked."""
        self.write_slot(Slot(index, 0, 0.0, 0.0, 0.0))

    def write_slot(self, slot: Slot) -> None:
        """Write ``slot`` (its writer's own): the fields, then their checksum."""
        fields = SLOT_FIELDS.pack(slot.pid, slot.beat, slot.started, slot.lease)
        self._write_checked(SLOTS_AT + slot.index * SLOT.size, fields)

    def read_slot(self, index: int) -> Slot | None:
        """Slot ``index`` as last written whole; None when empty, or never read whole.

        One whose writer stopped halfway reads as the last whole copy this process
        saw, so that a worker stopped mid-write is neither taken for gone nor for a
        newcomer.
        """
        fields = self._read_checked(SLOTS_AT + index * SLOT.size, SLOT_FIELDS.size)
        if fields is None:
            return None
        pid, beat, started, lease = SLOT_FIELDS.unpack(fields)
        return Slot(index, pid, beat, started, lease) if pid else None

    def slots(self) -> list[Slot]:
        """Every slot a worker has written."""
        in_use = HEADER.unpack_from(self._memory, 0)[1]
        found = (self.read_slot(index) for index in range(min(in_use, SLOT_COUNT)))
        return [slot for slot in found if slot is not None]

    # The snapshot: two buffers, the newer one valid while the other is written.

    def _buffer_at(self, which: int) -> int:
        return SECOND_BUFFER if which else FIRST_BUFFER

    def generation(self) -> int:
        """The newest snapshot's generation: it changes with every publication.

        Read on every probe: two 8-byte reads, nothing more.
        """
        memory = self._memory
        first: int = GENERATION.unpack_from(memory, FIRST_BUFFER)[0]
        second: int = GENERATION.unpack_from(memory, SECOND_BUFFER)[0]
        return first if first > second else second

    def publish(self, content: bytes, checker: int) -> bool:
        """Write a snapshot into the older buffer, as the checker of pid ``checker``
        (the one process that publishes); False when it does not fit."""
        if len(content) > SNAPSHOT_CAPACITY:
            return False
        generations = [
            struct.unpack_from("<Q", self._memory, self._buffer_at(which))[0]
            for which in (0, 1)
        ]
        which = 0 if generations[0] <= generations[1] else 1
        at = self._buffer_at(which)
        struct.pack_into("<Q", self._memory, at, 0)  # invalid while written
        self._memory[at + BUFFER.size : at + BUFFER.size + len(content)] = content
        BUFFER.pack_into(
            self._memory, at, 0, checker, len(content), zlib.crc32(content)
        )
        struct.pack_into("<Q", self._memory, at, max(generations) + 1)
        return True

    def read_snapshot(self) -> tuple[int, int, bytes] | None:
        """The newest whole snapshot: (generation, checker pid, content), or None."""
        for _ in range(READ_ATTEMPTS):
            candidates = []
            for which in (0, 1):
                at = self._buffer_at(which)
                generation = struct.unpack_from("<Q", self._memory, at)[0]
                if generation:
                    candidates.append((generation, at))
            if not candidates:
                return None
            for generation, at in sorted(candidates, reverse=True):
                _, checker, length, checksum = BUFFER.unpack_from(self._memory, at)
                if length > SNAPSHOT_CAPACITY:
                    continue
                start = at + BUFFER.size
                content = self._memory[start : start + length]
                unchanged = struct.unpack_from("<Q", self._memory, at)[0] == generation
                if unchanged and zlib.crc32(content) == checksum:
                    return generation, checker, content
        return None
