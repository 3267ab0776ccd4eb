"""Multiprocess metrics files: they never take serving down, and they stay bounded.

prometheus_client keeps each worker's samples in files it maps into memory (one per
metric kind and worker pid, in PROMETHEUS_MULTIPROC_DIR). Two things go wrong with
them, and this module is where PetSage deals with both:

- The library sizes a file with ``truncate()``, which reserves no space: on a full
  tmpfs the first write to a page the filesystem cannot back raises SIGBUS and kills
  the worker, and every worker gunicorn starts instead dies the same way. Here the
  space is allocated (``posix_fallocate``) before it is mapped, so a full filesystem
  raises OSError; that error, and every other one from the storage (read-only, the
  directory deleted), degrades the worker's metrics instead of failing a request: it
  stops recording, logs one ERROR line, and its ``/metrics`` says
  ``petsage_metrics_degraded 1``.
- A dead worker's counter and histogram files count for as long as the instance runs,
  one set per worker ever started. Here the master folds them into one archive file per
  kind (``counter_archive.db``, ``histogram_archive.db``: the library's own format,
  which the library's collector reads like any worker's file) and deletes them. Scrapes
  hold a shared lock on the directory and the fold an exclusive one, so no scrape sees
  a sample in both places or in neither.

``install()`` is the one place where the library is changed: its value class and the
file class that value class uses.
"""

import contextlib
import fcntl
import functools
import logging
import os
import shutil
import struct
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest, values
from prometheus_client.metrics_core import GaugeMetricFamily, Metric
from prometheus_client.mmap_dict import _INITIAL_MMAP_SIZE, MmapedDict
from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead
from prometheus_client.registry import Collector

logger = logging.getLogger(__name__)

# Kinds whose samples add up across processes, so a dead worker's can be folded into
# one archive; live gauges die with their worker (mark_process_dead).
ARCHIVED_KINDS = ("counter", "histogram", "summary")
ARCHIVE = "archive"
# A file being made, kept out of the collector's ``*.db`` until it is complete.
UNFINISHED = ".new"
# How long a scrape or a fold waits for the other before giving up.
LOCK_TIMEOUT = 5.0
FOLD_LOCK_TIMEOUT = 1.0
# What reading the storage for a scrape can raise: OSError for the filesystem,
# ValueError (the collector's "not a directory", a key that is not JSON) and
# RuntimeError or struct.error for a damaged file.
READ_ERRORS = (OSError, ValueError, RuntimeError, struct.error)
# The library's reader of a whole file: (key, value, timestamp, position) per sample.
read_values: Any = MmapedDict.read_all_values_from_file


class StorageState:
    """Whether this process's metrics storage has failed; says so once when it does.

    One per process. A worker forked from a process whose storage had failed (only
    with ``--preload``) starts failed too.
    """

    def __init__(self) -> None:
        self.failed = False
        self._lock = threading.Lock()

    def fail(self, error: BaseException, during: str) -> None:
        """Stop using the storage; log the first failure, as one ERROR line."""
        with self._lock:
            if self.failed:
                return
            self.failed = True
        logger.error(
            "Metrics storage in %s failed while %s (%s: %s); metrics are degraded in"
            " worker %d: it goes on answering every request and probe but records no"
            " more metrics, and its /metrics reports petsage_metrics_degraded 1",
            os.environ.get("PROMETHEUS_MULTIPROC_DIR"),
            during,
            type(error).__name__,
            error,
            os.getpid(),
        )


STORAGE = StorageState()


def allocate_file(path: str) -> None:
    """Give ``path`` at least the library's initial size, all of it allocated.

    A new file is made under another name and renamed when complete, so that a scrape
    never reads an empty file and a failure leaves nothing behind.
    """
    if os.path.exists(path):
        with open(path, "r+b") as existing:
            size = os.fstat(existing.fileno()).st_size
            os.posix_fallocate(existing.fileno(), 0, max(size, _INITIAL_MMAP_SIZE))
        return
    unfinished = path + UNFINISHED
    try:
        with open(unfinished, "wb") as new:
            os.posix_fallocate(new.fileno(), 0, _INITIAL_MMAP_SIZE)
        os.rename(unfinished, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(unfinished)
        raise


class AllocatedMmapedDict(MmapedDict):
    """prometheus_client's MmapedDict, with its file's space allocated before mapping.

    The library creates the file with ``truncate()`` and doubles it the same way when
    a new key does not fit; both leave the pages unbacked. Here each size is allocated
    first, so that a full filesystem raises OSError (ENOSPC) instead of SIGBUS.
    """

    def __init__(self, filename: str, read_mode: bool = False) -> None:
        if not read_mode:
            allocate_file(filename)
        super().__init__(filename, read_mode)  # type: ignore[no-untyped-call]

    def _init_value(self, key: str) -> None:
        # The library's entry size (length, key padded to 8 bytes, value, timestamp)
        # and growth by doubling: allocate what it is about to map.
        length = len(key.encode("utf-8"))
        entry = 4 + length + (8 - (length + 4) % 8) + 16
        capacity = self._capacity
        while self._used + entry > capacity:
            capacity *= 2
        if capacity > self._capacity:
            os.posix_fallocate(self._f.fileno(), 0, capacity)
        super()._init_value(key)  # type: ignore[no-untyped-call]


class ProcessId:
    """This process's id, renewed in the child of every fork, read without a syscall.

    prometheus_client's multiprocess value asks for the process id at every sample
    (five per request) to notice a fork, which changes the file it must write to;
    ``os.getpid()`` is a system call each time. The id changes only at a fork, so
    here it is read once, and again in each child (``os.register_at_fork``, which
    ``os.fork`` runs, as gunicorn forks its workers).
    """

    def __init__(self) -> None:
        self._pid = [os.getpid()]
        # A read of the list by C code: a fraction of even a Python method call.
        self.get: Callable[[], int] = functools.partial(self._pid.__getitem__, 0)
        os.register_at_fork(after_in_child=self._renew)

    def _renew(self) -> None:
        self._pid[0] = os.getpid()


PROCESS_ID = ProcessId()


def degradable_value_class(storage: StorageState) -> type:
    """The library's multiprocess value, turned off in this process by ``storage``.

    Every storage call a metric makes (its file at creation and at ``.labels()``,
    ``inc``, ``set`` and ``observe`` through them) goes through this class: an OSError
    marks the storage failed, and from then on the calls return at once, a flag check
    and nothing more.
    """
    base: Any = values.MultiProcessValue(PROCESS_ID.get)  # type: ignore[no-untyped-call]

    class DegradableValue(base):  # type: ignore[misc]
        """A float in this worker's metrics file, until the storage fails."""

        def __init__(self, *args: Any, **kwargs: Any) -> None:
            self._value = 0.0
            self._timestamp = 0.0
            if storage.failed:
                return
            try:
                super().__init__(*args, **kwargs)
            except OSError as error:
                storage.fail(error, "creating a metric's file")

        def inc(self, amount: float) -> None:
            if storage.failed:
                return
            try:
                super().inc(amount)
            except OSError as error:
                storage.fail(error, "recording a sample")

        def set(self, value: float, timestamp: float | None = None) -> None:
            if storage.failed:
                return
            try:
                super().set(value, timestamp)
            except OSError as error:
                storage.fail(error, "recording a sample")

        def get(self) -> float:
            if storage.failed:
                return float(self._value)
            try:
                return float(super().get())
            except OSError as error:
                storage.fail(error, "reading a sample")
                return float(self._value)

    return DegradableValue


def install() -> None:
    """Make prometheus_client's multiprocess metrics use this module's storage.

    The library chooses a metric's value class (``values.ValueClass``) when the metric
    is created, and its multiprocess values open their files with ``values.MmapedDict``:
    both are replaced here, once, before PetSage creates any metric.
    """
    values.MmapedDict = AllocatedMmapedDict  # type: ignore[attr-defined]
    values.ValueClass = degradable_value_class(STORAGE)


@contextlib.contextmanager
def values_in_memory() -> Iterator[None]:
    """Metrics made inside keep their values in this process's memory, in no file.

    For a process that builds the application only for what it registers (the
    instance's checker, petsage.serving.checker): its request and build metrics
    would be files of a process that answers no request, and scrapes would sum them.
    """
    chosen = values.ValueClass
    values.ValueClass = values.MutexValue
    try:
        yield
    finally:
        values.ValueClass = chosen


@contextlib.contextmanager
def directory_lock(directory: str, exclusive: bool, timeout: float) -> Iterator[None]:
    """Hold a shared (scrape) or exclusive (fold) lock on ``directory`` itself.

    A lock on the directory, not on a file in it, leaves nothing in the directory to
    clean. It is released when the descriptor closes, also when the process dies.
    TimeoutError (an OSError) when it is not had within ``timeout`` seconds.
    """
    descriptor = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        operation = (fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH) | fcntl.LOCK_NB
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(descriptor, operation)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"{directory} stayed locked") from None
                time.sleep(0.002)
        yield
    finally:
        os.close(descriptor)


class DegradedCollector(Collector):
    """``petsage_metrics_degraded``: whether this worker's metrics storage failed."""

    def collect(self) -> Iterable[Metric]:
        """One sample: 1 when degraded, else 0."""
        yield GaugeMetricFamily(
            "petsage_metrics_degraded",
            "1 when the worker that answered could not use the metrics storage (full,"
            " read-only or gone) and records no more: the other figures may be"
            " incomplete. Else 0.",
            value=1 if STORAGE.failed else 0,
        )


def shared_exposition(directory: str, scrape_time: Iterable[Collector] = ()) -> bytes:
    """Every worker's metrics in the text format, read from ``directory``, and those
    of the ``scrape_time`` collectors, which read no storage.

    The read holds the directory's shared lock, so it never sees a fold half done.
    When the storage cannot be read, the answer is ``petsage_metrics_degraded 1``
    and the ``scrape_time`` collectors' metrics.
    """
    scrape_time = tuple(scrape_time)
    registry = CollectorRegistry()
    registry.register(DegradedCollector())
    for collector in scrape_time:
        registry.register(collector)
    try:
        with directory_lock(directory, exclusive=False, timeout=LOCK_TIMEOUT):
            MultiProcessCollector(registry, path=directory)  # type: ignore[no-untyped-call]
            return generate_latest(registry)
    except READ_ERRORS as error:
        STORAGE.fail(error, "reading the metrics for /metrics")
    degraded = CollectorRegistry()
    degraded.register(DegradedCollector())
    for collector in scrape_time:
        degraded.register(collector)
    return generate_latest(degraded)


def fold_into_archive(directory: str, pid: int) -> None:
    """Add dead worker ``pid``'s counters, histograms and summaries to the archive,
    then delete its files.

    Only the master calls it, holding the directory's exclusive lock, so no scrape sees
    a sample in both places or in neither. Each kind's new archive is made beside the
    old one and renamed over it: when anything fails, the old archive and the worker's
    file stay as they were, and no sample is lost or counted twice.
    """
    for kind in ARCHIVED_KINDS:
        dead = os.path.join(directory, f"{kind}_{pid}.db")
        if not os.path.exists(dead):
            continue
        archive = os.path.join(directory, f"{kind}_{ARCHIVE}.db")
        unfinished = archive + UNFINISHED
        with contextlib.suppress(FileNotFoundError):
            os.unlink(unfinished)  # left by a master killed in the middle of a fold
        try:
            if os.path.exists(archive):
                shutil.copyfile(archive, unfinished)
            merged: Any = AllocatedMmapedDict(unfinished)
            try:
                for key, value, _, _ in read_values(dead):
                    total, _ = merged.read_value(key)
                    merged.write_value(key, total + value, 0.0)
            finally:
                merged.close()
            os.replace(unfinished, archive)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(unfinished)
            raise
        os.unlink(dead)


def process_exists(pid: int) -> bool:
    """Whether a process ``pid`` runs now."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # it runs, as another user
    return True


class WorkerRetirement:
    """The master's bookkeeping of dead workers' metrics files.

    A fold that fails (storage full, a scrape holding the lock too long) is retried
    with the next worker's; meanwhile the dead worker's files stay and still count. A
    retry waits while the pid runs again: a new worker given the same pid writes on in
    the same files, and they are folded when it dies.
    """

    def __init__(self) -> None:
        self.unfolded: set[int] = set()
        self.failure_logged = False

    def retire(self, directory: str, pid: int) -> None:
        """Drop dead worker ``pid``'s live gauges; fold its counts into the archive."""
        if not os.path.isdir(directory):
            # Deleted while running: the workers say so; nothing is left to fold.
            self.unfolded.clear()
            return
        self.unfolded.add(pid)
        try:
            mark_process_dead(pid, directory)  # type: ignore[no-untyped-call]
            with directory_lock(directory, exclusive=True, timeout=FOLD_LOCK_TIMEOUT):
                for dead in sorted(self.unfolded):
                    if dead == pid or not process_exists(dead):
                        fold_into_archive(directory, dead)
                        self.unfolded.discard(dead)
        except READ_ERRORS as error:
            if not self.failure_logged:
                self.failure_logged = True
                logger.error(
                    "Could not fold dead workers' metrics into the archive in %s"
                    " (%s: %s); their files are kept and still counted, and the fold"
                    " is retried when the next worker exits",
                    directory,
                    type(error).__name__,
                    error,
                )


RETIREMENT = WorkerRetirement()
