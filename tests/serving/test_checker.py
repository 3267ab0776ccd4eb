"""A check is judged by its own verdict, against real gunicorn
(petsage/serving/checker.py, petsage/serving/supervisor.py).

The instance's checker process runs each check in a runner process of its own: a
check holding the GIL for 8 s every cycle (a C call that never lets it go) is
reported as that check timing out, a non-critical one never fails /readyz, a
critical one fails it naming itself, never as stale, and its failure is logged
once per instance; the checker killed is replaced without readiness going stale;
and no checker process holds a listening socket. /readyz is polled on both ports
as a strict kubelet polls it (every 0.25 s, 1 s timeout), at PETSAGE_CHECK_PERIOD=2.
"""

import os
import signal
import time
from collections import Counter
from pathlib import Path

import pytest

from tests.support.apps.exclusive_check import (
    EXCLUSIVE_LOCK_VARIABLE,
    OVERLAP,
    RUN,
    RUN_SECONDS,
)
from tests.support.apps.gil_check import CRITICAL_VARIABLE, HOLD_SECONDS
from tests.support.fault_record import FaultRecorder
from tests.support.gunicorn_process import GunicornFactory, GunicornServer
from tests.support.instances import AUTH, LIVENESS, TOKEN, ReadinessPoller, readiness
from tests.support.management import free_port, get
from tests.support.processes import all_children, checkers, socket_inodes, wait_until
from tests.support.snapshots import published

pytestmark = pytest.mark.slow  # real processes: not in the fast tier

# Polls of each port: 10 s, longer than the check holds the GIL.
POLLS = 40
# SIGHUPs a second apart, as a deploy tool retrying a reload might send them.
RELOADS = 10
WARNS = "[!]gil warn: timed out after 2 s"
FAILS = "gil failed: timed out after 2 s"


def start_instance(
    start_gunicorn: GunicornFactory,
    app: str | None = None,
    critical: bool = False,
    env: dict[str, str] | None = None,
) -> tuple[GunicornServer, list[int]]:
    """3 workers checking every 2 s with a management listener, once /readyz has
    answered on both ports; the instance and its two ports."""
    management = free_port()
    server = start_gunicorn(
        {
            "PETSAGE_WORKERS": "3",
            "PETSAGE_CHECK_PERIOD": "2",
            "PETSAGE_MANAGEMENT_BIND": f"127.0.0.1:{management}",
            "PETSAGE_HEALTH_TOKEN": TOKEN,
            CRITICAL_VARIABLE: "1" if critical else "0",
            **(env or {}),
        },
        app=app,
    )
    ports = [server.port, management]
    wait_until(
        lambda: all(readiness(port) in (200, 503) for port in ports),
        LIVENESS,
        "both ports answering /readyz",
    )
    return server, ports


def wait_ready(ports: list[int]) -> None:
    """Wait until both ports answer /readyz 200: the first cycle is published, and
    the checker's runners are forked."""
    wait_until(
        lambda: all(readiness(port) == 200 for port in ports),
        LIVENESS,
        "both ports ready",
    )


def verbose(port: int) -> str:
    """/readyz?verbose of 127.0.0.1:``port``."""
    return get(port, "/readyz?verbose", AUTH).body.decode()


def polled(ports: list[int]) -> ReadinessPoller:
    """/readyz polled POLLS times on each of ``ports``, as a strict kubelet polls."""
    with ReadinessPoller(ports, timeout=1.0, token=TOKEN) as poller:
        wait_until(
            lambda: len(poller.polls) >= POLLS * len(ports),
            LIVENESS,
            f"{POLLS} polls of each port",
        )
    return poller


def verdict_lines(server: GunicornServer, verdict: str) -> list[str]:
    """The log lines saying the GIL check ``failed`` or ``warns``: its first verdict
    is logged as it is published."""
    said = f"health check gil {verdict}"
    return [line for line in server.log_lines() if said in line]


def record(fault_record: FaultRecorder, fault: str, poller: ReadinessPoller) -> None:
    """The fault record's row for a test that only polled readiness."""
    reasons = "; ".join(f"{count} x {why}" for why, count in poller.reasons.items())
    fault_record(
        fault=fault,
        injected=f"a check holding the GIL {HOLD_SECONDS} s each run (ctypes.PyDLL"
        " sleep), 3 workers, check period 2 s, timeout 2 s",
        load="/readyz?verbose on both ports every 0.25 s, 1 s timeout",
        sent=len(poller.polls),
        failed=poller.failed(),
        lost=poller.lost(),
        recovery=f"none needed{f': {reasons}' if reasons else ''}",
    )


@pytest.mark.fault
def test_a_non_critical_check_holding_the_gil_never_fails_readiness(
    start_gunicorn: GunicornFactory, fault_record: FaultRecorder
) -> None:
    server, ports = start_instance(start_gunicorn, "tests.support.apps.gil_check:app")
    wait_until(
        lambda: verdict_lines(server, "warns") != [], LIVENESS, "the warning logged"
    )
    poller = polled(ports)
    record(fault_record, "a non-critical check holding the GIL", poller)
    assert poller.statuses == [200] * len(poller.polls), poller.reasons
    assert all(WARNS in verbose(port) for port in ports)


@pytest.mark.fault
def test_a_critical_check_holding_the_gil_fails_readiness_naming_itself(
    start_gunicorn: GunicornFactory, fault_record: FaultRecorder
) -> None:
    server, ports = start_instance(
        start_gunicorn, "tests.support.apps.gil_check:app", critical=True
    )
    wait_until(
        lambda: verdict_lines(server, "failed") != [], LIVENESS, "the failure logged"
    )
    poller = polled(ports)
    record(fault_record, "a critical check holding the GIL", poller)
    assert poller.statuses == [503] * len(poller.polls), poller.reasons
    assert set(poller.reasons) == {FAILS}


def test_a_failing_check_is_logged_once_per_instance_across_a_checker_kill(
    start_gunicorn: GunicornFactory,
) -> None:
    server, ports = start_instance(
        start_gunicorn, "tests.support.apps.gil_check:app", critical=True
    )
    wait_until(
        lambda: verdict_lines(server, "failed") != [], LIVENESS, "the failure logged"
    )
    first = published(server)
    assert first is not None
    os.kill(first["checker"], signal.SIGKILL)
    wait_until(
        lambda: (published(server) or first)["checker"] != first["checker"],
        LIVENESS,
        "a new checker publishing",
    )
    polled(ports)  # 10 s: five cycles and more
    assert len(verdict_lines(server, "failed")) == 1, verdict_lines(server, "failed")


@pytest.mark.fault
def test_the_checker_killed_is_replaced_and_readiness_never_goes_stale(
    start_gunicorn: GunicornFactory, fault_record: FaultRecorder
) -> None:
    server, ports = start_instance(start_gunicorn)
    wait_ready(ports)
    (checker,) = checkers(server.process.pid)
    with ReadinessPoller(ports, timeout=1.0, token=TOKEN) as poller:
        os.kill(checker, signal.SIGKILL)
        wait_until(
            lambda: (published(server) or {}).get("checker") not in (None, checker),
            LIVENESS,
            "a new checker publishing",
        )
        replaced = len(poller.polls)
        wait_until(lambda: len(poller.polls) >= replaced + 2 * POLLS, LIVENESS, "polls")
    fault_record(
        fault="the checker process killed",
        injected="SIGKILL to the checker process (3 workers, check period 2 s)",
        load="/readyz?verbose on both ports every 0.25 s, 1 s timeout",
        sent=len(poller.polls),
        failed=poller.failed(),
        lost=poller.lost(),
        recovery="the master started another checker, which published on",
    )
    assert poller.statuses == [200] * len(poller.polls), poller.reasons
    assert checkers(server.process.pid) - {checker}


def exclusive_runs(lock: Path) -> Counter[str]:
    """What the exclusive check's runs noted: ``run`` and ``overlap`` counts."""
    runs = Path(f"{lock}.runs")
    return Counter(runs.read_text().split()) if runs.exists() else Counter()


@pytest.mark.fault
def test_reloads_a_second_apart_never_run_a_check_twice_at_once(
    start_gunicorn: GunicornFactory, fault_record: FaultRecorder, tmp_path: Path
) -> None:
    """A reload's checker runs no check until the old one has finished its cycle and
    exited: a dependency never sees two of the instance's connections, and readiness
    never goes stale over the hand-overs."""
    lock = tmp_path / "exclusive.lock"
    server, ports = start_instance(
        start_gunicorn,
        "tests.support.apps.exclusive_check:app",
        env={EXCLUSIVE_LOCK_VARIABLE: str(lock)},
    )
    wait_ready(ports)
    with ReadinessPoller(ports, timeout=1.0, token=TOKEN) as poller:
        for _ in range(RELOADS):
            server.process.send_signal(signal.SIGHUP)
            time.sleep(1.0)  # the fault's cadence, not a wait for anything
        reloaded = exclusive_runs(lock)[RUN]
        # Cycles of the last reload's checker (and workers' answers from them).
        wait_until(
            lambda: exclusive_runs(lock)[RUN] >= reloaded + 3,
            LIVENESS,
            "three cycles after the last reload",
        )
    noted = exclusive_runs(lock)
    fault_record(
        fault="reloads a second apart with a check that must run alone",
        injected=f"{RELOADS} SIGHUPs 1 s apart; a critical check holding a host-wide"
        f" lock {RUN_SECONDS:g} s per run, 3 workers, check period 2 s",
        load="/readyz?verbose on both ports every 0.25 s, 1 s timeout",
        sent=len(poller.polls),
        failed=poller.failed(),
        lost=poller.lost(),
        recovery=f"none needed: {noted[RUN]} runs, {noted[OVERLAP]} of them beside"
        " another",
    )
    assert noted[OVERLAP] == 0, noted
    assert poller.statuses == [200] * len(poller.polls), poller.reasons


def listening_inodes() -> set[int]:
    """The inodes of every listening TCP socket on the host (IPv4 and IPv6)."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] == "0A":  # LISTEN
                inodes.add(int(fields[9]))
    return inodes


def test_no_checker_process_holds_a_listening_socket(
    start_gunicorn: GunicornFactory,
) -> None:
    server, ports = start_instance(start_gunicorn)
    wait_ready(ports)
    (checker,) = checkers(server.process.pid)
    processes = {checker, *all_children(checker)}
    assert len(processes) >= 2  # the checker and a runner per check
    listening = listening_inodes()
    assert socket_inodes(server.process.pid) & listening  # the master's
    for pid in processes:
        assert not socket_inodes(pid) & listening, pid


def test_an_application_that_is_not_petsages_gets_no_checker(
    start_gunicorn: GunicornFactory, tmp_path: Path
) -> None:
    """PetSage's settings serving another application (a benchmark baseline): its
    checker finds no health state, says so once and is not started again."""
    port = free_port()
    log = tmp_path / "gunicorn.log"
    with log.open("wb") as output:
        server = start_gunicorn(
            {},
            "bench.apps.bare_wsgi:app",
            ["-b", f"127.0.0.1:{port}"],
            None,
            output.fileno(),
        )
    idle = "The application has no PetSage health checks: no health checker"
    wait_until(lambda: idle in log.read_text(), LIVENESS, "the master's idle line")
    # Requests the workers serve meanwhile: the master's loop passes many times.
    for _ in range(20):
        assert get(port, "/livez").status == 200
    text = log.read_text()
    assert text.count("Health checker started") == 1, text
    assert "Health checker (pid" not in text, text
    assert checkers(server.process.pid) == set()
