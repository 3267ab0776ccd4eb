"""CPU quotas read from cgroup v1 and v2 files laid out as the kernel shows them."""

import os
from pathlib import Path

import pytest

from petsage.config import default_worker_count, worker_count
from petsage.cpu_quota import cgroup_cpu_quota, usable_cpus

AFFINITY = len(os.sched_getaffinity(0))


def mountinfo_line(mount_point: Path, filesystem: str, options: str) -> str:
    """A /proc/self/mountinfo line for a cgroup filesystem at ``mount_point``."""
    escaped = str(mount_point).replace(" ", "\\040")
    return (
        f"32 31 0:29 / {escaped} rw,relatime shared:9 - {filesystem} cgroup {options}"
    )


def fake_proc(tmp_path: Path, cgroup: str, mounts: list[str]) -> Path:
    """A /proc whose self/cgroup is ``cgroup`` and self/mountinfo holds ``mounts``."""
    proc = tmp_path / "proc"
    (proc / "self").mkdir(parents=True)
    (proc / "self" / "cgroup").write_text(cgroup)
    (proc / "self" / "mountinfo").write_text(
        "22 1 8:1 / / rw,relatime - ext4 /dev/sda1 rw\n" + "\n".join(mounts) + "\n"
    )
    return proc


def write(directory: Path, **files: str) -> None:
    """Create ``directory`` with ``files`` (dots in names written as underscores)."""
    directory.mkdir(parents=True, exist_ok=True)
    for name, content in files.items():
        (directory / name.replace("_", ".", 1)).write_text(content + "\n")


class TestCgroupV2:
    def test_cpu_max_of_the_process_cgroup(self, tmp_path: Path) -> None:
        root = tmp_path / "cgroup2"
        write(root / "app", cpu_max="50000 100000")
        proc = fake_proc(
            tmp_path, "0::/app\n", [mountinfo_line(root, "cgroup2", "rw,nsdelegate")]
        )
        quota = cgroup_cpu_quota(proc)
        assert quota is not None
        assert (quota.cpus, quota.whole_cpus) == (0.5, 1)
        assert quota.source == f"cgroup v2 cpu.max 50000 100000 in {root / 'app'}"

    def test_max_means_no_quota(self, tmp_path: Path) -> None:
        root = tmp_path / "cgroup2"
        write(root / "app", cpu_max="max 100000")
        proc = fake_proc(tmp_path, "0::/app\n", [mountinfo_line(root, "cgroup2", "rw")])
        assert cgroup_cpu_quota(proc) is None

    def test_the_smallest_quota_of_the_ancestors_wins(self, tmp_path: Path) -> None:
        root = tmp_path / "cgroup 2"  # a blank, escaped in mountinfo
        pod = root / "kubepods" / "pod1"
        write(root / "kubepods", cpu_max="max 100000")
        write(pod, cpu_max="150000 100000")
        write(pod / "app", cpu_max="400000 100000")
        proc = fake_proc(
            tmp_path,
            "0::/kubepods/pod1/app\n",
            [mountinfo_line(root, "cgroup2", "rw")],
        )
        quota = cgroup_cpu_quota(proc)
        assert quota is not None
        assert (quota.cpus, quota.whole_cpus) == (1.5, 2)
        assert quota.source.endswith(f"in {pod}")

    def test_a_level_without_the_cpu_controller_sets_no_limit(
        self, tmp_path: Path
    ) -> None:
        root = tmp_path / "cgroup2"
        (root / "app").mkdir(parents=True)
        proc = fake_proc(tmp_path, "0::/app\n", [mountinfo_line(root, "cgroup2", "rw")])
        assert cgroup_cpu_quota(proc) is None


class TestCgroupV1:
    def test_cfs_quota_and_period(self, tmp_path: Path) -> None:
        mount = tmp_path / "cpu,cpuacct"
        write(
            mount / "docker" / "abc",
            cpu_cfs_quota_us="50000",
            cpu_cfs_period_us="100000",
        )
        proc = fake_proc(
            tmp_path,
            "5:memory:/docker/abc\n4:cpu,cpuacct:/docker/abc\n3:cpuset:/\n0::/\n",
            [
                mountinfo_line(mount, "cgroup", "rw,cpu,cpuacct"),
                mountinfo_line(tmp_path / "memory", "cgroup", "rw,memory"),
            ],
        )
        quota = cgroup_cpu_quota(proc)
        assert quota is not None
        assert (quota.cpus, quota.whole_cpus) == (0.5, 1)
        assert quota.source == (
            "cgroup v1 cpu.cfs_quota_us 50000 / cpu.cfs_period_us 100000"
            f" in {mount / 'docker' / 'abc'}"
        )

    def test_minus_one_means_no_quota(self, tmp_path: Path) -> None:
        mount = tmp_path / "cpu"
        write(mount / "app", cpu_cfs_quota_us="-1", cpu_cfs_period_us="100000")
        proc = fake_proc(
            tmp_path, "1:cpu:/app\n", [mountinfo_line(mount, "cgroup", "rw,cpu")]
        )
        assert cgroup_cpu_quota(proc) is None

    def test_a_parent_quota_limits_a_child_without_one(self, tmp_path: Path) -> None:
        mount = tmp_path / "cpu"
        write(mount / "slice", cpu_cfs_quota_us="200000", cpu_cfs_period_us="100000")
        write(
            mount / "slice" / "app", cpu_cfs_quota_us="-1", cpu_cfs_period_us="100000"
        )
        proc = fake_proc(
            tmp_path, "1:cpu:/slice/app\n", [mountinfo_line(mount, "cgroup", "rw,cpu")]
        )
        quota = cgroup_cpu_quota(proc)
        assert quota is not None
        assert quota.cpus == 2.0

    def test_a_hybrid_host_reads_the_v1_cpu_hierarchy(self, tmp_path: Path) -> None:
        mount, unified = tmp_path / "cpu", tmp_path / "unified"
        write(mount / "app", cpu_cfs_quota_us="100000", cpu_cfs_period_us="100000")
        write(unified / "app")
        proc = fake_proc(
            tmp_path,
            "1:cpu:/app\n0::/app\n",
            [
                mountinfo_line(unified, "cgroup2", "rw"),
                mountinfo_line(mount, "cgroup", "rw,cpu"),
            ],
        )
        quota = cgroup_cpu_quota(proc)
        assert quota is not None
        assert quota.source.startswith("cgroup v1")


class TestUsableCpus:
    def test_without_cgroup_files_the_affinity_counts(self, tmp_path: Path) -> None:
        assert usable_cpus(tmp_path) == (AFFINITY, "CPU affinity; no cgroup CPU quota")

    def test_a_quota_above_the_affinity_changes_nothing(self, tmp_path: Path) -> None:
        root = tmp_path / "cgroup2"
        write(root / "app", cpu_max=f"{(AFFINITY + 1) * 100000} 100000")
        proc = fake_proc(tmp_path, "0::/app\n", [mountinfo_line(root, "cgroup2", "rw")])
        assert usable_cpus(proc) == (
            AFFINITY,
            f"CPU affinity; a cgroup quota of {AFFINITY + 1} CPUs is no lower",
        )

    def test_a_half_cpu_quota_counts_as_one_cpu(self, tmp_path: Path) -> None:
        root = tmp_path / "cgroup2"
        write(root / "app", cpu_max="50000 100000")
        proc = fake_proc(tmp_path, "0::/app\n", [mountinfo_line(root, "cgroup2", "rw")])
        assert usable_cpus(proc)[0] == 1


class TestWorkerCount:
    def test_the_default_is_two_per_usable_cpu_plus_one(self) -> None:
        cpus, source = usable_cpus()
        s = "" if cpus == 1 else "s"
        assert default_worker_count() == (
            2 * cpus + 1,
            f"2 x {cpus} CPU{s} ({source}) + 1",
        )

    def test_the_default_is_logged_with_its_reason(self) -> None:
        workers, reason = default_worker_count()
        assert worker_count({}, workers) == (workers, f"{workers} workers: {reason}")

    def test_petsage_workers_wins(self) -> None:
        assert worker_count({"PETSAGE_WORKERS": "1"}, 1) == (
            1,
            "1 worker: set by PETSAGE_WORKERS",
        )

    @pytest.mark.parametrize("environ", [{}, {"PETSAGE_WORKERS": "7"}])
    def test_a_count_from_gunicorns_own_option_is_named(
        self, environ: dict[str, str]
    ) -> None:
        running = default_worker_count()[0] + 8
        assert worker_count(environ, running) == (
            running,
            f"{running} workers: set by gunicorn's --workers option",
        )
