"""A memory cgroup of a test's own, under the one the test runs in, and a process
that fills it until the kernel's OOM killer acts: memory pressure on an instance.

cgroup v2 (``memory.max``) where its hierarchy has the memory controller, else v1's
memory controller (``memory.limit_in_bytes``). Making one needs root; where none can
be made, ``memory_cgroup`` says why, for the test to skip.
"""

import contextlib
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

# What each version calls the files a test uses.
FILES = {
    2: {"limit": "memory.max", "usage": "memory.current", "events": "memory.events"},
    1: {
        "limit": "memory.limit_in_bytes",
        "usage": "memory.usage_in_bytes",
        "events": "memory.oom_control",
    },
}
UNLIMITED = {2: "max", 1: "-1"}

# Allocates 1 MiB at a time, each page written, until the cgroup's OOM kill count
# grows; then says how many it took and holds them until its stdin closes. Small (a
# Python interpreter's start), it is the OOM killer's last choice: it could protect
# itself (oom_score_adj -1000) only with CAP_SYS_RESOURCE, which containers lack.
FILLER = """
import sys
from pathlib import Path
events, before = Path(sys.argv[1]), int(sys.argv[2])
def kills():
    lines = events.read_text().splitlines()
    return int(next(l.split()[1] for l in lines if l.startswith("oom_kill ")))
held = []
while kills() == before:
    held.append(bytearray(b"x" * (1 << 20)))
print(len(held), flush=True)
sys.stdin.read()
"""


@dataclass(frozen=True)
class MemoryCgroup:
    """A memory cgroup the test made; ``join`` moves the calling process into it."""

    path: Path
    version: int

    def file(self, name: str) -> Path:
        """The cgroup's file for ``name`` (limit, usage, events)."""
        return self.path / FILES[self.version][name]

    def join(self) -> None:
        """Move the calling process into the cgroup (for ``preexec_fn``)."""
        (self.path / "cgroup.procs").write_text("0")

    def usage(self) -> int:
        """The bytes charged to it now."""
        return int(self.file("usage").read_text())

    def limit(self, size: int | None) -> None:
        """Limit it to ``size`` bytes; None lifts the limit."""
        value = UNLIMITED[self.version] if size is None else str(size)
        self.file("limit").write_text(value)

    def oom_kills(self) -> int:
        """How many processes the OOM killer has killed in it."""
        for line in self.file("events").read_text().splitlines():
            if line.startswith("oom_kill "):
                return int(line.split()[1])
        raise AssertionError(f"no oom_kill count in {self.file('events')}")

    @contextlib.contextmanager
    def filled(self) -> Iterator[int]:
        """Fill it until the OOM killer kills one of its processes; yield the MiB
        the filler took meanwhile, then free them."""
        with subprocess.Popen(
            [
                sys.executable,
                "-c",
                FILLER,
                str(self.file("events")),
                str(self.oom_kills()),
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            preexec_fn=self.join,
        ) as filler:
            assert filler.stdout is not None and filler.stdin is not None
            try:
                yield int(filler.stdout.readline())
            finally:
                filler.stdin.close()
                filler.wait(30)


def mounts() -> Iterator[tuple[str, Path, str]]:
    """Each cgroup file system mounted here: its type, mount point, options."""
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        fields, _, system = line.partition(" - ")
        kind, _, options = system.split()
        if kind in ("cgroup", "cgroup2"):
            yield kind, Path(fields.split()[4]), options


def own_cgroup(version: int) -> str:
    """The path of the calling process's cgroup in the hierarchy of ``version``
    (v1: its memory controller's)."""
    for line in Path("/proc/self/cgroup").read_text().splitlines():
        _, controllers, path = line.split(":", 2)
        if (version == 2 and controllers == "") or (
            version == 1 and "memory" in controllers.split(",")
        ):
            return path
    raise LookupError(f"not in a cgroup v{version} memory hierarchy")


def memory_cgroup(name: str) -> MemoryCgroup | str:
    """A new memory cgroup ``name`` under this process's own, or why none can be
    made here."""
    if os.geteuid() != 0:
        return "making a memory cgroup needs root"
    found = []
    for kind, mount, options in mounts():
        if kind == "cgroup2":
            controllers = (mount / "cgroup.controllers").read_text().split()
            if "memory" in controllers:
                found.append((2, mount))
        elif "memory" in options.split(","):
            found.append((1, mount))
    for version, mount in sorted(found, reverse=True):
        path = mount / own_cgroup(version).lstrip("/") / name
        try:
            path.mkdir()
        except OSError as error:
            return f"cannot make {path}: {error.strerror}"
        cgroup = MemoryCgroup(path, version)
        if not cgroup.file("limit").exists():
            remove(cgroup)
            return f"{path.parent} does not give its children the memory controller"
        return cgroup
    return "no cgroup hierarchy here has the memory controller"


def remove(cgroup: MemoryCgroup) -> None:
    """Remove the cgroup once every process in it has exited."""
    with contextlib.suppress(OSError):
        cgroup.path.rmdir()
