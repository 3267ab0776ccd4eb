"""The health subsystem in a real gunicorn on 127.0.0.1: drain, storms, hangs, logs.

tests/test_instance_health.py shows how the workers of one instance share it.
"""

import json
import os
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

from petsage.instance import HEALTH_SNAPSHOT
from tests.gunicorn_process import GunicornFactory, GunicornServer
from tests.listeners import refusing, serving
from tests.load import SMOKE_TEST, ClientLoad

PETSAGE = Path(sys.executable).with_name("petsage")


def wait_for_status(
    server: GunicornServer, path: str, status: int, timeout: float = 10.0
) -> float:
    """Probe ``path`` until it answers ``status``; the seconds it took."""
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        if server.request("GET", path, timeout=2).status == status:
            return time.monotonic() - started
        time.sleep(0.02)
    raise AssertionError(f"{path} did not answer {status} within {timeout} s")


def test_sigterm_drains_under_load_then_exits_cleanly(
    start_gunicorn: GunicornFactory,
) -> None:
    delay = 3.0
    server = start_gunicorn({"PETSAGE_SHUTDOWN_DELAY": str(delay)})
    wait_for_status(server, "/readyz", 200)
    with ClientLoad(server.port) as load:
        time.sleep(0.5)
        terminated = time.monotonic()
        server.process.send_signal(signal.SIGTERM)
        to_503 = wait_for_status(server, "/readyz", 503, timeout=1.0)
        time.sleep(max(0.0, terminated + delay - 0.5 - time.monotonic()))
    exit_code = server.process.wait(timeout=delay + 30)
    stopped_after = time.monotonic() - terminated
    print(
        f"\nSIGTERM: readiness 503 after {to_503 * 1000:.0f} ms; "
        f"{load.sent} requests during the drain, {len(load.failed)} failed; "
        f"exit {exit_code} after {stopped_after:.1f} s"
    )
    assert to_503 < 1.0
    assert load.sent > 50
    assert load.failed == []
    assert exit_code == 0
    assert stopped_after >= delay - 0.2
    assert "Shutting down: Master" in server.log()


def test_drain_command_fails_readiness_in_every_worker(
    start_gunicorn: GunicornFactory, tmp_path: Path
) -> None:
    drain_file = str(tmp_path / "petsage.drain")
    server = start_gunicorn({"PETSAGE_DRAIN_FILE": drain_file, "PETSAGE_WORKERS": "3"})
    wait_for_status(server, "/readyz", 200)
    env = {"PATH": ""}
    instance = ["--instance", str(server.port)]
    subprocess.run([str(PETSAGE), "drain", *instance], env=env, check=True, timeout=30)
    answers = {server.request("GET", "/readyz").status for _ in range(30)}
    smoke = {server.request("GET", SMOKE_TEST).status for _ in range(10)}
    subprocess.run(
        [str(PETSAGE), "drain", "--cancel", *instance], env=env, check=True, timeout=30
    )
    after = {server.request("GET", "/readyz").status for _ in range(30)}
    assert answers == {503}
    assert smoke == {200}
    assert after == {200}


def test_a_burst_of_probes_runs_no_check(start_gunicorn: GunicornFactory) -> None:
    with serving(b"") as dependency:
        server = start_gunicorn(
            {
                "PETSAGE_CRITICAL_DEPENDENCIES": f"db=tcp://127.0.0.1:{dependency.port}",
                "PETSAGE_CHECK_PERIOD": "600",
            }
        )
        wait_for_status(server, "/readyz", 200)
        deadline = time.monotonic() + 10
        while dependency.accepted < 1 and time.monotonic() < deadline:
            time.sleep(0.02)
        before = dependency.accepted
        statuses = [
            server.request("GET", path).status
            for path in ("/livez", "/readyz", "/health", "/readyz/db") * 250
        ]
        print(
            f"\n1000 probes; dependency connections before {before}, "
            f"after {dependency.accepted}"
        )
        assert set(statuses) == {200}
        assert before == 1  # one first cycle for the instance, whatever its workers
        assert dependency.accepted == before


def test_a_hung_dependency_never_delays_a_probe(
    start_gunicorn: GunicornFactory,
) -> None:
    with serving(None) as hanging:
        server = start_gunicorn(
            {
                "PETSAGE_CRITICAL_DEPENDENCIES": f"api=http://127.0.0.1:{hanging.port}/",
                "PETSAGE_CHECK_TIMEOUT": "1",
                "PETSAGE_CHECK_PERIOD": "0.5",
            }
        )
        wait_for_status(server, "/readyz/startup", 200)
        latencies = []
        for _ in range(100):
            started = time.perf_counter()
            status = server.request("GET", "/readyz").status
            latencies.append(time.perf_counter() - started)
            assert status == 503
        print(
            f"\nprobes while a check hangs: median "
            f"{statistics.median(latencies) * 1000:.1f} ms, "
            f"max {max(latencies) * 1000:.1f} ms"
        )
        # A probe that waited for the check would take its whole 1 s timeout.
        assert max(latencies) < 0.5


def test_a_failing_dependency_is_logged_once_per_instance_across_leaders(
    start_gunicorn: GunicornFactory,
) -> None:
    with refusing() as port:
        server = start_gunicorn(
            {
                "PETSAGE_CRITICAL_DEPENDENCIES": f"db=tcp://127.0.0.1:{port}",
                "PETSAGE_CHECK_PERIOD": "0.1",
            }
        )
        wait_for_status(server, "/readyz/startup", 200)
        time.sleep(1.0)  # several more failing cycles
        leader = leader_of(server)
        os.kill(leader, signal.SIGTERM)  # another worker carries on
        deadline = time.monotonic() + 10
        while leader_of(server) == leader and time.monotonic() < deadline:
            time.sleep(0.02)
        time.sleep(0.5)  # several failing cycles under the new leader
        server.stop()
    lines = server.log().splitlines()
    failures = [
        line
        for line in lines
        if "health check db failed: ConnectionRefusedError" in line
    ]
    leaders = [line for line in lines if "now runs the instance's health" in line]
    assert len(leaders) >= 2
    assert len(failures) == 1  # PETSAGE_WORKERS=2, and two leaders


def leader_of(server: GunicornServer) -> int:
    """The pid of the worker that runs ``server``'s checks, as it published."""
    path = Path("/dev/shm") / f"petsage-{server.process.pid}" / HEALTH_SNAPSHOT
    leader: int = json.loads(path.read_text())["leader"]
    return leader
