"""A SIGUSR2 binary upgrade: the old and the new master are two instances.

gunicorn's upgrade re-executes a new master that inherits the listening sockets; the
operator then stops the old one. Neither may steer the other's readiness or delete its
files, and the shared port never answers 503 or refuses while the old one stops.
"""

import os
import re
import signal
import threading
import time
from collections.abc import Iterator
from functools import partial
from pathlib import Path

import pytest

from petsage.instance.directory import InstanceRecord, running_instances
from petsage.instance.memory import InstanceMemory
from tests.support.fault_record import FaultRecorder
from tests.support.gunicorn_process import GunicornFactory, GunicornServer
from tests.support.instances import instance_name, readiness
from tests.support.processes import free_ports, gone, wait_until

pytestmark = pytest.mark.slow  # real processes: not in the fast tier

SMOKE_COUNT = re.compile(
    r'^petsage_http_requests_total\{method="GET",route="/api/v1/smoke-test",'
    r'status="200"\} (\S+)$',
    re.MULTILINE,
)


def smoke_tests_counted(server: GunicornServer) -> float:
    """What the instance's /metrics counts of successful smoke tests."""
    body = server.request("GET", "/metrics").body.decode()
    match = SMOKE_COUNT.search(body)
    return float(match.group(1)) if match else 0.0


@pytest.fixture
def upgraded(
    start_gunicorn: GunicornFactory, tmp_path: Path
) -> Iterator[tuple[GunicornServer, dict[str, str]]]:
    """An instance on a port of its own; its SIGUSR2 successor is stopped after."""
    state = {"PETSAGE_STATE_DIR": str(tmp_path)}
    port = free_ports(1)[0]
    server = start_gunicorn(
        {**state, "PETSAGE_SHUTDOWN_DELAY": "3", "PETSAGE_PUBLIC_METRICS": "true"},
        args=["-b", f"127.0.0.1:{port}"],
    )
    yield server, state
    for record in running_instances(str(tmp_path)):
        if record.pid != server.process.pid:
            os.kill(record.pid, signal.SIGTERM)
            os.kill(record.pid, signal.SIGTERM)  # the second stops at once
            wait_until(partial(gone, record.pid), 40, "the new master exited")


def new_master(server: GunicornServer, state: dict[str, str]) -> InstanceRecord:
    """The instance a SIGUSR2 to ``server`` started, once it listens."""
    server.process.send_signal(signal.SIGUSR2)

    def listening() -> list[InstanceRecord]:
        return [
            record
            for record in running_instances(state["PETSAGE_STATE_DIR"])
            if record.pid != server.process.pid and record.ready
        ]

    wait_until(lambda: bool(listening()), 20, "the new master listening")
    return listening()[0]


def first_cycle_published(record: InstanceRecord) -> bool:
    """Whether the instance ``record`` names has published its first check cycle,
    which its workers answer /readyz from."""
    memory = InstanceMemory.attach(record.pid, record.memory_fd, record.name)
    return memory.read_snapshot() is not None


@pytest.mark.fault
def test_stopping_the_old_master_never_fails_the_shared_port(
    upgraded: tuple[GunicornServer, dict[str, str]], fault_record: FaultRecorder
) -> None:
    server, state = upgraded
    new = new_master(server, state)
    # Both instances serve the port once each has published its first check cycle
    # (a new master's workers answer 503 until then, and on a busy host that takes
    # longer than its workers take to boot).
    for record in running_instances(state["PETSAGE_STATE_DIR"]):
        wait_until(
            partial(first_cycle_published, record), 30, f"pid {record.pid} ready"
        )
    assert {r.pid for r in running_instances(state["PETSAGE_STATE_DIR"])} >= {
        server.process.pid,
        new.pid,
    }
    answers: list[int | None] = []
    stop = threading.Event()

    def poll() -> None:
        while not stop.is_set():
            answers.append(readiness(server.port))
            time.sleep(0.05)

    poller = threading.Thread(target=poll)
    poller.start()
    started = time.monotonic()
    server.process.send_signal(signal.SIGTERM)
    exit_code = server.process.wait(timeout=40)
    stopped = time.monotonic() - started
    time.sleep(0.5)
    stop.set()
    poller.join()
    fault_record(
        fault="SIGUSR2 upgrade, then SIGTERM to the old master",
        injected="SIGUSR2 (a new master on the inherited sockets), then SIGTERM to"
        " the old one",
        load="/readyz on the shared port every 50 ms",
        sent=len(answers),
        failed=sum(1 for answer in answers if answer not in (200, None)),
        lost=answers.count(None),
        recovery=f"none needed: the old master stopped in {stopped:.1f} s without"
        " a drain, the new one stayed ready",
    )
    assert exit_code == 0
    assert set(answers) == {200}, answers
    assert new.alive
    assert "Stopping without a drain" in server.log()


def test_the_new_instances_counts_survive_the_old_masters_exit(
    upgraded: tuple[GunicornServer, dict[str, str]],
) -> None:
    server, state = upgraded
    new = new_master(server, state)
    old = Path(state["PETSAGE_STATE_DIR"], instance_name(server.process.pid))
    assert old.is_dir()
    server.process.send_signal(signal.SIGTERM)
    assert server.process.wait(timeout=40) == 0
    assert Path(new.metrics_directory).is_dir()
    assert not old.exists()
    before = smoke_tests_counted(server)
    for _ in range(50):
        assert server.request("GET", "/api/v1/smoke-test").status == 200
    assert smoke_tests_counted(server) == before + 50


def test_with_preload_the_build_info_reads_one(
    start_gunicorn: GunicornFactory,
) -> None:
    server = start_gunicorn({"PETSAGE_PUBLIC_METRICS": "true"}, args=["--preload"])
    body = server.request("GET", "/metrics").body.decode()
    assert re.search(r"^petsage_build_info\{[^}]*\} 1\.0$", body, re.MULTILINE), body


def test_an_upgrade_shares_the_drain_file_with_the_master_it_came_from(
    start_gunicorn: GunicornFactory, tmp_path: Path
) -> None:
    # A drain file is refused when a running instance has it, but the new master of
    # an upgrade inherits the old one's settings, this one with them.
    state = {
        "PETSAGE_STATE_DIR": str(tmp_path),
        "PETSAGE_DRAIN_FILE": str(tmp_path / "drain"),
    }
    server = start_gunicorn(state, args=["-b", f"127.0.0.1:{free_ports(1)[0]}"])
    try:
        new = new_master(server, state)
        assert new.alive
        assert new.drain_file == state["PETSAGE_DRAIN_FILE"]
        assert "is the drain marker of the running instance" not in server.log()
    finally:
        for record in running_instances(str(tmp_path)):
            if record.pid != server.process.pid:
                os.kill(record.pid, signal.SIGTERM)
                os.kill(record.pid, signal.SIGTERM)
                wait_until(partial(gone, record.pid), 40, "the new master exited")
