"""How many CPUs this process may use: its CPU affinity, capped by a cgroup CPU quota.

A container's CPU limit (``docker run --cpus``, a Kubernetes ``limits.cpu``) is a CFS
quota on its cgroup, not fewer cores in its affinity: counting cores alone starts as
many workers as the node has, whatever the limit. The quota of every cgroup from the
process's own up to the top of the hierarchy applies, so the smallest one wins.
"""

import os
from dataclasses import dataclass
from pathlib import Path

PROC = Path("/proc")


@dataclass(frozen=True)
class CpuQuota:
    """A cgroup CPU quota: ``quota`` microseconds of CPU time per ``period``."""

    quota: int
    period: int
    # Where it was read, e.g. "cgroup v2 cpu.max 50000 100000 in /sys/fs/cgroup/x".
    source: str

    @property
    def cpus(self) -> float:
        """The quota in CPUs, e.g. 0.5."""
        return self.quota / self.period

    @property
    def whole_cpus(self) -> int:
        """The quota rounded up to whole CPUs: half a CPU still runs one worker."""
        return max(1, -(-self.quota // self.period))


def parse_cpu_max(text: str, directory: Path) -> CpuQuota | None:
    """cgroup v2 ``cpu.max``: ``QUOTA PERIOD``, or ``max PERIOD`` for no quota."""
    quota, period = text.split()
    if quota == "max":
        return None
    return CpuQuota(
        int(quota), int(period), f"cgroup v2 cpu.max {quota} {period} in {directory}"
    )


def parse_cfs_quota(
    quota_text: str, period_text: str, directory: Path
) -> CpuQuota | None:
    """cgroup v1 ``cpu.cfs_quota_us`` (-1: no quota) and ``cpu.cfs_period_us``."""
    quota, period = int(quota_text), int(period_text)
    if quota <= 0:
        return None
    return CpuQuota(
        quota,
        period,
        f"cgroup v1 cpu.cfs_quota_us {quota} / cpu.cfs_period_us {period}"
        f" in {directory}",
    )


def read_quota(directory: Path, version: int) -> CpuQuota | None:
    """The quota set on the cgroup at ``directory``, None without one or unreadable."""
    try:
        if version == 2:
            return parse_cpu_max((directory / "cpu.max").read_text(), directory)
        return parse_cfs_quota(
            (directory / "cpu.cfs_quota_us").read_text(),
            (directory / "cpu.cfs_period_us").read_text(),
            directory,
        )
    except (OSError, ValueError):
        # A level without the cpu controller, or a file PetSage cannot read, sets
        # no limit it could know of.
        return None


def unescape_mountinfo(field: str) -> str:
    """A mountinfo path field, its octal escapes (``\\040`` for a blank) decoded."""
    return field.encode().decode("unicode_escape").encode("latin-1").decode()


@dataclass(frozen=True)
class Mount:
    """A cgroup hierarchy's mount: the cgroup path at ``root`` is at ``mount_point``."""

    root: str
    mount_point: Path
    version: int
    # The controllers of a v1 hierarchy; v2 has one hierarchy for all of them.
    controllers: frozenset[str] = frozenset()

    def directory_of(self, cgroup_path: str) -> Path | None:
        """Where the cgroup ``cgroup_path`` is, None when outside this mount."""
        root = self.root.rstrip("/")
        if cgroup_path != self.root and not cgroup_path.startswith(root + "/"):
            return None
        return self.mount_point / cgroup_path[len(root) :].strip("/")


def cgroup_mounts(mountinfo: str) -> list[Mount]:
    """The cgroup mounts listed in ``/proc/self/mountinfo``."""
    mounts = []
    for line in mountinfo.splitlines():
        fields = line.split()
        if "-" not in fields:
            continue
        separator = fields.index("-")
        if separator < 5 or len(fields) < separator + 4:
            continue
        filesystem, options = fields[separator + 1], fields[separator + 3]
        root, mount_point = unescape_mountinfo(fields[3]), unescape_mountinfo(fields[4])
        if filesystem == "cgroup2":
            mounts.append(Mount(root, Path(mount_point), 2))
        elif filesystem == "cgroup":
            controllers = frozenset(options.split(","))
            mounts.append(Mount(root, Path(mount_point), 1, controllers))
    return mounts


def cpu_cgroup(proc: Path = PROC) -> tuple[Path, Mount] | None:
    """The directory of this process's cgroup for the cpu controller, and its mount.

    cgroup v1 when a v1 hierarchy has the cpu controller (also on hybrid hosts, where
    the v2 hierarchy then has none), else cgroup v2.
    """
    try:
        membership = (proc / "self" / "cgroup").read_text()
        mountinfo = (proc / "self" / "mountinfo").read_text()
    except OSError:
        return None
    cgroup_paths: dict[int, str] = {}
    for line in membership.splitlines():
        # hierarchy-ID:controller-list:cgroup-path; v2's is 0 with no controllers.
        hierarchy, _, rest = line.partition(":")
        controllers, _, cgroup_path = rest.partition(":")
        if hierarchy == "0" and not controllers:
            cgroup_paths.setdefault(2, cgroup_path)
        elif "cpu" in controllers.split(","):
            cgroup_paths[1] = cgroup_path
    mounts = cgroup_mounts(mountinfo)
    for version in (1, 2):
        if version not in cgroup_paths:
            continue
        for mount in mounts:
            if mount.version != version or (
                version == 1 and "cpu" not in mount.controllers
            ):
                continue
            directory = mount.directory_of(cgroup_paths[version])
            if directory is not None:
                return directory, mount
    return None


def cgroup_cpu_quota(proc: Path = PROC) -> CpuQuota | None:
    """The smallest CPU quota of this process's cgroup and its ancestors, if any."""
    found = cpu_cgroup(proc)
    if found is None:
        return None
    directory, mount = found
    quotas = []
    while True:
        quota = read_quota(directory, mount.version)
        if quota is not None:
            quotas.append(quota)
        if directory == mount.mount_point or directory == directory.parent:
            break
        directory = directory.parent
    return min(quotas, key=lambda quota: quota.cpus, default=None)


def usable_cpus(proc: Path = PROC) -> tuple[int, str]:
    """Whole CPUs this process may use, and where that number came from."""
    affinity = len(os.sched_getaffinity(0))
    quota = cgroup_cpu_quota(proc)
    if quota is None:
        return affinity, "CPU affinity; no cgroup CPU quota"
    if quota.whole_cpus < affinity:
        return quota.whole_cpus, quota.source
    return affinity, f"CPU affinity; a cgroup quota of {quota.cpus:g} CPUs is no lower"
