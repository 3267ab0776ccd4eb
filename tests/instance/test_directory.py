"""Several PetSage instances on one host: drain state belongs to one gunicorn master.

Operators give binds on gunicorn's command line, run blue and green on one port with
``--reuse-port``, and kill masters; each test starts real gunicorn processes on
127.0.0.1 the way they do, with the default state directory unless the test is about
what an instance leaves in it.
"""

import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from functools import partial
from pathlib import Path

import pytest

from petsage.instance.directory import (
    InstanceRecord,
    running_instances,
)
from tests.support.fault_record import FaultRecorder
from tests.support.gunicorn_process import (
    GUNICORN,
    REPO_ROOT,
    GunicornFactory,
    GunicornServer,
)
from tests.support.instances import (
    instance_directory,
    instance_name,
    petsage,
    readiness,
)
from tests.support.load import ClientLoad
from tests.support.processes import (
    answers,
    children,
    free_ports,
    wait_for_workers_of,
    wait_until,
)
from tests.support.proxies import CLIENT_TIMEOUT, DRAIN_DELAY, haproxy, needs_haproxy

pytestmark = pytest.mark.slow  # real processes: not in the fast tier

# Instances in tests/support/gunicorn_process.py have no drain delay unless given one.
DRAINING = {"PETSAGE_SHUTDOWN_DELAY": "2"}


def ready(port: int) -> bool:
    """Whether /readyz of 127.0.0.1:``port`` answers 200."""
    return readiness(port) == 200


def poll_readiness(port: int, seconds: float) -> list[int | None]:
    """/readyz answers of ``port``, every 50 ms for ``seconds``."""
    answers = []
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        answers.append(readiness(port))
        time.sleep(0.05)
    return answers


def kill_master(server: GunicornServer, workers: set[int]) -> None:
    """SIGKILL ``server``'s master, then wait until its orphaned ``workers`` exit.

    Orphaned workers notice their master is gone and exit; then the port is free.
    """
    server.process.send_signal(signal.SIGKILL)
    server.process.wait()
    wait_until(
        lambda: not any(Path(f"/proc/{pid}").exists() for pid in workers),
        15,
        "the orphaned workers exited",
    )


@pytest.fixture
def state(tmp_path: Path) -> Iterator[dict[str, str]]:
    """A state directory of the test's own, for tests that count what is in it."""
    directory = tmp_path / "state"
    directory.mkdir()
    yield {"PETSAGE_STATE_DIR": str(directory)}


@pytest.mark.fault
def test_sigterm_to_one_instance_leaves_the_other_ready(
    start_gunicorn: GunicornFactory, fault_record: FaultRecorder
) -> None:
    first, second = free_ports(2)
    draining = start_gunicorn(DRAINING, args=["-b", f"127.0.0.1:{first}"])
    start_gunicorn(DRAINING, args=["-b", f"127.0.0.1:{second}"])
    # A worker answers before the instance's first check cycle is published: the
    # test asserts that the second stays ready, so it must be ready first.
    for port in (first, second):
        wait_until(partial(ready, port), 10, "both instances ready")
    with ClientLoad(second, threads=2) as load:
        draining.process.send_signal(signal.SIGTERM)
        wait_until(lambda: readiness(first) == 503, 2, "the first instance draining")
        answers = poll_readiness(second, 2.5)
    assert draining.process.wait(timeout=30) == 0
    fault_record(
        fault="SIGTERM to another instance on the host",
        injected="two instances bound with -b; SIGTERM to the first (2 s drain)",
        load="2 client threads on the second instance, smoke test",
        recovery="none needed: the second stayed ready",
        **load.total.counts(),
    )
    assert set(answers) == {200}, answers
    assert load.failed == []


@pytest.mark.fault
def test_blue_green_on_one_port_drains_only_the_old(
    start_gunicorn: GunicornFactory, fault_record: FaultRecorder
) -> None:
    shared, blue_management, green_management = free_ports(3)
    both = ["-b", f"127.0.0.1:{shared}", "--reuse-port"]
    blue = start_gunicorn(
        {**DRAINING, "PETSAGE_MANAGEMENT_BIND": f"127.0.0.1:{blue_management}"},
        args=both,
    )
    green = start_gunicorn(
        {**DRAINING, "PETSAGE_MANAGEMENT_BIND": f"127.0.0.1:{green_management}"},
        args=both,
    )
    assert green.port == blue.port == shared
    for management in (blue_management, green_management):
        wait_until(partial(ready, management), 10, "both instances ready")
    with ClientLoad(green_management, threads=1, paths=["/readyz"]) as load:
        blue.process.send_signal(signal.SIGTERM)
        wait_until(lambda: readiness(blue_management) == 503, 2, "blue draining")
        answers = poll_readiness(green_management, 2.5)
    assert blue.process.wait(timeout=30) == 0
    after = poll_readiness(shared, 0.5)
    fault_record(
        fault="stopping blue while green shares its port (--reuse-port)",
        injected="two masters on one port with --reuse-port; SIGTERM to the older",
        load="1 client thread polling green's /readyz on its management listener",
        recovery="none needed: green stayed ready and took the port alone",
        **load.total.counts(),
    )
    assert set(answers) == {200}, answers
    assert set(after) == {200}, after
    assert load.failed == []


def bind_ways(tmp_path: Path, port: int) -> dict[str, tuple[dict[str, str], list[str]]]:
    """Each way an operator gives gunicorn its address: environment and arguments."""
    address = f"127.0.0.1:{port}"
    override = tmp_path / "override.conf.py"
    override.write_text(
        f"exec(open({str(REPO_ROOT / 'gunicorn.conf.py')!r}).read())\n"
        f"bind = [{address!r}]\n"
    )
    return {
        "PETSAGE_BIND": ({"PETSAGE_BIND": address}, []),
        "-b": ({}, ["-b", address]),
        "--bind": ({}, [f"--bind={address}"]),
        "GUNICORN_CMD_ARGS": ({"GUNICORN_CMD_ARGS": f"--bind {address}"}, []),
        "config override": ({}, ["-c", str(override)]),
        "several, one a unix socket": (
            {},
            ["-b", address, "-b", f"unix:{tmp_path / 'petsage.sock'}"],
        ),
    }


@pytest.mark.parametrize(
    "way",
    [
        "PETSAGE_BIND",
        "-b",
        "--bind",
        "GUNICORN_CMD_ARGS",
        "config override",
        "several, one a unix socket",
    ],
)
def test_drain_names_one_instance_however_it_was_bound(
    start_gunicorn: GunicornFactory,
    tmp_path: Path,
    state: dict[str, str],
    way: str,
) -> None:
    port, other_port = free_ports(2)
    env, args = bind_ways(tmp_path, port)[way]
    target = start_gunicorn({**state, **env}, args=args)
    bystander = start_gunicorn(state, args=["-b", f"127.0.0.1:{other_port}"])
    assert target.port == port
    record = json.loads(
        (
            instance_directory(target, state["PETSAGE_STATE_DIR"]) / "instance.json"
        ).read_text()
    )
    result = petsage("drain", "--instance", str(port), env=state)
    assert result.returncode == 0, result.stderr
    assert f"pid {target.process.pid} (127.0.0.1:{port}" in result.stdout
    assert f"127.0.0.1:{port}" in record["binds"]
    assert readiness(port) == 503
    assert readiness(other_port) == 200
    assert bystander.request("GET", "/api/v1/smoke-test").status == 200
    assert target.request("GET", "/api/v1/smoke-test").status == 200


def test_drain_by_unix_socket_address(
    start_gunicorn: GunicornFactory, tmp_path: Path, state: dict[str, str]
) -> None:
    port = free_ports(1)[0]
    unix = f"unix:{tmp_path / 'petsage.sock'}"
    start_gunicorn(state, args=["-b", f"127.0.0.1:{port}", "-b", unix])
    result = petsage("drain", "--instance", unix, env=state)
    assert result.returncode == 0, result.stderr
    assert unix in result.stdout
    assert readiness(port) == 503
    probe = petsage("probe", "readyz", env=state)
    assert probe.returncode == 1
    assert "answered 503" in probe.stderr


class TestDrainCommand:
    """``petsage drain`` says which instance it drains, and fails when it cannot."""

    def test_with_no_instance_it_says_so_and_fails(self, state: dict[str, str]) -> None:
        result = petsage("drain", env=state)
        assert result.returncode == 1
        assert "no running PetSage instance" in result.stderr
        assert "draining" not in result.stdout

    def test_with_one_instance_it_needs_no_argument(
        self, start_gunicorn: GunicornFactory, state: dict[str, str]
    ) -> None:
        server = start_gunicorn(state)
        result = petsage("drain", env=state)
        assert result.returncode == 0, result.stderr
        assert f"pid {server.process.pid} (127.0.0.1:{server.port})" in result.stdout
        assert readiness(server.port) == 503
        cancelled = petsage("drain", "--cancel", env=state)
        assert cancelled.returncode == 0, cancelled.stderr
        assert "cancelled" in cancelled.stdout
        assert readiness(server.port) == 200

    def test_with_several_it_asks_which(
        self, start_gunicorn: GunicornFactory, state: dict[str, str]
    ) -> None:
        servers = [start_gunicorn(state), start_gunicorn(state)]
        result = petsage("drain", env=state)
        assert result.returncode == 64
        for server in servers:
            assert f"pid {server.process.pid}" in result.stderr
            assert readiness(server.port) == 200

    def test_a_name_that_matches_nothing_fails(
        self, start_gunicorn: GunicornFactory, state: dict[str, str]
    ) -> None:
        server = start_gunicorn(state)
        result = petsage("drain", "--instance", "127.0.0.1:1", env=state)
        assert result.returncode == 1
        assert "no running PetSage instance named '127.0.0.1:1'" in result.stderr
        assert readiness(server.port) == 200

    def test_cancel_says_when_there_was_nothing_to_cancel(
        self, start_gunicorn: GunicornFactory, state: dict[str, str]
    ) -> None:
        start_gunicorn(state)
        result = petsage("drain", "--cancel", env=state)
        assert result.returncode == 0
        assert "was not draining" in result.stdout
        assert "removed" not in result.stdout

    def test_a_shutdown_drain_cannot_be_cancelled(
        self, start_gunicorn: GunicornFactory, state: dict[str, str]
    ) -> None:
        server = start_gunicorn({**state, "PETSAGE_SHUTDOWN_DELAY": "3"})
        server.process.send_signal(signal.SIGTERM)
        wait_until(lambda: readiness(server.port) == 503, 2, "draining")
        result = petsage("drain", "--cancel", env=state)
        assert result.returncode == 1
        assert "shutting down" in result.stderr
        assert readiness(server.port) == 503
        assert server.process.wait(timeout=30) == 0


@pytest.mark.fault
def test_a_killed_masters_marker_never_drains_the_next_instance(
    start_gunicorn: GunicornFactory,
    fault_record: FaultRecorder,
    state: dict[str, str],
) -> None:
    # A state directory of its own: any instance starting on the host would remove
    # the dead master's directory, and this test looks at who does.
    port = free_ports(1)[0]
    env = {**DRAINING, **state}
    killed = start_gunicorn(env, args=["-b", f"127.0.0.1:{port}"])
    left = instance_directory(killed, state["PETSAGE_STATE_DIR"])
    drained = petsage("drain", "--instance", str(killed.process.pid), env=state)
    assert drained.returncode == 0
    workers = children(killed.process.pid)
    kill_master(killed, workers)
    assert left.exists()
    started = time.monotonic()
    successor = start_gunicorn(env, args=["-b", f"127.0.0.1:{port}"])
    ready = wait_until(lambda: readiness(port) == 200, 10, "the successor ready")
    answers = poll_readiness(port, 1.0)
    fault_record(
        fault="master killed with SIGKILL while draining",
        injected="petsage drain, then SIGKILL to the master; a new one on its port",
        load="none",
        sent=0,
        failed=0,
        lost=0,
        recovery=f"new instance ready {time.monotonic() - started - 1.0:.1f} s"
        f" after its start ({ready:.1f} s after it listened)",
    )
    assert set(answers) == {200}
    assert not left.exists(), "the dead master's directory was not removed"
    assert successor.request("GET", "/api/v1/smoke-test").status == 200


@pytest.mark.parametrize(
    ("how", "env", "args"),
    [
        ("bad setting", {"PETSAGE_WORKERS": "0"}, []),
        ("bad drain file", {"PETSAGE_DRAIN_FILE": "/no/such/dir/drain"}, []),
        ("empty drain file", {"PETSAGE_DRAIN_FILE": ""}, []),
        ("bad state directory", {"PETSAGE_STATE_DIR": "/no/such/dir"}, []),
        ("--check-config", {}, ["--check-config"]),
        ("port in use", {}, ["-b", "PORT-IN-USE"]),
    ],
)
def test_a_start_that_fails_leaves_nothing_behind(
    how: str, env: dict[str, str], args: list[str], tmp_path: Path
) -> None:
    # A state directory of its own: other instances (other tests running beside this
    # one) come and go in the default one.
    env = {"PETSAGE_STATE_DIR": str(tmp_path), **env}
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        command = [a.replace("PORT-IN-USE", f"127.0.0.1:{port}") for a in args]
        process = subprocess.run(
            [sys.executable, "-m", "gunicorn", *command],
            cwd=REPO_ROOT,
            env={**os.environ, "PETSAGE_BIND": "127.0.0.1:0", **env},
            capture_output=True,
            text=True,
            timeout=60,
        )
    output = process.stdout + process.stderr
    if how == "--check-config":
        assert process.returncode == 0, output
    else:
        assert process.returncode != 0, output
    if "drain file" in how:
        assert (
            output.strip().splitlines()[-1].startswith("petsage: PETSAGE_DRAIN_FILE=")
        ), output
    left = sorted(path.name for path in tmp_path.iterdir())
    assert left == [], f"{how} left {left}"


def test_drain_bookkeeping_never_stops_a_graceful_shutdown(
    start_gunicorn: GunicornFactory, tmp_path: Path
) -> None:
    directory = tmp_path / "marker"
    directory.mkdir()
    server = start_gunicorn(
        {"PETSAGE_DRAIN_FILE": str(directory / "drain"), **DRAINING}
    )
    directory.rmdir()
    with ClientLoad(server.port, threads=2) as load:
        server.process.send_signal(signal.SIGTERM)
        # The drain is in the memory the master shares with its workers: the
        # marker's directory is gone, and readiness fails all the same.
        wait_until(lambda: readiness(server.port) == 503, 30, "the drain")
        sent = load.sent
        wait_until(lambda: load.sent > sent + 10, 30, "requests served while draining")
    assert server.process.wait(timeout=30) == 0
    assert load.sent > 10
    assert load.failed == []


def test_an_unknown_variable_is_warned_about_once_in_the_log_format(
    start_gunicorn: GunicornFactory,
) -> None:
    server = start_gunicorn({"PETSAGE_NO_SUCH_SETTING": "1", "PETSAGE_WORKERS": "3"})
    server.request("GET", "/readyz")
    lines = [line for line in server.log_lines() if "NO_SUCH_SETTING" in line]
    assert len(lines) == 1, lines
    assert json.loads(lines[0])["level"] == "WARNING"


class TestProbeCommand:
    """``petsage probe`` asks the instance where it really listens."""

    @pytest.mark.parametrize("host", ["127.0.0.2", "[::1]", "0.0.0.0"])
    def test_it_reaches_the_bound_address(
        self, start_gunicorn: GunicornFactory, state: dict[str, str], host: str
    ) -> None:
        if host == "[::1]" and not socket.has_ipv6:
            pytest.skip("no IPv6 on this host")
        port = free_ports(1)[0]
        start_gunicorn(state, args=["-b", f"{host}:{port}", "-b", "127.0.0.1:0"])
        result = petsage("probe", env=state)
        assert result.returncode == 0, result.stderr

    def test_a_path_without_a_slash_is_accepted(
        self, start_gunicorn: GunicornFactory, state: dict[str, str]
    ) -> None:
        start_gunicorn(state)
        assert petsage("probe", "livez", env=state).returncode == 0
        assert petsage("probe", "/readyz", env=state).returncode == 0

    def test_with_no_instance_it_fails(self, state: dict[str, str]) -> None:
        result = petsage("probe", env=state)
        assert result.returncode == 1
        assert "no running PetSage instance" in result.stderr


@needs_haproxy
@pytest.mark.fault
def test_rolling_restart_behind_haproxy_with_binds_given_by_b(
    start_gunicorn: GunicornFactory, tmp_path: Path, fault_record: FaultRecorder
) -> None:
    front, *ports = free_ports(3)
    names = ["petsage1", "petsage2"]  # the server names in deploy/haproxy.cfg
    delay = {"PETSAGE_SHUTDOWN_DELAY": str(DRAIN_DELAY)}

    def start_instance(port: int) -> GunicornServer:
        return start_gunicorn(delay, args=["-b", f"127.0.0.1:{port}"])

    servers = [start_instance(port) for port in ports]
    recoveries = []
    with haproxy(tmp_path, front, ports) as proxy:
        for name in names:
            wait_until(partial(proxy.in_rotation, name), 10, f"{name} UP")
        with ClientLoad(front, threads=4, pause=0.01, timeout=CLIENT_TIMEOUT) as load:
            time.sleep(1.0)
            for index, name in enumerate(names):
                servers[index].process.send_signal(signal.SIGTERM)
                out = wait_until(
                    partial(proxy.out_of_rotation, name), 10, f"{name} DOWN"
                )
                servers[index].process.wait(timeout=60)
                servers[index] = start_instance(ports[index])
                back = wait_until(partial(proxy.in_rotation, name), 15, f"{name} UP")
                recoveries.append(f"{name} out {out:.1f} s, new one in {back:.1f} s")
            time.sleep(1.0)
        unanswered = proxy.failed_requests()
    fault_record(
        fault="rolling restart behind HAProxy, binds given by -b",
        injected=f"SIGTERM ({DRAIN_DELAY:.0f} s drain) and restart of each of 2"
        " instances bound with -b, in turn",
        load="4 client threads through HAProxy, new connection per request",
        recovery="; ".join(recoveries),
        **load.total.counts(),
    )
    assert load.sent > 100
    assert load.failed == [], load.failed[:10]
    assert unanswered == [], unanswered[:10]


def test_only_the_metrics_librarys_files_are_ever_deleted(
    start_gunicorn: GunicornFactory, tmp_path: Path, state: dict[str, str]
) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    unrelated = shared / "inventory.db"
    with sqlite3.connect(unrelated) as database:
        database.execute("CREATE TABLE pets (name TEXT)")
    database.close()
    env = {**state, "PROMETHEUS_MULTIPROC_DIR": str(shared)}
    killed = start_gunicorn(env)
    killed.request("GET", "/api/v1/smoke-test")
    own = shared / instance_name(killed.process.pid)
    assert list(own.glob("*.db")), "the workers keep their metrics in a subdirectory"
    workers = children(killed.process.pid)
    kill_master(killed, workers)
    stopped = start_gunicorn(env)
    stopped.request("GET", "/api/v1/smoke-test")
    assert not own.exists(), "a dead master's metrics were left"
    stopped.stop()
    assert sorted(path.name for path in shared.iterdir()) == ["inventory.db"]
    with sqlite3.connect(unrelated) as database:
        assert database.execute("SELECT count(*) FROM pets").fetchone() == (0,)
    database.close()


def test_a_daemon_keeps_its_metrics_directory_over_a_reload(tmp_path: Path) -> None:
    # gunicorn --daemon forks after reading the config: the master's pid changes,
    # and a reload reads the config again under the new pid.
    port = free_ports(1)[0]
    env = {
        **os.environ,
        "PETSAGE_STATE_DIR": str(tmp_path),
        "PETSAGE_BIND": f"127.0.0.1:{port}",
        "PETSAGE_WORKERS": "2",
        "PETSAGE_SHUTDOWN_DELAY": "0",
    }
    subprocess.run(
        [GUNICORN, "--daemon"], cwd=REPO_ROOT, env=env, check=True, timeout=60
    )
    records: list[InstanceRecord] = []

    def listening() -> bool:
        records[:] = [r for r in running_instances(str(tmp_path)) if r.ready]
        return bool(records)

    wait_until(listening, 30, "the daemon listening")
    daemon = records[0].pid
    try:
        before = children(daemon)
        os.kill(daemon, signal.SIGHUP)
        wait_until(
            lambda: len(children(daemon)) == 2 and not children(daemon) & before,
            60,
            "the reload's workers",
        )
        # Each has loaded the application (and made its metrics files), on a busy
        # host seconds after its fork, while the reload's checker loads it too.
        workers = wait_for_workers_of(daemon, port, 2)
        for _ in range(20):
            assert answers(port, "/api/v1/smoke-test") == 200
        # The reload's workers count their requests where the instance's scrapes
        # read them.
        metrics = Path(records[0].metrics_directory)
        for worker in workers:
            assert list(metrics.glob(f"*_{worker}.db")), f"worker {worker}'s metrics"
    finally:
        os.kill(daemon, signal.SIGTERM)
        os.kill(daemon, signal.SIGTERM)
        wait_until(lambda: not Path(f"/proc/{daemon}").exists(), 60, "daemon gone")
