"""Metrics storage (petsage/metrics/storage.py) on its own: the fold of dead workers'
files into the archive, the lock between fold and scrape, and allocation up front."""

import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from prometheus_client.mmap_dict import MmapedDict, mmap_key
from prometheus_client.multiprocess import MultiProcessCollector

from petsage.metrics.storage import (
    WorkerRetirement,
    directory_lock,
    fold_into_archive,
    shared_exposition,
)
from tests.support.metrics_files import metric_files, samples
from tests.support.mounts import mounted


def worker_file(directory: Path, kind: str, pid: int, values: dict[str, float]) -> None:
    """Write a worker's ``kind`` file as prometheus_client does, with one sample per
    route of ``values``."""
    stored = MmapedDict(str(directory / f"{kind}_{pid}.db"))  # type: ignore[no-untyped-call]
    for route, value in values.items():
        if kind == "counter":
            key = mmap_key(
                "requests", "requests_total", ["route"], [route], "Requests."
            )
        else:
            key = mmap_key(
                "duration", "duration_bucket", ["le", "route"], ["1.0", route], "D."
            )
        stored.write_value(key, value, 0.0)  # type: ignore[no-untyped-call]
    stored.close()  # type: ignore[no-untyped-call]


def totals(directory: Path) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """What a scrape of ``directory`` shows: every sample, summed over its files."""
    collector = MultiProcessCollector(None, path=str(directory))  # type: ignore[no-untyped-call]
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for metric in collector.collect()  # type: ignore[no-untyped-call]
        for sample in metric.samples
    }


class TestFold:
    def test_a_dead_workers_counts_move_to_the_archive(self, tmp_path: Path) -> None:
        worker_file(tmp_path, "counter", 11, {"/a": 3, "/b": 1})
        worker_file(tmp_path, "histogram", 11, {"/a": 3})
        worker_file(tmp_path, "counter", 12, {"/a": 5})
        worker_file(tmp_path, "histogram", 12, {"/a": 5})
        shown = totals(tmp_path)
        fold_into_archive(str(tmp_path), 11)
        assert totals(tmp_path) == shown
        fold_into_archive(str(tmp_path), 12)
        assert totals(tmp_path) == shown
        assert [path.name for path in metric_files(tmp_path)] == [
            "counter_archive.db",
            "histogram_archive.db",
        ]
        assert sorted(tmp_path.iterdir()) == metric_files(tmp_path)  # nothing else
        assert shown[("requests_total", (("route", "/a"),))] == 8

    def test_a_fold_that_fails_keeps_the_archive_and_the_files(
        self, tmp_path: Path
    ) -> None:
        worker_file(tmp_path, "histogram", 11, {"/a": 3})
        fold_into_archive(str(tmp_path), 11)
        archive = (tmp_path / "histogram_archive.db").read_bytes()
        worker_file(tmp_path, "histogram", 12, {"/a": 5, "/b": 1})
        damaged = tmp_path / "histogram_12.db"
        data = bytearray(damaged.read_bytes())
        data[8:12] = (1 << 30).to_bytes(4, "little")  # a key longer than the file
        damaged.write_bytes(bytes(data))
        with pytest.raises(RuntimeError):
            fold_into_archive(str(tmp_path), 12)
        assert (tmp_path / "histogram_archive.db").read_bytes() == archive
        assert damaged.read_bytes() == data
        assert sorted(path.name for path in tmp_path.iterdir()) == [
            "histogram_12.db",
            "histogram_archive.db",
        ]

    def test_a_scrape_never_sees_a_fold_half_done(self, tmp_path: Path) -> None:
        dead = range(1000, 1040)
        for pid in dead:
            worker_file(tmp_path, "counter", pid, {"/a": 1})
        retirement = WorkerRetirement()
        # Each fold starts only once a scrape has ended since the last, and scrapes go
        # on while it runs: scrapes and folds interleave however loaded the machine.
        scraped = threading.Event()

        def retire_all() -> None:
            for pid in dead:
                assert scraped.wait(60), "no scrape"
                scraped.clear()
                retirement.retire(str(tmp_path), pid)

        folding = threading.Thread(target=retire_all)
        seen = []
        folding.start()
        while folding.is_alive():
            text = shared_exposition(str(tmp_path))
            seen.append(samples(text)[("requests_total", "/a")])
            scraped.set()
        folding.join()
        assert len(seen) >= len(dead)
        assert set(seen) == {len(dead)}
        assert retirement.unfolded == set()
        assert [path.name for path in metric_files(tmp_path)] == ["counter_archive.db"]

    def test_a_fold_that_cannot_start_is_retried_with_the_next(
        self, tmp_path: Path
    ) -> None:
        # Beyond any pid_max: no process runs with these pids.
        first, second = 10_000_001, 10_000_002
        worker_file(tmp_path, "counter", first, {"/a": 3})
        retirement = WorkerRetirement()
        with directory_lock(str(tmp_path), exclusive=False, timeout=1):  # a scrape
            retirement.retire(str(tmp_path), first)
        assert retirement.unfolded == {first}
        assert (tmp_path / f"counter_{first}.db").exists()  # still counted
        worker_file(tmp_path, "counter", second, {"/a": 5})
        retirement.retire(str(tmp_path), second)
        assert retirement.unfolded == set()
        assert [path.name for path in metric_files(tmp_path)] == ["counter_archive.db"]
        assert totals(tmp_path) == {("requests_total", (("route", "/a"),)): 8}

    def test_a_fold_waits_for_a_scrape_in_progress(self, tmp_path: Path) -> None:
        with directory_lock(str(tmp_path), exclusive=False, timeout=1):
            with (
                pytest.raises(TimeoutError),
                directory_lock(str(tmp_path), exclusive=True, timeout=0.1),
            ):
                pass
            with directory_lock(str(tmp_path), exclusive=False, timeout=0.1):
                pass  # scrapes share it


FILL_THE_FILE = """
import sys
from prometheus_client.mmap_dict import MmapedDict
from petsage.metrics.storage import AllocatedMmapedDict
kind = {"library": MmapedDict, "petsage": AllocatedMmapedDict}[sys.argv[1]]
try:
    stored = kind(sys.argv[2])
    for index in range(1000):  # 124 bytes each: past the filesystem's 8 KiB
        stored.write_value(f"key {index:0100}", 1.0, 0.0)
except OSError as error:
    sys.exit(f"OSError {error.errno}")
"""


class TestAllocation:
    # 8 KiB: the file's first 64 KiB do not fit; 100 KiB: they do, its growth does not.
    @pytest.mark.parametrize("size", ["8k", "100k"])
    def test_a_full_filesystem_raises_an_error_instead_of_sigbus(
        self, tmp_path: Path, size: str
    ) -> None:
        with mounted("-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(tmp_path)):

            def fill(kind: str) -> subprocess.CompletedProcess[str]:
                return subprocess.run(
                    [sys.executable, "-c", FILL_THE_FILE, kind, str(tmp_path / kind)],
                    capture_output=True,
                    text=True,
                    check=False,
                )

            assert fill("library").returncode == -signal.SIGBUS
            (tmp_path / "library").unlink()  # its pages back the next file's
            refused = fill("petsage")
            assert refused.returncode == 1
            assert refused.stderr.strip() == "OSError 28"  # ENOSPC
            made = tmp_path / "petsage"
            # Either nothing half made is left, or the file as it was before growing.
            assert not made.exists() if size == "8k" else made.stat().st_size == 65536
