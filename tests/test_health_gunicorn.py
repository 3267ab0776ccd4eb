"""The health subsystem in a real gunicorn on 127.0.0.1: drain, storms, hangs, logs.

tests/test_instance_health.py shows how the workers of one instance share it.
"""

import json
import os
import re
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

import pytest

from petsage.instance import HEALTH_SNAPSHOT
from tests.fault_record import FaultRecorder
from tests.gunicorn_process import GunicornFactory, GunicornServer
from tests.listeners import http_reply, refusing, serving
from tests.load import SMOKE_TEST, ClientLoad
from tests.test_reliability import wait_until

pytestmark = pytest.mark.slow  # real processes: not in the fast tier

PETSAGE = Path(sys.executable).with_name("petsage")
# What the master logs once the drain marker is written: readiness fails from then on.
DRAINING = "Draining: readiness fails now"
# Bounds on waiting for what must happen: far longer than it takes on a busy machine.
LIVENESS = 60.0


def wait_for_status(
    server: GunicornServer, path: str, status: int, timeout: float = LIVENESS
) -> float:
    """Probe ``path`` until it answers ``status``; the seconds it took."""
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        if server.request("GET", path, timeout=10).status == status:
            return time.monotonic() - started
        time.sleep(0.02)
    raise AssertionError(f"{path} did not answer {status} within {timeout} s")


def readiness_once_draining(server: GunicornServer) -> int:
    """The answer to the first /readyz sent after the master logged, on SIGTERM, that
    it drains: readiness fails at once, with no moment of 200 left after that."""
    wait_until(lambda: DRAINING in server.log(), LIVENESS, "the master draining")
    return server.request("GET", "/readyz").status


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
        readiness = readiness_once_draining(server)
        to_503 = time.monotonic() - terminated
        load.phase("draining")
        time.sleep(max(0.0, terminated + delay - 0.5 - time.monotonic()))
    exit_code = server.process.wait(timeout=delay + 30)
    stopped_after = time.monotonic() - terminated
    draining = load.phases["draining"]
    print(
        f"\nSIGTERM: readiness {readiness} after {to_503 * 1000:.0f} ms; "
        f"{load.sent} requests, {draining.sent} of them once readiness failed, "
        f"{len(load.failed)} failed; exit {exit_code} after {stopped_after:.1f} s"
    )
    assert readiness == 503
    assert draining.sent > 0, "no request was sent while draining"
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
    with serving(http_reply(200)) as dependency:
        server = start_gunicorn(
            {
                "PETSAGE_CRITICAL_DEPENDENCIES": f"api=http://127.0.0.1:{dependency.port}/",
                # Longer than the test: a probe that waited for the check would not
                # be answered at all.
                "PETSAGE_CHECK_TIMEOUT": "600",
                "PETSAGE_CHECK_PERIOD": "0.5",
            }
        )
        wait_for_status(server, "/readyz", 200)
        dependency.reply = None  # from the next cycle on, the dependency hangs
        wait_until(
            lambda: dependency.still_waiting() == 1, LIVENESS, "the check hanging"
        )
        latencies = []
        for _ in range(100):
            started = time.perf_counter()
            try:
                status = server.request("GET", "/readyz", timeout=LIVENESS).status
            except TimeoutError:
                raise AssertionError("a probe waited for the hung check") from None
            latencies.append(time.perf_counter() - started)
            assert status == 200  # the last cycle's answer
        # The check is still inside its call: its connection waits for an answer.
        hung = dependency.still_waiting()
        print(
            f"\nprobes while a check hangs: median "
            f"{statistics.median(latencies) * 1000:.1f} ms, "
            f"max {max(latencies) * 1000:.1f} ms"
        )
        assert hung == 1, "the check returned during the probes"


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


SHUTTING_DOWN_IN = re.compile(
    r"Draining: readiness fails now; shutting down in ([\d.]+) s"
)


@pytest.mark.fault
@pytest.mark.parametrize(
    "step", [-40.0, 40.0], ids=["clock back 40 s", "clock on 40 s"]
)
def test_a_wall_clock_step_changes_no_drain(
    start_gunicorn: GunicornFactory,
    tmp_path: Path,
    fault_record: FaultRecorder,
    step: float,
) -> None:
    delay = 5.0
    drain_file = tmp_path / "petsage.drain"
    server = start_gunicorn(
        {"PETSAGE_DRAIN_FILE": str(drain_file), "PETSAGE_SHUTDOWN_DELAY": f"{delay:g}"}
    )
    wait_for_status(server, "/readyz", 200)
    subprocess.run(
        [str(PETSAGE), "drain", "--instance", str(server.port)],
        env={"PATH": ""},
        check=True,
        timeout=30,
    )
    # The wall clock steps between `petsage drain` and the SIGTERM (NTP, a VM
    # resumed): a wall-clock time written then now reads `step` seconds off, as does
    # the marker's mtime, which moves with it.
    written = drain_file.stat().st_mtime
    os.utime(drain_file, (written - step, written - step))
    server.process.send_signal(signal.SIGTERM)
    wait_until(
        lambda: any(SHUTTING_DOWN_IN.search(line) for line in server.log_lines()),
        30,
        "the drain's log line",
    )
    [remaining] = [
        float(match.group(1))
        for line in server.log_lines()
        if (match := SHUTTING_DOWN_IN.search(line))
    ]
    still_draining = server.request("GET", "/readyz").status
    fault_record(
        fault=f"wall clock stepped {'back' if step < 0 else 'on'} 40 s during a drain",
        injected=f"petsage drain, the drain marker's time moved {-step:+.0f} s, SIGTERM"
        f" ({delay:g} s drain)",
        load="none",
        sent=1,
        failed=int(still_draining != 503),
        lost=0,
        recovery=f"drain ends {remaining:.1f} s after the SIGTERM (of {delay:g} s)",
    )
    assert 0 < remaining <= delay
    assert still_draining == 503
