"""petsage/instance.py on its own: what counts as dead, what may be deleted."""

import os
import subprocess
from pathlib import Path

from petsage.instance import InstanceRecord, remove_dead_instances


def dead_pid() -> int:
    """The pid of a process that has exited."""
    finished = subprocess.Popen(["true"])
    finished.wait()
    return finished.pid


def test_an_earlier_releases_metrics_directory_is_removed_once_nobody_writes_it(
    tmp_path: Path,
) -> None:
    dead, live, foreign = (
        tmp_path / "petsage-metrics-abcd1234",
        tmp_path / "petsage-metrics-live0000",
        tmp_path / "petsage-metrics-other000",
    )
    for directory in (dead, live, foreign):
        directory.mkdir()
    (dead / f"counter_{dead_pid()}.db").write_bytes(b"\0" * 8)
    (dead / f"gauge_livesum_{dead_pid()}.db").write_bytes(b"\0" * 8)
    (live / f"counter_{os.getpid()}.db").write_bytes(b"\0" * 8)
    (foreign / "inventory.db").write_bytes(b"SQLite")
    remove_dead_instances(str(tmp_path), None)
    assert not dead.exists()
    assert live.exists()
    assert (foreign / "inventory.db").exists()


def test_a_dead_masters_directory_is_removed_a_live_ones_kept(tmp_path: Path) -> None:
    pid = dead_pid()
    dead = tmp_path / f"petsage-{pid}"
    dead.mkdir()
    InstanceRecord(pid, 1, str(dead), str(dead / "drain"), str(dead / "m")).save()
    (dead / "drain").write_text("manual\n")
    live = tmp_path / "petsage-1"  # init: alive, but its start time differs
    live.mkdir()
    InstanceRecord(1, 0, str(live), str(live / "drain"), str(live / "m")).save()
    mine = tmp_path / f"petsage-{os.getpid()}"
    mine.mkdir()
    started = int(Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()[19])
    InstanceRecord(os.getpid(), started, str(mine), "", "").save()
    remove_dead_instances(str(tmp_path), None)
    assert not dead.exists()
    assert not live.exists(), "a pid reused by another process is not the master"
    assert mine.exists()


def test_a_record_is_named_by_pid_address_or_port() -> None:
    record = InstanceRecord(
        4242, 1, "/d", "/d/drain", "/d/m", ("127.0.0.1:8000", "unix:/run/p.sock")
    )
    for name in ("4242", "127.0.0.1:8000", "8000", "unix:/run/p.sock"):
        assert record.matches(name), name
    for name in ("8001", "127.0.0.1:80", "42", "unix:/run/other.sock"):
        assert not record.matches(name), name
