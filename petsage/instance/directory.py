"""PetSage instances on one host: each gunicorn master, and the directory it keeps.

Several instances share a host (systemd templates, blue/green with ``--reuse-port``,
test runs, containers of one pod sharing ``/dev/shm``), so nothing an instance keeps
may be keyed by a setting's default or by a pid alone: pids repeat across PID
namespaces and over time. Each master makes a directory of its own in the state
directory (PETSAGE_STATE_DIR), named ``petsage-<pid>-<pid namespace>-<start time>``
(unique to it on the host), holding only what other processes must discover:

- ``instance.lock``, which the master holds (``flock``) for as long as it or any
  of its workers lives: an instance's directory is in use until nobody holds its
  lock, a test the kernel answers the same way in every PID namespace;
- ``instance.json``: its pid and start time, its PID namespace, the descriptor of the
  memory it shares with its workers (petsage.instance.memory), and the addresses
  gunicorn really bound (whichever way they were given), so that ``petsage drain``
  and ``petsage probe`` find it;
- ``metrics/``: prometheus_client's multiprocess files, unless PROMETHEUS_MULTIPROC_DIR
  is set, in which case they go to a subdirectory of it of the same name.

An instance runs while its master does (``InstanceRecord.master_alive``): workers
whose master was killed hold the lock until they exit, a graceful timeout at most
later, but serve nothing new meanwhile (petsage.serving.worker).

Readiness, draining and the health snapshot live in memory, not here: a full,
read-only or deleted directory degrades metrics and discovery only, and the master
puts back what vanished within a second (``OwnInstance.repair``). The master removes
the directory when it exits, also after a start that failed; one killed with
SIGKILL cannot, and the next instance to start removes what dead masters left.
"""

import atexit
import contextlib
import fcntl
import json
import logging
import os
import re
import shutil
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path

from petsage.instance.memory import InstanceMemory

logger = logging.getLogger(__name__)

PREFIX = "petsage-"
RECORD = "instance.json"
LOCK = "instance.lock"
METRICS = "metrics"
# An instance's directory: pid, PID namespace (its inode), start time (clock ticks).
NAME = re.compile(r"petsage-\d+-\d+-\d+")
# A directory being made, renamed into place once its lock is held.
BUILDING = re.compile(r"\.(petsage-\d+-\d+-\d+)\.new")
# A metrics directory PetSage chose: one named like an instance inside the
# operator's PROMETHEUS_MULTIPROC_DIR, or an instance directory's own.
OWN_METRICS_DIRECTORY = re.compile(rf"(.+)/{PREFIX}[\d-]+(/{METRICS})?")
# An upgrade is supported from the release before, so the clean-up of what 1.0.x and
# earlier releases left behind (the LEGACY_ names and the functions using them, about
# 60 lines) goes in 1.2.0, when no 1.0.x master can still run beside this one. The
# code-quality tests fail once the version reaches it.
LEGACY_REMOVED_IN = (1, 2, 0)
# Releases up to 1.0.x named the directory by pid alone, and took no lock.
LEGACY_NAME = re.compile(r"petsage-(\d+)")
LEGACY_FILES = ("drain", "health.json", "health.json.new", "health.lock")
# What prometheus_client writes in multiprocess mode (and PetSage's archive of dead
# workers' samples beside it); nothing else is ever deleted from a metrics directory.
# A ``.new`` one is being written (or was, when a SIGKILL came). ``worker_restarts``
# is the master's count of replaced workers (petsage.metrics.process).
METRICS_FILE = re.compile(
    r"(?:[a-z]+(?:_[a-z]+)?_(?:\d+|archive)\.db|worker_restarts)(?:\.new)?"
)


def process_status(pid: int | str) -> tuple[str, int] | None:
    """The state of ``pid`` (``R``, ``S``, ``Z``, ...) and when it started (clock
    ticks since boot), or None if it does not exist."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name, in parentheses, may hold spaces: the fields follow it.
    values = stat[stat.rindex(")") + 2 :].split()
    return values[0], int(values[19])


def process_start_time(pid: int | str) -> int | None:
    """When ``pid`` started (clock ticks since boot), or None if it does not exist."""
    status = process_status(pid)
    return None if status is None else status[1]


def process_running(pid: int, started: int) -> bool:
    """Whether ``pid`` runs (exited, it may stay a zombie until its parent reaps it),
    and is the process that started at ``started``, unless that is 0 (unknown)."""
    status = process_status(pid)
    return (
        status is not None and status[0] not in ("Z", "X") and started in (0, status[1])
    )


def pid_namespace() -> int:
    """This process's PID namespace (the inode that names it)."""
    return os.stat("/proc/self/ns/pid").st_ino


def name_of_this_master() -> str:
    """This process's instance name, unique on the host: ``petsage-<pid>-<pid
    namespace>-<start time>``.

    Masters in different PID namespaces may share a pid (each container's is 1), and
    pids are reused over time; with its namespace and start time, no two share it.
    """
    pid = os.getpid()
    return f"{PREFIX}{pid}-{pid_namespace()}-{process_start_time(pid)}"


def metrics_directory_of(
    name: str, state_directory: str, environ: Mapping[str, str]
) -> str:
    """Where the workers of instance ``name`` keep their metrics files: a directory
    of its own.

    PROMETHEUS_MULTIPROC_DIR, when the operator sets it, is the parent of one
    directory per instance, named like the instance; unset, the metrics live in the
    instance's directory in ``state_directory``. A value that PetSage set itself (a
    master before a reload, or the master that re-executed this one on SIGUSR2) is
    recognised by its name and not taken for the operator's.
    """
    given = environ.get("PROMETHEUS_MULTIPROC_DIR", "").strip()
    own = OWN_METRICS_DIRECTORY.fullmatch(given)
    # Inside the operator's directory, its parent is the operator's; an instance
    # directory's own metrics say nothing of the operator's choice.
    parent = given if own is None else own.group(1) if own.group(2) is None else ""
    if parent:
        return os.path.join(parent, name)
    return os.path.join(state_directory, name, METRICS)


def lock_held(directory: str) -> bool | None:
    """Whether a live master holds the lock of the instance in ``directory``.

    None when there is no lock to test (a directory of an earlier release, or one
    whose lock its master is putting back).
    """
    try:
        descriptor = os.open(os.path.join(directory, LOCK), os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    except OSError:
        return None
    finally:
        os.close(descriptor)
    return False


@dataclass(frozen=True)
class InstanceRecord:
    """What a master writes about itself, and what the ``petsage`` command reads."""

    name: str
    pid: int
    pid_namespace: int
    directory: str
    metrics_directory: str
    # The descriptor of its shared memory, in the master (``/proc/<pid>/fd/<fd>``).
    memory_fd: int = -1
    # PETSAGE_DRAIN_FILE when the operator set it, else "".
    drain_file: str = ""
    binds: tuple[str, ...] = ()
    management_bind: str = ""
    # Why the metrics directory could not be made, for the master to log once.
    metrics_problem: str = ""
    # When the master started (clock ticks since boot), so that a later process
    # given its pid is not taken for it; 0 when unknown (an earlier release's).
    started: int = 0

    @property
    def alive(self) -> bool:
        """Whether the master that wrote this record (or one of its workers) lives."""
        return lock_held(self.directory) is True

    @property
    def master_alive(self) -> bool:
        """Whether the master itself runs: its workers may outlive it for a graceful
        timeout, holding the lock, while they finish what they hold.

        Told by its process in this PID namespace; in another, where its pid means
        another process, only the lock tells.
        """
        if not self.here:
            return self.alive
        return process_running(self.pid, self.started)

    @property
    def ready(self) -> bool:
        """Whether the master has bound its addresses (``when_ready`` has run)."""
        return bool(self.binds)

    @property
    def here(self) -> bool:
        """Whether it runs in this process's PID namespace (its pid means it here)."""
        return self.pid_namespace == pid_namespace()

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
        """Read the record in ``directory``; OSError or ValueError if unreadable.

        A field this release does not know (a later release's) is left out.
        """
        with open(os.path.join(directory, RECORD), encoding="utf-8") as source:
            data = json.load(source)
        known = {field.name for field in fields(cls)}
        data = {name: value for name, value in data.items() if name in known}
        data["binds"] = tuple(data.get("binds", ()))
        data["directory"] = directory
        return cls(**data)


def instance_directories(state_directory: str) -> Iterable[str]:
    """Every instance directory in ``state_directory``."""
    with contextlib.suppress(OSError):
        for entry in os.scandir(state_directory):
            if NAME.fullmatch(entry.name) and entry.is_dir(follow_symlinks=False):
                yield entry.path


def trusted(record: InstanceRecord) -> bool:
    """Whether ``record`` is one this process may act on: its directory belongs to
    this user, or, for root, to the user its master runs as.

    The default state directory, ``/dev/shm``, is writable by every user: a record
    another user planted there must steer nothing (which memory ``petsage drain``
    writes, which marker file ``--cancel`` removes).
    """
    owner = os.lstat(record.directory).st_uid
    user = os.geteuid()
    if owner == user:
        return True
    return user == 0 and record.here and os.stat(f"/proc/{record.pid}").st_uid == owner


def live_instances(state_directory: str) -> list[InstanceRecord]:
    """The instances in ``state_directory`` whose master or workers live, that this
    process may act on (see ``trusted``), oldest pid first."""
    found = []
    for directory in instance_directories(state_directory):
        with contextlib.suppress(OSError, ValueError, TypeError):
            record = InstanceRecord.load(directory)
            if record.alive and trusted(record):
                found.append(record)
    return sorted(found, key=lambda record: record.pid)


def running_instances(state_directory: str) -> list[InstanceRecord]:
    """The instances in ``state_directory`` whose master runs, that this process may
    act on (see ``trusted``), oldest pid first."""
    return [record for record in live_instances(state_directory) if record.master_alive]


def remove_metrics_directory(directory: str) -> None:
    """Delete the metrics library's files in ``directory``, then it if it is empty."""
    with contextlib.suppress(FileNotFoundError):
        for entry in os.scandir(directory):
            if METRICS_FILE.fullmatch(entry.name) and entry.is_file():
                with contextlib.suppress(OSError):
                    os.unlink(entry.path)
    with contextlib.suppress(FileNotFoundError, OSError):
        os.rmdir(directory)


def remove_instance_directory(directory: str) -> None:
    """Delete an instance's directory: record, lock and metrics files."""
    remove_metrics_directory(os.path.join(directory, METRICS))
    for name in (RECORD, RECORD + ".new", LOCK, LOCK + ".new", *LEGACY_FILES):
        # Gone already, or on a file system gone read-only: nothing more to do.
        with contextlib.suppress(OSError):
            os.unlink(os.path.join(directory, name))
    with contextlib.suppress(FileNotFoundError, OSError):
        os.rmdir(directory)


def _legacy_dead(pid: int, directory: str) -> bool:
    """Whether the master of an earlier release's ``directory`` is gone.

    Those releases took no lock, and their record names the master by pid and start
    time, which only this PID namespace can check.
    """
    try:
        with open(os.path.join(directory, RECORD), encoding="utf-8") as source:
            data = json.load(source)
        return bool(process_start_time(int(data["pid"])) != int(data["started"]))
    except (OSError, ValueError, TypeError, KeyError):
        return process_start_time(pid) is None


def remove_dead_instances(
    state_directory: str, metrics_parent: str | None, own: str = ""
) -> int:
    """Remove what masters that died without cleaning up left; how many there were.

    A directory is dead when nobody holds its lock; one without a lock (its master
    is putting it back) is left alone. ``own`` is the name of this master's.
    """
    removed = 0
    dead_names = set()
    with contextlib.suppress(OSError):
        for entry in list(os.scandir(state_directory)):
            name, path = entry.name, entry.path
            if name == own or not entry.is_dir(follow_symlinks=False):
                continue
            legacy = LEGACY_NAME.fullmatch(name)
            if NAME.fullmatch(name) or BUILDING.fullmatch(name):
                dead = lock_held(path) is False
            elif legacy:
                dead = _legacy_dead(int(legacy.group(1)), path)
            else:
                continue
            if dead:
                remove_instance_directory(path)
                dead_names.add(name)
                removed += 1
    removed += remove_legacy_metrics_directories(state_directory)
    if metrics_parent:
        with contextlib.suppress(OSError):
            for entry in list(os.scandir(metrics_parent)):
                name = entry.name
                if name == own:
                    continue
                # Only a dead instance's: one whose directory is missing may be
                # having it put back by its master, and its workers write here.
                instance = os.path.join(state_directory, name)
                orphan = bool(LEGACY_NAME.fullmatch(name)) and not os.path.isdir(
                    instance
                )
                if (
                    name in dead_names
                    or orphan
                    or (
                        NAME.fullmatch(name) is not None
                        and lock_held(instance) is False
                    )
                ):
                    remove_metrics_directory(entry.path)
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


class OwnInstance:
    """This master's instance: its record, its lock, its memory; it keeps them.

    Workers, forked from the master, inherit all three; only the master writes the
    directory.
    """

    def __init__(self, record: InstanceRecord, memory: InstanceMemory) -> None:
        self.record = record
        self.memory = memory
        self._lock = -1
        self._lock_inode = 0
        self._record_saved = False
        # The problem last logged about keeping the directory, if it persists.
        self._problem: str | None = None

    @property
    def directory(self) -> str:
        """The instance's directory."""
        return self.record.directory

    def build(self) -> None:
        """Make the directory, its lock held, then put it in place in one rename.

        Another master's scan never sees this instance's directory without a held
        lock, so it can never take it for dead. OSError when it cannot be made.
        """
        final = self.directory
        parent, name = os.path.split(final)
        building = os.path.join(parent, f".{name}.new")
        if os.path.isdir(building):
            shutil.rmtree(building, ignore_errors=True)
        # Private: no other user may read, plant or remove what steers the instance.
        os.mkdir(building, 0o700)
        try:
            # Locked under another name first: a scan sees no unheld lock, ever.
            lock = os.path.join(building, LOCK)
            self._take_lock(lock + ".new")
            os.rename(lock + ".new", lock)
            os.rename(building, final)
        except OSError:
            shutil.rmtree(building, ignore_errors=True)
            raise
        self._record_saved = False

    def _take_lock(self, path: str) -> None:
        descriptor = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        fcntl.flock(descriptor, fcntl.LOCK_EX)
        previous, self._lock = self._lock, descriptor
        self._lock_inode = os.fstat(descriptor).st_ino
        if previous >= 0:
            os.close(previous)

    def _lock_intact(self) -> bool:
        try:
            return os.stat(os.path.join(self.directory, LOCK)).st_ino == (
                self._lock_inode
            )
        except OSError:
            return False

    def save(self) -> None:
        """Write the record; OSError when it cannot be written."""
        self._record_saved = False
        self.record.save()
        self._record_saved = True

    def repair(self) -> None:
        """Put back whatever of the directory vanished: it, its lock, its record,
        its metrics directory. The master calls it about once a second.

        A problem (a read-only or full file system) is logged once, and again when
        it is gone or changes.
        """
        directory = self.directory
        repaired = []
        try:
            if not os.path.isdir(directory):
                self.build()
                repaired.append(f"remade {directory}, which had been removed")
            elif not self._lock_intact():
                lock = os.path.join(directory, LOCK)
                self._take_lock(lock + ".new")
                os.replace(lock + ".new", lock)
                repaired.append(f"remade {lock}")
            if not self._record_saved or not os.path.exists(
                os.path.join(directory, RECORD)
            ):
                self.save()
                if repaired:
                    repaired.append("its record")
            own_metrics = os.path.join(directory, METRICS)
            if self.record.metrics_directory == own_metrics and not os.path.isdir(
                own_metrics
            ):
                os.mkdir(own_metrics, 0o700)
        except OSError as error:
            problem = f"cannot keep {directory}: {error.strerror or error}"
            if problem != self._problem:
                self._problem = problem
                logger.error(
                    "Instance directory: %s; readiness and draining are unaffected;"
                    " petsage drain and probe see only what it held before",
                    problem,
                )
            return
        if repaired:
            logger.warning("Instance directory: %s", ", ".join(repaired))
        if self._problem is not None:
            self._problem = None
            logger.info("Instance directory: %s can be written again", directory)

    def mark_listening(self, binds: Iterable[str]) -> InstanceRecord:
        """Record the addresses the master bound (``http://`` dropped)."""
        addresses = tuple(
            address.removeprefix("http://").removeprefix("https://")
            for address in binds
        )
        # gunicorn's --daemon forks after reading the config: the master's pid changed.
        pid = os.getpid()
        self.record = replace(
            self.record,
            binds=addresses,
            pid=pid,
            started=process_start_time(pid) or 0,
        )
        with contextlib.suppress(OSError):
            self.save()  # else repair() writes it when it can
        return self.record

    def remove(self) -> None:
        """Remove this master's directory and metrics files, at its exit."""
        record = self.record
        if os.getpid() != record.pid:
            return  # a worker exiting: the directory is its master's
        if record.metrics_directory != os.path.join(record.directory, METRICS):
            remove_metrics_directory(record.metrics_directory)
        remove_instance_directory(record.directory)


_this_instance: OwnInstance | None = None


def this_instance(
    state_directory: str,
    name: str,
    drain_file: str | None,
    metrics_directory: str,
    management_bind: str = "",
) -> OwnInstance:
    """This master's instance, made at its first config load and kept over reloads.

    gunicorn reads its config file again on SIGHUP, in the same master: the instance
    (its memory, drain state and metrics) must survive that. ``drain_file`` is
    PETSAGE_DRAIN_FILE when the operator set it, else None. The directory is removed
    when this process exits, whether it served or failed to start; workers, which
    are forked from it, leave it alone.
    """
    global _this_instance
    if _this_instance is None or _this_instance.record.pid != os.getpid():
        _this_instance = create_instance(
            state_directory, name, drain_file, metrics_directory, management_bind
        )
        atexit.register(_this_instance.remove)
    return _this_instance


def create_instance(
    state_directory: str,
    name: str,
    drain_file: str | None,
    metrics_directory: str,
    management_bind: str = "",
) -> OwnInstance:
    """Make this master's memory, directory and record, after removing dead
    masters' directories."""
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
    directory = os.path.join(state_directory, name)
    own_metrics = os.path.join(directory, METRICS)
    metrics_parent = (
        None if metrics_directory == own_metrics else os.path.dirname(metrics_directory)
    )
    remove_dead_instances(state_directory, metrics_parent, own=name)
    # The master a SIGUSR2 upgrade started this one from shares its settings, and
    # its drain file, by design.
    upgraded_from = int(os.environ.get("GUNICORN_PID", "0") or 0)
    if drain_file is not None:
        for other in running_instances(state_directory):
            if (
                other.name != name
                and other.drain_file == drain_file
                and not (other.here and other.pid == upgraded_from)
            ):
                raise InstanceError(
                    f"PETSAGE_DRAIN_FILE={drain_file!r} is the drain marker of the"
                    f" running instance {other.describe()}: give each its own"
                )
    if os.path.isdir(directory):
        # Left by a dead master with this very name: stale.
        remove_instance_directory(directory)
    try:
        memory = InstanceMemory.create(name)
    except OSError as error:
        raise InstanceError(
            f"cannot make the instance's shared memory: {error.strerror}"
        ) from None
    record = InstanceRecord(
        name=name,
        pid=os.getpid(),
        started=process_start_time(os.getpid()) or 0,
        pid_namespace=pid_namespace(),
        directory=directory,
        metrics_directory=metrics_directory,
        memory_fd=memory.fd,
        drain_file=drain_file or "",
        management_bind=management_bind,
    )
    instance = OwnInstance(record, memory)
    try:
        instance.build()
    except OSError as error:
        raise InstanceError(f"cannot create {directory}: {error.strerror}") from None
    try:
        os.mkdir(metrics_directory, 0o700)
    except FileExistsError:
        pass
    except OSError as error:
        # Read-only or full: metrics degrade (each worker logs it), serving goes on.
        instance.record = replace(
            record,
            metrics_problem=f"cannot create {metrics_directory}: {error.strerror}",
        )
    try:
        instance.save()
    except OSError as error:
        remove_instance_directory(directory)
        raise InstanceError(f"cannot write {directory}: {error.strerror}") from None
    return instance
