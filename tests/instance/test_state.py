"""petsage/instance/directory.py on its own: what counts as dead, what may be
deleted, and what a master puts back."""

import fcntl
import json
import logging
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from petsage.instance.directory import (
    LOCK,
    RECORD,
    InstanceRecord,
    create_instance,
    live_instances,
    lock_held,
    pid_namespace,
    process_start_time,
    remove_dead_instances,
    running_instances,
)


def dead_pid() -> int:
    """The pid of a process that has exited."""
    finished = subprocess.Popen(["true"])
    finished.wait()
    return finished.pid


def record(directory: Path) -> InstanceRecord:
    """A record of an instance kept in ``directory``."""
    return InstanceRecord(directory.name, 1, 1, str(directory), str(directory / "m"))


@pytest.fixture
def holder(tmp_path: Path) -> Iterator[Path]:
    """An instance directory whose lock another live process holds, as a master
    holds its own for life."""
    directory = tmp_path / "petsage-7-8-9"
    directory.mkdir()
    record(directory).save()
    (directory / LOCK).touch()
    script = (
        "import fcntl, os, sys; fd = os.open(sys.argv[1], os.O_RDWR);"
        " fcntl.flock(fd, fcntl.LOCK_EX); print('held', flush=True); sys.stdin.read()"
    )
    with subprocess.Popen(
        [sys.executable, "-c", script, str(directory / LOCK)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    ) as process:
        try:
            assert process.stdout is not None
            assert process.stdout.readline() == "held\n"
            yield directory
        finally:
            process.kill()


def test_a_directory_whose_lock_nobody_holds_is_removed(
    tmp_path: Path, holder: Path
) -> None:
    dead = tmp_path / "petsage-1-4026531836-5"
    dead.mkdir()
    record(dead).save()
    (dead / LOCK).touch()
    remove_dead_instances(str(tmp_path), None)
    assert not dead.exists()
    assert holder.exists(), "a held lock is a live instance, whatever its pid says"
    assert [r.name for r in running_instances(str(tmp_path))] == [holder.name]


def test_an_instance_runs_while_its_master_does_not_while_its_workers_do(
    tmp_path: Path, holder: Path
) -> None:
    # The lock stays held, as a killed master's workers hold it.
    command = [sys.executable, "-c", "input()"]
    with subprocess.Popen(command, stdin=subprocess.PIPE) as master:
        assert master.stdin is not None
        orphaned = InstanceRecord(
            holder.name,
            master.pid,
            pid_namespace(),
            str(holder),
            str(holder / "m"),
            started=process_start_time(master.pid) or 0,
        )
        orphaned.save()
        assert orphaned.master_alive
        assert [r.name for r in running_instances(str(tmp_path))] == [holder.name]
        master.stdin.close()
        # Exited, and not reaped by its parent (this test): a zombie.
        os.waitid(os.P_PID, master.pid, os.WEXITED | os.WNOWAIT)
        assert not orphaned.master_alive
        assert [r.name for r in live_instances(str(tmp_path))] == [holder.name]
        assert running_instances(str(tmp_path)) == []


def test_a_later_process_given_a_masters_pid_is_not_taken_for_it(
    tmp_path: Path,
) -> None:
    this = process_start_time(os.getpid()) or 0
    directory = str(tmp_path / "petsage-1-2-3")
    record = InstanceRecord(
        "petsage-1-2-3", os.getpid(), pid_namespace(), directory, ""
    )
    assert record.master_alive, "an unknown start time trusts the pid"
    assert replace(record, started=this).master_alive
    assert not replace(record, started=this - 1).master_alive


def test_a_record_keeps_what_a_later_release_adds_out(tmp_path: Path) -> None:
    directory = tmp_path / "petsage-1-2-3"
    directory.mkdir()
    record(directory).save()
    data = json.loads((directory / RECORD).read_text())
    (directory / RECORD).write_text(json.dumps({**data, "later": "field"}))
    assert InstanceRecord.load(str(directory)) == record(directory)


def test_a_directory_without_a_lock_is_left_alone(tmp_path: Path) -> None:
    # Its master is putting its lock back: removing it would remove a live instance.
    repairing = tmp_path / "petsage-1-2-3"
    repairing.mkdir()
    record(repairing).save()
    remove_dead_instances(str(tmp_path), None)
    assert repairing.exists()
    assert lock_held(str(repairing)) is None
    assert running_instances(str(tmp_path)) == []


def test_an_earlier_releases_directory_is_judged_by_its_pid(tmp_path: Path) -> None:
    dead = tmp_path / f"petsage-{dead_pid()}"
    dead.mkdir()
    (dead / RECORD).write_text(json.dumps({"pid": int(dead.name[8:]), "started": 1}))
    (dead / "drain").write_text("manual\n")
    (dead / "health.json").write_text("{}")
    mine = tmp_path / f"petsage-{os.getpid()}"
    mine.mkdir()
    started = int(Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()[19])
    (mine / RECORD).write_text(json.dumps({"pid": os.getpid(), "started": started}))
    remove_dead_instances(str(tmp_path), None)
    assert not dead.exists()
    assert mine.exists()


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


def test_a_record_is_named_by_pid_address_or_port() -> None:
    named = InstanceRecord(
        "petsage-4242-1-2",
        4242,
        1,
        "/d",
        "/d/m",
        binds=("127.0.0.1:8000", "unix:/run/p.sock"),
    )
    for name in ("4242", "127.0.0.1:8000", "8000", "unix:/run/p.sock"):
        assert named.matches(name), name
    for name in ("8001", "127.0.0.1:80", "42", "unix:/run/other.sock"):
        assert not named.matches(name), name


class TestRepair:
    """A master puts back what vanished of its directory."""

    @pytest.fixture
    def directory(self, tmp_path: Path) -> Path:
        return tmp_path / "petsage-1-2-3"

    def test_a_deleted_directory_comes_back_locked_with_its_record(
        self, tmp_path: Path, directory: Path
    ) -> None:
        instance = create_instance(
            str(tmp_path), directory.name, None, str(directory / "metrics")
        )
        shutil.rmtree(directory)
        assert running_instances(str(tmp_path)) == []
        instance.repair()
        assert lock_held(str(directory)) is True
        assert InstanceRecord.load(str(directory)) == instance.record
        assert (directory / "metrics").is_dir()
        assert [r.name for r in running_instances(str(tmp_path))] == [directory.name]

    def test_a_deleted_lock_comes_back_held(
        self, tmp_path: Path, directory: Path
    ) -> None:
        instance = create_instance(
            str(tmp_path), directory.name, None, str(directory / "metrics")
        )
        (directory / LOCK).unlink()
        instance.repair()
        descriptor = os.open(directory / LOCK, os.O_RDONLY)
        try:
            with pytest.raises(BlockingIOError):
                fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        finally:
            os.close(descriptor)

    def test_a_record_that_could_not_be_written_is_written_later(
        self, tmp_path: Path, directory: Path, caplog: pytest.LogCaptureFixture
    ) -> None:
        instance = create_instance(
            str(tmp_path), directory.name, None, str(directory / "metrics")
        )
        caplog.set_level(logging.INFO)
        # A directory where the record's temporary file goes: no write can succeed,
        # whoever writes (root ignores a read-only mode).
        blocker = directory / (RECORD + ".new")
        blocker.mkdir()
        instance.mark_listening(["127.0.0.1:8000"])
        for _ in range(3):
            instance.repair()
        blocker.rmdir()
        problems = [r for r in caplog.records if "cannot keep" in r.getMessage()]
        assert len(problems) == 1, "a problem is logged once"
        instance.repair()
        assert InstanceRecord.load(str(directory)).binds == ("127.0.0.1:8000",)
        assert "can be written again" in caplog.text


def test_a_directory_another_user_planted_is_never_acted_on(
    tmp_path: Path, holder: Path
) -> None:
    if os.geteuid() != 0:
        pytest.skip("giving a directory to another user needs root")
    # The default state directory, /dev/shm, is writable by every user: one could
    # plant a record naming a live process and holding a lock.
    planted = InstanceRecord(
        holder.name, os.getpid(), pid_namespace(), str(holder), str(holder / "m")
    )
    planted.save()
    assert [r.name for r in running_instances(str(tmp_path))] == [holder.name]
    os.chown(holder, 65534, 65534)  # nobody's, its "master" (this test) root's
    assert lock_held(str(holder)) is True
    assert running_instances(str(tmp_path)) == []
