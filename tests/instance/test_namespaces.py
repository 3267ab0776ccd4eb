"""Instances in PID namespaces of their own, sharing one state directory.

Containers of one pod that share ``/dev/shm``, or a host instance beside a container's,
see each other's instance directories but not each other's processes, and every
container's master is pid 1. Each test starts masters with util-linux ``unshare
--pid --fork --mount-proc``, so that each is PID 1 of a namespace of its own, all on
loopback (the network namespace is the host's) and all with one state directory (a
``tmp_path``). An instance is told from another by its directory's name (pid, PID
namespace, start time) and judged dead by its lock alone
(petsage/instance/directory.py); ``petsage drain`` and ``petsage probe`` consider only
the instances of their own PID namespace (petsage/cli/commands.py).
"""

import contextlib
import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from petsage.instance.directory import InstanceRecord, lock_held, process_start_time
from tests.support.fault_record import FaultRecorder
from tests.support.gunicorn_process import (
    GUNICORN,
    REPO_ROOT,
    STOP_TIMEOUT,
    GunicornFactory,
    GunicornServer,
)
from tests.support.instances import PETSAGE, instance_directory, petsage, readiness
from tests.support.load import ClientLoad
from tests.support.processes import children, free_ports, wait_until
from tests.support.proxies import CLIENT_TIMEOUT, DRAIN_DELAY

pytestmark = pytest.mark.slow  # real processes in namespaces: not in the fast tier

UNSHARE = shutil.which("unshare")
NSENTER = shutil.which("nsenter")
# --kill-child: should unshare itself die (SIGKILL in a teardown, or an interrupted
# run), the kernel sends its child, PID 1 of the namespace, SIGKILL, and with it every
# process of the namespace: no gunicorn outlives the unshare that started it.
NAMESPACE = ("--pid", "--fork", "--mount-proc", "--kill-child=SIGKILL")
# Long enough to poll a draining instance many times, short enough for a quick test.
SHUTDOWN_DELAY = {"PETSAGE_SHUTDOWN_DELAY": str(DRAIN_DELAY)}
# How often the instance that must stay ready is asked, through another's drain.
POLL_INTERVAL = 0.1
# Liveness bounds, not durations: a loaded machine may take long, a broken one forever.
EVENT_TIMEOUT = 60.0


@pytest.fixture(scope="module")
def namespaces() -> None:
    """Skip unless this user may make PID namespaces (root, or a permissive host)."""
    if UNSHARE is None or NSENTER is None:
        pytest.skip("unshare or nsenter is not installed (Debian: util-linux)")
    tried = subprocess.run(
        [UNSHARE, *NAMESPACE, "true"], capture_output=True, text=True, timeout=30
    )
    if tried.returncode != 0:
        pytest.skip(
            "cannot make a PID namespace with unshare --pid --fork --mount-proc"
            f" (needs root or CAP_SYS_ADMIN): {tried.stderr.strip()}"
        )


def nspid(pid: int) -> list[int]:
    """``pid``'s pid in each PID namespace it is in, the host's first (NSpid)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("NSpid:"):
            return [int(field) for field in line.split()[1:]]
    raise AssertionError(f"no NSpid line for {pid}")


@dataclass
class NamespacedServer(GunicornServer):
    """gunicorn started by ``unshare``: PID 1 of a PID namespace of its own.

    ``process`` is the ``unshare`` process; ``master`` the gunicorn master's pid as
    the host (this test) sees it, which signals and ``nsenter`` need.
    """

    master: int = 0

    @classmethod
    def start_in_namespace(cls, env: dict[str, str], port: int) -> "NamespacedServer":
        """Start gunicorn bound to 127.0.0.1:``port`` in a new PID namespace, wait
        until it is ready (its first check cycle published, not only a worker
        answering), and find its master."""
        assert UNSHARE is not None
        log_path = Path(tempfile.mkstemp(prefix="petsage-unshare-", suffix=".log")[1])
        environment = {
            **{
                name: value
                for name, value in os.environ.items()
                if not name.startswith("PETSAGE_FAULT_")
            },
            "PETSAGE_WORKERS": "2",
            "PETSAGE_BIND": f"127.0.0.1:{port}",
            **env,
        }
        args = ["-b", f"127.0.0.1:{port}"]
        with log_path.open("wb") as log:
            process = subprocess.Popen(
                [UNSHARE, *NAMESPACE, GUNICORN, *args],
                cwd=REPO_ROOT,
                env=environment,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        server = cls(process, 0, log_path)
        try:
            server.port = server._wait_for_port(port)
            server._wait_for_an_answer()
            # The tests assert that it stays ready: it must be ready first.
            wait_until(lambda: readiness(port) == 200, EVENT_TIMEOUT, "/readyz 200")
            # unshare forks once and its child executes gunicorn: the master is
            # unshare's only child.
            (server.master,) = children(process.pid)
            assert nspid(server.master)[-1] == 1, nspid(server.master)
        except BaseException:
            server.stop()
            raise
        return server

    @property
    def namespace(self) -> int:
        """The inode that names the master's PID namespace."""
        return os.stat(f"/proc/{self.master}/ns/pid").st_ino

    @property
    def directory_name(self) -> str:
        """The name its instance directory must have: pid 1, namespace, start time."""
        return f"petsage-1-{self.namespace}-{process_start_time(self.master)}"

    def workers(self) -> set[int]:
        """Its workers' pids, as the host sees them."""
        return children(self.master)

    def in_namespace(
        self, *args: str, env: dict[str, str]
    ) -> subprocess.CompletedProcess[str]:
        """Run ``petsage`` with ``args`` inside the master's PID and mount namespaces
        (the mount namespace holds the ``/proc`` that shows that PID namespace)."""
        assert NSENTER is not None
        return subprocess.run(
            [
                NSENTER,
                f"--target={self.master}",
                "--pid",
                "--mount",
                str(PETSAGE),
                *args,
            ],
            env={**os.environ, **env},
            capture_output=True,
            text=True,
            timeout=60,
        )

    def stop(self) -> None:
        """Stop gunicorn gracefully, or kill its namespace if it does not exit.

        SIGTERM goes to the master itself: unshare blocks SIGTERM while it waits for
        its child, and --kill-child acts only when unshare dies, which would be a
        SIGKILL, not a drain. A master that does not exit in time gets SIGKILL,
        which kills every process of its namespace; then unshare exits.
        """
        if self.process.poll() is not None:
            return
        if self.master:
            os.kill(self.master, signal.SIGTERM)
            try:
                self.process.wait(STOP_TIMEOUT)
                return
            except subprocess.TimeoutExpired:
                os.kill(self.master, signal.SIGKILL)
        self.process.kill()
        self.process.wait()

    def kill(self) -> None:
        """SIGKILL the master and its workers; wait until all of them are gone."""
        workers = self.workers()
        os.kill(self.master, signal.SIGKILL)
        for worker in workers:
            # The kernel may have killed it already, with its namespace's PID 1.
            with contextlib.suppress(ProcessLookupError):
                os.kill(worker, signal.SIGKILL)
        self.process.wait(EVENT_TIMEOUT)
        wait_until(
            lambda: not any(Path(f"/proc/{pid}").exists() for pid in workers),
            EVENT_TIMEOUT,
            "the killed master's workers gone",
        )


NamespacedFactory = Callable[[dict[str, str], int], NamespacedServer]


@pytest.fixture
def start_in_namespace(namespaces: None) -> Iterator[NamespacedFactory]:
    """Start gunicorn masters, each PID 1 of a namespace of its own; all are stopped
    after, however the test ended."""
    servers: list[NamespacedServer] = []

    def start(env: dict[str, str], port: int) -> NamespacedServer:
        server = NamespacedServer.start_in_namespace(env, port)
        servers.append(server)
        return server

    try:
        yield start
    finally:
        for server in servers:
            server.stop()
            server.log_path.unlink(missing_ok=True)


@pytest.fixture
def state(tmp_path: Path) -> dict[str, str]:
    """One state directory, the test's own, for every instance of the test."""
    directory = tmp_path / "state"
    directory.mkdir()
    return {"PETSAGE_STATE_DIR": str(directory)}


def contents(directory: Path) -> dict[str, int]:
    """Every file and directory under ``directory``, with its inode."""
    return {
        str(path.relative_to(directory)): path.stat().st_ino
        for path in directory.rglob("*")
    }


def assert_kept(directory: Path, before: dict[str, int]) -> None:
    """Everything that was under ``directory`` still is, the same files (its master
    adds metrics files as its workers serve)."""
    now = contents(directory)
    gone = {name: inode for name, inode in before.items() if now.get(name) != inode}
    assert not gone, f"removed or replaced in {directory}: {sorted(gone)}"


def instance_names(state: dict[str, str]) -> set[str]:
    """The instance directories in the state directory (hidden ones left out)."""
    return {
        path.name
        for path in Path(state["PETSAGE_STATE_DIR"]).iterdir()
        if path.name.startswith("petsage-")
    }


def assert_alive(directory: Path, pid: int, namespace: int) -> None:
    """``directory`` is a live instance's: its lock held, its record its master's."""
    assert lock_held(str(directory)) is True, f"nobody holds {directory}'s lock"
    record = InstanceRecord.load(str(directory))
    assert (record.pid, record.pid_namespace) == (pid, namespace), record


def tally(answers: list[int | None]) -> dict[str, int]:
    """Sent, failed (answered other than 200) and lost (no answer) of /readyz polls."""
    return {
        "sent": len(answers),
        "failed": sum(1 for answer in answers if answer not in (200, None)),
        "lost": sum(1 for answer in answers if answer is None),
    }


def assert_it_exits_polling_readiness(
    server: NamespacedServer, ports: list[int]
) -> list[list[int | None]]:
    """Assert that ``server`` exits in EVENT_TIMEOUT; /readyz of each port till then."""
    answers: list[list[int | None]] = [[] for _ in ports]
    deadline = time.monotonic() + EVENT_TIMEOUT
    while server.process.poll() is None:
        assert time.monotonic() < deadline, "the first instance did not exit"
        for port, answered in zip(ports, answers, strict=True):
            answered.append(readiness(port, CLIENT_TIMEOUT))
        time.sleep(POLL_INTERVAL)
    return answers


def record_the_first_drained_beside(
    fault_record: FaultRecorder, second_answers: list[int | None], load: ClientLoad
) -> None:
    """The fault record's row: the second's polls and requests as the first exits."""
    polls = tally(second_answers)
    requests = load.total.counts()
    fault_record(
        fault="SIGTERM to one of two PID-1 masters sharing a state directory",
        injected="two masters, each PID 1 of its own PID namespace (unshare),"
        f" one state directory; SIGTERM to the first ({DRAIN_DELAY:.0f} s drain)",
        load=f"the second's /readyz polled every {POLL_INTERVAL} s"
        f" ({polls['sent']} polls) and 2 client threads on its smoke test,"
        " through the first's drain and exit",
        **{count: requests[count] + polls[count] for count in polls},
        recovery="none needed: the second stayed ready; its directory and lock"
        " survived the first's exit",
    )


def readiness_polls(port: int, count: int) -> list[int | None]:
    """``count`` /readyz answers of ``port``, POLL_INTERVAL apart."""
    answers = []
    for _ in range(count):
        answers.append(readiness(port, CLIENT_TIMEOUT))
        time.sleep(POLL_INTERVAL)
    return answers


def record_the_host_drain(
    fault_record: FaultRecorder, answers: list[int | None]
) -> None:
    """The fault record's row: the namespaced /readyz around the host's drains."""
    fault_record(
        fault="petsage drain on the host beside a namespaced instance",
        injected="a host master and a PID-1 master of its own namespace, one state"
        " directory; petsage drain on the host without --instance, then naming"
        " pid 1 and the namespaced port",
        load="the namespaced instance's /readyz, polled around each drain",
        recovery="none needed: only the host instance drained",
        **tally(answers),
    )


@pytest.mark.fault
def test_two_pid_1_masters_share_the_state_directory_and_drain_alone(
    start_in_namespace: NamespacedFactory,
    state: dict[str, str],
    fault_record: FaultRecorder,
) -> None:
    first_port, second_port = free_ports(2)
    env = {**SHUTDOWN_DELAY, **state}
    first = start_in_namespace(env, first_port)
    first_directory = Path(state["PETSAGE_STATE_DIR"], first.directory_name)
    before = contents(first_directory)
    second = start_in_namespace(env, second_port)
    second_directory = Path(state["PETSAGE_STATE_DIR"], second.directory_name)
    assert first.namespace != second.namespace

    # Both are pid 1; their directories differ, and the second's start removed
    # nothing of the first's (the same files: the lock is the one its master holds).
    assert instance_names(state) == {first.directory_name, second.directory_name}
    assert_kept(first_directory, before)
    assert_alive(first_directory, 1, first.namespace)
    assert_alive(second_directory, 1, second.namespace)

    with ClientLoad(second_port, threads=2, timeout=CLIENT_TIMEOUT) as load:
        os.kill(first.master, signal.SIGTERM)
        # Through the first's whole drain and exit: until its unshare has exited.
        first_answers, second_answers = assert_it_exits_polling_readiness(
            first, [first_port, second_port]
        )
    exited = first.process.wait()
    record_the_first_drained_beside(fault_record, second_answers, load)
    assert exited == 0, first.log()
    assert 503 in first_answers, f"the first never drained: {first_answers}"
    assert set(second_answers) == {200}, second_answers
    assert load.failed == []

    # The first removed its own directory at its exit, and only it.
    assert instance_names(state) == {second.directory_name}
    assert_alive(second_directory, 1, second.namespace)
    probed = second.in_namespace("probe", "/readyz", env=state)
    assert probed.returncode == 0, probed.stderr
    drained = second.in_namespace("drain", env=state)
    assert drained.returncode == 0, drained.stderr
    assert f"pid 1 (127.0.0.1:{second_port}): draining" in drained.stdout
    assert readiness(second_port) == 503
    cancelled = second.in_namespace("drain", "--cancel", env=state)
    assert cancelled.returncode == 0, cancelled.stderr
    assert readiness(second_port) == 200


@pytest.mark.fault
def test_a_drain_on_the_host_never_reaches_a_namespaced_instance(
    start_gunicorn: GunicornFactory,
    start_in_namespace: NamespacedFactory,
    state: dict[str, str],
    fault_record: FaultRecorder,
) -> None:
    host_port, namespaced_port = free_ports(2)
    env = {**SHUTDOWN_DELAY, **state}
    host = start_gunicorn(env, args=["-b", f"127.0.0.1:{host_port}"])
    host_directory = instance_directory(host, state["PETSAGE_STATE_DIR"])
    host_namespace = os.stat("/proc/self/ns/pid").st_ino
    before = contents(host_directory)
    # The host master's pid means nothing in the new namespace (or another process):
    # its start must not take the host instance for dead.
    namespaced = start_in_namespace(env, namespaced_port)
    namespaced_directory = Path(state["PETSAGE_STATE_DIR"], namespaced.directory_name)
    assert instance_names(state) == {host_directory.name, namespaced.directory_name}
    assert_kept(host_directory, before)
    assert_alive(host_directory, host.process.pid, host_namespace)
    assert_alive(namespaced_directory, 1, namespaced.namespace)

    answers: list[int | None] = [readiness(namespaced_port, CLIENT_TIMEOUT)]
    drained = petsage("drain", env=state)
    answers.append(readiness(namespaced_port, CLIENT_TIMEOUT))
    # Names the namespaced instance's pid (1 on the host is init) or its port: the
    # host's command finds no instance of its own by either, and says where it is.
    by_pid = petsage("drain", "--instance", "1", env=state)
    answers.append(readiness(namespaced_port, CLIENT_TIMEOUT))
    by_port = petsage("drain", "--instance", str(namespaced_port), env=state)
    answers += readiness_polls(namespaced_port, 10)
    inside = namespaced.in_namespace("probe", "/readyz", env=state)
    record_the_host_drain(fault_record, answers)
    assert drained.returncode == 0, drained.stderr
    assert f"pid {host.process.pid} (127.0.0.1:{host_port}): draining" in (
        drained.stdout
    )
    assert f":{namespaced_port}" not in drained.stdout + drained.stderr
    assert readiness(host_port) == 503
    for result in (by_pid, by_port):
        assert result.returncode == 1, result.stdout
        assert "1 more in other PID namespaces" in result.stderr, result.stderr
    assert set(answers) == {200}, answers
    assert inside.returncode == 0, inside.stderr
    cancelled = petsage("drain", "--cancel", env=state)
    assert cancelled.returncode == 0, cancelled.stderr
    assert readiness(host_port) == 200


@pytest.mark.fault
@pytest.mark.parametrize("next_in", ["host namespace", "new namespace"])
def test_a_killed_namespaced_masters_directory_is_removed_by_the_next_start(
    next_in: str,
    start_gunicorn: GunicornFactory,
    start_in_namespace: NamespacedFactory,
    state: dict[str, str],
    fault_record: FaultRecorder,
) -> None:
    killed_port, next_port = free_ports(2)
    env = {**SHUTDOWN_DELAY, **state}
    killed = start_in_namespace(env, killed_port)
    left = Path(state["PETSAGE_STATE_DIR"], killed.directory_name)
    assert_alive(left, 1, killed.namespace)
    killed.kill()
    # Nobody removed it, and nobody holds its lock any more.
    assert left.is_dir()
    assert lock_held(str(left)) is False
    if next_in == "host namespace":
        successor: GunicornServer = start_gunicorn(
            env, args=["-b", f"127.0.0.1:{next_port}"]
        )
        successor_name = instance_directory(successor, state["PETSAGE_STATE_DIR"]).name
    else:
        namespaced = start_in_namespace(env, next_port)
        successor, successor_name = namespaced, namespaced.directory_name
    fault_record(
        fault="namespaced master and its workers killed with SIGKILL",
        injected="SIGKILL to a PID-1 master of its own namespace and to its workers;"
        f" a new instance started in the {next_in}",
        load="none",
        sent=0,
        failed=0,
        lost=0,
        recovery="the new instance's start removed the dead master's directory",
    )
    assert not left.exists(), "the dead master's directory was not removed"
    assert instance_names(state) == {successor_name}
    assert successor.request("GET", "/api/v1/smoke-test").status == 200
