"""What multiprocess metrics leave out: the instance's processes, restarts, versions.

prometheus_client's process and platform collectors describe the process they run in,
and its multiprocess mode leaves them out, since a scrape answered by one worker would
report that worker as the whole instance. Here the worker that answers a scrape reads
``/proc`` for every process of its instance (the gunicorn master and its workers) at
that moment: one series per process, labelled ``pid`` and ``role``, so an operator
sums them per instance or looks at one worker. The master counts its workers' exits
in a file of the instance's metrics directory, where any worker's scrape reads it.
"""

import contextlib
import logging
import os
from collections.abc import Callable, Iterable, Iterator
from functools import partial
from importlib import metadata

from prometheus_client.metrics_core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    Metric,
)
from prometheus_client.platform_collector import PlatformCollector
from prometheus_client.process_collector import ProcessCollector
from prometheus_client.registry import Collector

logger = logging.getLogger(__name__)

PROC = "/proc"


def under_gunicorn() -> int | None:
    """The gunicorn master of this worker, or None outside gunicorn.

    ``gunicorn.conf.py`` sets PROMETHEUS_MULTIPROC_DIR in the master, before it forks
    the workers: with it set, the parent of this process is the instance's master.
    """
    return os.getppid() if "PROMETHEUS_MULTIPROC_DIR" in os.environ else None


def children_of(pid: int) -> list[int]:
    """The processes whose parent is ``pid`` (its workers, for a gunicorn master).

    The kernel lists each thread's children in ``task/*/children``; a kernel built
    without that list is answered by reading every process's parent instead. During a
    SIGUSR2 upgrade the new master is a child of the old one, and is listed too.
    """
    try:
        tasks = os.listdir(f"{PROC}/{pid}/task")
    except OSError:
        return []
    children: list[int] = []
    for task in tasks:
        try:
            with open(f"{PROC}/{pid}/task/{task}/children") as listed:
                children.extend(int(child) for child in listed.read().split())
        except FileNotFoundError:
            if not os.path.exists(f"{PROC}/{pid}/task/{task}"):
                continue  # the thread ended meanwhile
            return sorted(scan_children(pid))
        except OSError:
            continue
    return sorted(children)


def scan_children(parent: int) -> Iterator[int]:
    """Every process whose parent is ``parent``, found by reading each one's stat."""
    for entry in os.listdir(PROC):
        if not entry.isdigit():
            continue
        with contextlib.suppress(OSError), open(f"{PROC}/{entry}/stat", "rb") as stat:
            # The parent pid is the second field after the command's closing ")".
            if int(stat.read().rsplit(b")", 1)[1].split()[1]) == parent:
                yield int(entry)


# What the command line of the instance's checker process holds (started with exec
# by petsage.serving.supervisor).
CHECKER_COMMAND = b"petsage.serving.checker"


def role_of(pid: int) -> str:
    """A child of the master: its ``checker`` process, or a ``worker``."""
    with contextlib.suppress(OSError), open(f"{PROC}/{pid}/cmdline", "rb") as command:
        if CHECKER_COMMAND in command.read():
            return "checker"
    return "worker"


def instance_processes(master: int | None) -> list[tuple[str, int]]:
    """(role, pid) of every process of the instance; this process alone without one."""
    if master is None:
        return [("process", os.getpid())]
    return [("master", master), *((role_of(pid), pid) for pid in children_of(master))]


class InstanceProcessCollector(Collector):
    """``process_*`` for every process of the instance, read from /proc when scraped.

    prometheus_client's ProcessCollector reads one process; its families are merged
    here, each sample labelled with its process's ``pid`` and ``role`` (``master``,
    ``worker``, ``checker``, or ``process`` outside gunicorn). A process that exits
    meanwhile is left out.
    """

    def __init__(self, master: Callable[[], int | None] = under_gunicorn) -> None:
        self.master = master

    def collect(self) -> Iterable[Metric]:
        """Resident and virtual memory, CPU seconds, start time, open and maximum
        file descriptors of each process."""
        families: dict[str, Metric] = {}
        for role, pid in instance_processes(self.master()):
            reader = ProcessCollector(pid=partial(int, pid), proc=PROC, registry=None)
            for family in reader.collect():
                merged = families.get(family.name)
                if merged is None:
                    merged = Metric(family.name, family.documentation, family.type)
                    families[family.name] = merged
                for sample in family.samples:
                    labels = {**sample.labels, "pid": str(pid), "role": role}
                    merged.add_sample(sample.name, labels, sample.value)
        return list(families.values())


class RuntimeCollector(Collector):
    """``python_info`` and ``petsage_gunicorn_info``: the versions this runs on."""

    def __init__(self) -> None:
        self.python = PlatformCollector(registry=None)
        try:
            gunicorn_version: str | None = metadata.version("gunicorn")
        except metadata.PackageNotFoundError:
            gunicorn_version = None
        self.gunicorn_version = gunicorn_version

    def collect(self) -> Iterable[Metric]:
        """Both info gauges; the gunicorn one only where gunicorn is installed."""
        families = list(self.python.collect())
        if self.gunicorn_version is not None:
            gunicorn = GaugeMetricFamily(
                "petsage_gunicorn_info",
                "The gunicorn serving PetSage: always 1, labelled with its version.",
                labels=["version"],
            )
            gunicorn.add_metric([self.gunicorn_version], 1)
            families.append(gunicorn)
        return families


# The master's count of worker exits, in the instance's metrics directory: a file of
# its own, not a prometheus_client file, whose names mean one file set per worker.
RESTARTS_FILE = "worker_restarts"


class WorkerRestarts:
    """The gunicorn master's count of its workers' exits.

    The master writes the count to ``worker_restarts`` in the instance's metrics
    directory (written beside it and renamed over it, so that a scrape never reads
    half a number), and a worker answering a scrape reads it there
    (WorkerRestartsCollector). A failure to write (storage full, read-only, gone) is
    logged once; the count goes on in memory and is written again at the next exit.
    """

    def __init__(self) -> None:
        self.exits = 0
        self.failure_logged = False

    def start(self) -> None:
        """Write the count, 0 so far, once the directory exists (``when_ready``)."""
        self.write()

    def count(self) -> None:
        """Count one worker's exit."""
        self.exits += 1
        self.write()

    def write(self) -> None:
        """Write the count where scrapes read it (nothing outside gunicorn)."""
        directory = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
        if not directory:
            return
        path = os.path.join(directory, RESTARTS_FILE)
        try:
            with open(path + ".new", "w") as new:
                new.write(f"{self.exits}\n")
            os.replace(path + ".new", path)
        except OSError as error:
            if not self.failure_logged:
                self.failure_logged = True
                logger.error(
                    "Cannot write the worker restart count to %s (%s: %s);"
                    " petsage_worker_restarts_total is missing from /metrics until"
                    " a later write succeeds",
                    path,
                    type(error).__name__,
                    error,
                )


WORKER_RESTARTS = WorkerRestarts()


class WorkerRestartsCollector(Collector):
    """``petsage_worker_restarts_total``, as the instance's master last wrote it."""

    def collect(self) -> Iterable[Metric]:
        """The count; nothing outside gunicorn or while it cannot be read."""
        directory = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
        if not directory:
            return []
        try:
            with open(os.path.join(directory, RESTARTS_FILE)) as written:
                exits = int(written.read())
        except (OSError, ValueError):
            return []
        return [
            CounterMetricFamily(
                "petsage_worker_restarts",
                "gunicorn workers of this instance that exited and were replaced"
                " (a crash, a timeout, a memory kill, max_requests, a reload),"
                " counted by its master.",
                value=exits,
            )
        ]
