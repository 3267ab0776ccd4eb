"""The health subsystem in a real gunicorn on 127.0.0.1: drain, storms, hangs, logs.

tests/instance/test_health.py shows how the workers of one instance share it.
"""

import ast
import re
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.support.fault_record import FaultRecorder
from tests.support.gunicorn_process import REPO_ROOT, GunicornFactory, GunicornServer
from tests.support.instances import (
    LIVENESS,
    petsage,
    readiness_once_draining,
    wait_for_status,
)
from tests.support.listeners import http_reply, serving
from tests.support.load import SMOKE_TEST, ClientLoad
from tests.support.logs import messages_at
from tests.support.processes import wait_until

pytestmark = pytest.mark.slow  # real processes: not in the fast tier

PETSAGE = Path(sys.executable).with_name("petsage")


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


SHUTTING_DOWN_IN = re.compile(
    r"Draining: readiness fails now; shutting down in ([\d.]+) s"
)


def test_a_drain_begun_by_the_command_counts_toward_the_sigterms_delay(
    start_gunicorn: GunicornFactory,
) -> None:
    delay = 5.0
    server = start_gunicorn({"PETSAGE_SHUTDOWN_DELAY": f"{delay:g}"})
    wait_for_status(server, "/readyz", 200)
    subprocess.run(
        [str(PETSAGE), "drain", "--instance", str(server.port)],
        env={"PATH": ""},
        check=True,
        timeout=30,
    )
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
    assert 0 < remaining <= delay
    assert server.request("GET", "/readyz").status == 503


# What the instance's log says of a drain begun and cancelled, then of SIGTERM.
READINESS_FAILS = "readiness fails now; requests are still served"
READINESS_BACK = "readiness follows the checks again"
SIGTERM_DRAIN = "Draining: readiness fails now; shutting down in 1.0 s (SIGTERM)"


def run_petsage(*args: str) -> None:
    """Run the ``petsage`` command; it must succeed."""
    result = petsage(*args)
    assert result.returncode == 0, result.stderr


def wait_for_drain_lines(server: GunicornServer, count: int) -> float:
    """Wait until the instance logged ``count`` drain lines at INFO; the seconds."""
    return wait_until(
        lambda: len(messages_at(server, "INFO", "Draining")) >= count,
        LIVENESS,
        f"drain line {count}",
    )


def drain_then_cancel(
    server: GunicornServer, begin: Callable[[], object], cancel: Callable[[], object]
) -> tuple[list[int], float]:
    """Begin a drain, then cancel it, each once the instance logged the one before;
    /readyz after each line, and the longest wait for a line after its action."""
    statuses, waits = [], []
    for count, act in enumerate((begin, cancel), start=1):
        act()
        waits.append(wait_for_drain_lines(server, count))
        statuses.append(server.request("GET", "/readyz").status)
    server.stop()  # its SIGTERM drains for PETSAGE_SHUTDOWN_DELAY=1
    return statuses, max(waits)


def record_operator_drain(
    fault_record: FaultRecorder,
    how: str,
    log: str,
    statuses: list[int],
    wait: float,
) -> None:
    """The fault record's row for a drain begun and cancelled by ``how``."""
    fault_record(
        fault=f"a drain begun and cancelled by {how}",
        injected=f"{how}: a drain, its cancel, then SIGTERM (3 workers, {log} log)",
        load="/readyz once after each line of the instance's log",
        sent=len(statuses),
        failed=int(statuses != [503, 200]),
        lost=0,
        recovery=(
            f"one INFO line each in the instance's log naming {how}, at most"
            f" {wait:.1f} s after the action; then one naming SIGTERM"
        ),
    )


@pytest.mark.fault
def test_the_drain_command_and_its_cancel_are_logged_once_per_instance(
    start_gunicorn: GunicornFactory, fault_record: FaultRecorder
) -> None:
    env = {"PETSAGE_WORKERS": "3", "PETSAGE_SHUTDOWN_DELAY": "1"}
    server = start_gunicorn({**env, "PETSAGE_LOG_FORMAT": "json"})
    wait_for_status(server, "/readyz", 200)
    instance = ("--instance", str(server.port))
    statuses, wait = drain_then_cancel(
        server,
        lambda: run_petsage("drain", *instance),
        lambda: run_petsage("drain", "--cancel", *instance),
    )
    record_operator_drain(fault_record, "petsage drain", "JSON", statuses, wait)
    assert messages_at(server, "INFO", "Draining") == [
        f"Draining begun by petsage drain: {READINESS_FAILS}",
        f"Draining cancelled by petsage drain --cancel: {READINESS_BACK}",
        SIGTERM_DRAIN,
    ]
    assert statuses == [503, 200]


@pytest.mark.fault
def test_a_drain_file_made_and_removed_is_logged_once_per_instance(
    start_gunicorn: GunicornFactory, fault_record: FaultRecorder, tmp_path: Path
) -> None:
    marker = tmp_path / "petsage.drain"
    env = {"PETSAGE_WORKERS": "3", "PETSAGE_SHUTDOWN_DELAY": "1"}
    server = start_gunicorn(
        {**env, "PETSAGE_LOG_FORMAT": "text", "PETSAGE_DRAIN_FILE": str(marker)}
    )
    wait_for_status(server, "/readyz", 200)
    statuses, wait = drain_then_cancel(server, marker.touch, marker.unlink)
    record_operator_drain(fault_record, "the drain file", "text", statuses, wait)
    assert messages_at(server, "INFO", "Draining") == [
        f"Draining begun by the drain file {marker}: {READINESS_FAILS}",
        f"Draining cancelled by removing the drain file {marker}: {READINESS_BACK}",
        SIGTERM_DRAIN,
    ]
    assert statuses == [503, 200]


CONFIG = "gunicorn.conf.py"


def wall_clock_readings(source: str) -> list[str]:
    """Where ``source`` reads the wall clock or a file's time: ``time.time()``,
    ``datetime.now()``, ``st_mtime`` and its kin, ``getmtime()``."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Attribute) and (
            (
                node.attr in {"time", "time_ns"}
                and isinstance(node.value, ast.Name)
                and node.value.id == "time"
            )
            or node.attr in {"st_mtime", "st_mtime_ns", "st_ctime", "getmtime", "now"}
        ):
            found.append(f"line {node.lineno}: {ast.unparse(node)}")
    return found


def test_no_deadline_or_age_reads_the_wall_clock() -> None:
    # Drain deadlines, snapshot ages, leases and heartbeats are all on the monotonic
    # clock, which no wall-clock step (NTP, a resumed VM) moves. The wall clock is
    # read only to stamp what people read: log records and check results' "time".
    stamps = {
        # And gunicorn's own access-log atom for the time of a request (logger.now).
        "petsage/serving/logs.py": 2,
        "petsage/health/refresher.py": 1,
        "petsage/health/shared.py": 1,
    }
    readings = {
        str(path.relative_to(REPO_ROOT)): wall_clock_readings(path.read_text())
        for path in [
            *(REPO_ROOT / "petsage").rglob("*.py"),
            REPO_ROOT / "gunicorn.conf.py",
        ]
    }
    unexpected = {
        path: found
        for path, found in readings.items()
        if len(found) != stamps.get(path, 0)
    }
    assert unexpected == {}
