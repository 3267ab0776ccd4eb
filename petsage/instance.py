"""PetSage instances on one host: each gunicorn master and the state it keeps.

Several instances share a host (systemd templates, blue/green with ``--reuse-port``,
test runs), so nothing an instance keeps may be keyed by a setting's default. Each
master makes a directory of its own in the state directory (PETSAGE_STATE_DIR), named
after its pid, holding:

- ``instance.json``: its pid, its start time, and the addresses gunicorn really bound
  (whichever way they were given: PETSAGE_BIND, ``-b``, GUNICORN_CMD_ARGS, a config
  file), so that ``petsage drain`` and ``petsage probe`` find it;
- ``drain``: the drain marker, unless PETSAGE_DRAIN_FILE names another place;
- ``health.json``: the instance's latest health check results, which every worker
  answers probes from, and ``health.lock``, held by the one worker that runs the
  checks (petsage/health/shared.py);
- ``metrics/``: prometheus_client's multiprocess files, unless PROMETHEUS_MULTIPROC_DIR
  is set, in which case they go to a subdirectory ``petsage-<pid>`` of it.

The master removes all of it when it exits, including after a start that failed. A
master killed with SIGKILL cannot: the next instance to start removes what dead
masters left, and a dead master's marker never steers a live instance, since a new
master never shares a pid-and-start-time with a dead one.
"""

import atexit
import contextlib
import json
import os
import re
from collections.abc import Iterable
from dataclasses import asdict, dataclass, replace
from pathlib import Path

PREFIX = "petsage-"
RECORD = "instance.json"
DRAIN = "drain"
METRICS = "metrics"
HEALTH_SNAPSHOT = "health.json"
HEALTH_LOCK = "health.lock"
# What prometheus_client writes in multiprocess mode (and PetSage's archive of dead
# workers' samples beside it); nothing else is ever deleted from a metrics directory.
# A ``.new`` one is being written (or was, when a SIGKILL came). ``worker_restarts``
# is the master's count of replaced workers (petsage/process_metrics.py).
METRICS_FILE = re.compile(
    r"(?:[a-z]+(?:_[a-z]+)?_(?:\d+|archive)\.db|worker_restarts)(?:\.new)?"
)


def process_start_time(pid: int) -> int | None:
    """When ``pid`` started (clock ticks since boot), or None if it does not exist.

    A pid and its start time name one process for ever; a pid alone is reused.
    """
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name, in parentheses, may hold spaces: the fields follow it.
    return int(stat[stat.rindex(")") + 2 :].split()[19])


@dataclass(frozen=True)
class InstanceRecord:
    """What a master writes about itself, and what the ``petsage`` command reads."""

    pid: int
    started: int
    directory: str
    drain_file: str
    metrics_directory: str
    binds: tuple[str, ...] = ()
    management_bind: str = ""
    # Why the metrics directory could not be made, for the master to log once.
    metrics_problem: str = ""

    @property
    def alive(self) -> bool:
        """Whether the master that wrote this record still runs."""
        return process_start_time(self.pid) == self.started

    @property
    def ready(self) -> bool:
        """Whether the master has bound its addresses (``when_ready`` has run)."""
        return bool(self.binds)

    def describe(self) -> str:
        """``pid 123 (127.0.0.1:8000, unix:/run/petsage.sock)``, for messages."""
        where = ", ".join(self.binds) if self.binds else "starting, not yet listening"
        return f"pid {self.pid} ({where})"

    def matches(self, name: str) -> bool:
        """Whether ``name`` (a pid, HOST:PORT, unix:PATH or a port) names it."""
        name = name.strip()
        if name == str(self.pid):
            return True
        addresses = (*self.binds, self.management_bind)
        if name.isdigit():
            return any(address.rpartition(":")[2] == name for address in addresses)
        return name in addresses

    def save(self) -> None:
        """Write the record atomically, so a reader never sees half of it."""
        path = os.path.join(self.directory, RECORD)
        temporary = path + ".new"
        data = asdict(self)
        data["binds"] = list(self.binds)
        with open(temporary, "w", encoding="utf-8") as out:
            json.dump(data, out)
        os.replace(temporary, path)

    @classmethod
    def load(cls, directory: str) -> "InstanceRecord":
        """Read the record in ``directory``; OSError or ValueError if unreadable."""
        with open(os.path.join(directory, RECORD), encoding="utf-8") as source:
            data = json.load(source)
        data["binds"] = tuple(data.get("binds", ()))
        data["directory"] = directory
        return cls(**data)


def instance_directories(state_directory: str) -> Iterable[tuple[int, str]]:
    """Every ``petsage-<pid>`` directory in ``state_directory``, with its pid."""
    with contextlib.suppress(OSError):
        for entry in os.scandir(state_directory):
            name = entry.name
            pid = name[len(PREFIX) :]
            if (
                name.startswith(PREFIX)
                and pid.isdigit()
                and entry.is_dir(follow_symlinks=False)
            ):
                yield int(pid), entry.path


def running_instances(state_directory: str) -> list[InstanceRecord]:
    """The live instances whose state is in ``state_directory``, oldest pid first."""
    found = []
    for _, directory in instance_directories(state_directory):
        with contextlib.suppress(OSError, ValueError, TypeError):
            record = InstanceRecord.load(directory)
            if record.alive:
                found.append(record)
    return sorted(found, key=lambda record: record.pid)


def _dead(pid: int, directory: str) -> bool:
    """Whether the master that made ``directory`` is gone (pid reuse considered)."""
    try:
        return not InstanceRecord.load(directory).alive
    except (OSError, ValueError, TypeError):
        # No readable record: a master that died while creating it, or one creating
        # it right now; the pid tells which.
        return process_start_time(pid) is None


def remove_metrics_directory(directory: str) -> None:
    """Delete the metrics library's files in ``directory``, then it if it is empty."""
    with contextlib.suppress(FileNotFoundError):
        for entry in os.scandir(directory):
            if METRICS_FILE.fullmatch(entry.name) and entry.is_file():
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(entry.path)
    with contextlib.suppress(FileNotFoundError, OSError):
        os.rmdir(directory)


def remove_instance_directory(directory: str) -> None:
    """Delete an instance's directory: record, marker, health and metrics files."""
    remove_metrics_directory(os.path.join(directory, METRICS))
    for name in (
        RECORD,
        RECORD + ".new",
        DRAIN,
        HEALTH_SNAPSHOT,
        HEALTH_SNAPSHOT + ".new",
        HEALTH_LOCK,
    ):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(os.path.join(directory, name))
    with contextlib.suppress(FileNotFoundError, OSError):
        os.rmdir(directory)


def remove_dead_instances(state_directory: str, metrics_parent: str | None) -> int:
    """Remove what masters that died without cleaning up left; how many there were."""
    removed = 0
    for pid, directory in list(instance_directories(state_directory)):
        if pid != os.getpid() and _dead(pid, directory):
            remove_instance_directory(directory)
            removed += 1
    removed += remove_legacy_metrics_directories(state_directory)
    if metrics_parent:
        for pid, directory in list(instance_directories(metrics_parent)):
            own = os.path.join(state_directory, PREFIX + str(pid))
            if pid != os.getpid() and not os.path.isdir(own):
                remove_metrics_directory(directory)
                removed += 1
    return removed


# Releases before 1.0.0's instance directories made one of these per master, with a
# random suffix, and a master killed with SIGKILL left it behind.
LEGACY_METRICS_DIRECTORY = re.compile(r"petsage-metrics-[a-z0-9_]{8}")


def remove_legacy_metrics_directories(state_directory: str) -> int:
    """Remove earlier releases' metrics directories that no live process writes."""
    removed = 0
    with contextlib.suppress(OSError):
        for entry in os.scandir(state_directory):
            if not LEGACY_METRICS_DIRECTORY.fullmatch(entry.name) or not entry.is_dir(
                follow_symlinks=False
            ):
                continue
            names = os.listdir(entry.path)
            writers = [
                int(name.rsplit("_", 1)[1].split(".")[0])
                for name in names
                if METRICS_FILE.fullmatch(name) and "_archive." not in name
            ]
            foreign = [name for name in names if not METRICS_FILE.fullmatch(name)]
            if not foreign and not any(process_start_time(pid) for pid in writers):
                remove_metrics_directory(entry.path)
                removed += 1
    return removed


class InstanceError(RuntimeError):
    """The instance's state cannot be kept; its message is one line."""


_this_instance: InstanceRecord | None = None


def this_instance(
    state_directory: str,
    drain_file: str | None,
    metrics_directory: str,
    management_bind: str = "",
) -> InstanceRecord:
    """This master's record, made at its first config load and kept over reloads.

    gunicorn reads its config file again on SIGHUP, in the same master: the instance
    (and its drain marker and metrics) must survive that. ``drain_file`` is
    PETSAGE_DRAIN_FILE when the operator set it, else None. The directory is removed
    when this process exits, whether it served or failed to start; workers, which
    are forked from it, leave it alone.
    """
    global _this_instance
    if _this_instance is None or _this_instance.pid != os.getpid():
        _this_instance = create_instance(
            state_directory, drain_file, metrics_directory, management_bind
        )
        atexit.register(_remove_this_instance)
    return _this_instance


def _remove_this_instance() -> None:
    if _this_instance is not None:
        remove_instance(_this_instance)


def create_instance(
    state_directory: str,
    drain_file: str | None,
    metrics_directory: str,
    management_bind: str = "",
) -> InstanceRecord:
    """Make this master's directory and record, after removing dead masters' ones."""
    if not os.path.isdir(state_directory):
        raise InstanceError(
            f"PETSAGE_STATE_DIR={state_directory!r} is not valid: expected the path"
            " of an existing directory"
        )
    if drain_file is not None and not os.path.isdir(
        os.path.dirname(os.path.abspath(drain_file))
    ):
        raise InstanceError(
            f"PETSAGE_DRAIN_FILE={drain_file!r} is not valid: expected a file path in"
            " an existing directory"
        )
    pid = os.getpid()
    directory = os.path.join(state_directory, PREFIX + str(pid))
    own_metrics = os.path.join(directory, METRICS)
    metrics_parent = (
        None if metrics_directory == own_metrics else os.path.dirname(metrics_directory)
    )
    remove_dead_instances(state_directory, metrics_parent)
    started = process_start_time(pid)
    if started is None:
        raise InstanceError("cannot read this process's start time from /proc")
    if drain_file is not None:
        for other in running_instances(state_directory):
            if other.pid != pid and other.drain_file == drain_file:
                raise InstanceError(
                    f"PETSAGE_DRAIN_FILE={drain_file!r} is the drain marker of the"
                    f" running instance {other.describe()}: give each its own"
                )
    if os.path.isdir(directory):
        # Left by a dead master whose pid this one was given: stale.
        remove_instance_directory(directory)
    try:
        # Private: no other user may read, plant or remove what steers readiness.
        os.mkdir(directory, 0o700)
    except OSError as error:
        raise InstanceError(f"cannot create {directory}: {error.strerror}") from None
    metrics_problem = ""
    try:
        os.mkdir(metrics_directory, 0o700)
    except FileExistsError:
        pass
    except OSError as error:
        # Read-only or full: metrics degrade (each worker logs it), serving goes on.
        metrics_problem = f"cannot create {metrics_directory}: {error.strerror}"
    record = InstanceRecord(
        pid=pid,
        started=started,
        directory=directory,
        drain_file=drain_file or os.path.join(directory, DRAIN),
        metrics_directory=metrics_directory,
        management_bind=management_bind,
        metrics_problem=metrics_problem,
    )
    try:
        record.save()
    except OSError as error:
        remove_instance_directory(directory)
        raise InstanceError(f"cannot write {directory}: {error.strerror}") from None
    return record


def mark_listening(record: InstanceRecord, binds: Iterable[str]) -> InstanceRecord:
    """Record the addresses the master bound (``http://`` dropped); the record."""
    addresses = tuple(
        address.removeprefix("http://").removeprefix("https://") for address in binds
    )
    global _this_instance
    # gunicorn's --daemon forks after reading the config: the master's pid changed.
    pid = os.getpid()
    started = process_start_time(pid) or record.started
    listening = replace(record, binds=addresses, pid=pid, started=started)
    with contextlib.suppress(OSError):
        listening.save()
    if _this_instance is not None and _this_instance.directory == record.directory:
        _this_instance = listening
    return listening


def remove_instance(record: InstanceRecord) -> None:
    """Remove this master's directory and metrics files, at its exit."""
    if os.getpid() != record.pid:
        return  # a worker exiting: the directory is its master's
    if record.metrics_directory != os.path.join(record.directory, METRICS):
        remove_metrics_directory(record.metrics_directory)
    remove_instance_directory(record.directory)
    if record.drain_file != os.path.join(record.directory, DRAIN):
        with contextlib.suppress(OSError):
            os.unlink(record.drain_file)
