"""Probes while every worker thread is busy: the management listener still answers."""

import threading
import time
from http.client import HTTPException

import pytest

from tests.support.apps.slow import SLOW_SECONDS
from tests.support.fault_record import FaultRecorder
from tests.support.gunicorn_process import GunicornFactory, http_request
from tests.support.load import Tally
from tests.support.management import free_port

pytestmark = pytest.mark.slow  # real processes: not in the fast tier

WORKERS, THREADS = 2, 2


def probe_for(port: int, path: str, seconds: float) -> Tally:
    """Probe ``path`` with the kubelet's 1 s timeout for ``seconds``, tallied."""
    tally = Tally()
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        tally.sent += 1
        try:
            status = http_request(port, "GET", path, timeout=1.0).status
            if status != 200:
                tally.failed.append(f"{path}: HTTP {status}")
        except (OSError, HTTPException) as error:
            tally.failed.append(f"{path}: {error!r}")
            tally.lost += 1
        time.sleep(0.1)
    return tally


def record(
    results: dict[str, Tally], key: str, port: int, path: str, seconds: float
) -> None:
    """Probe, and keep the tally under ``key``."""
    results[key] = probe_for(port, path, seconds)


def wait_until_ready(port: int, seconds: float = 10) -> None:
    """Ask /readyz until it answers 200 or ``seconds`` pass (a failure shows later)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            if http_request(port, "GET", "/readyz", timeout=1).status == 200:
                break
        except OSError:
            time.sleep(0.1)


def start_slow_requests(port: int, count: int) -> list[threading.Thread]:
    """``count`` threads, started, each sending /slow to ``port``."""
    slow = [
        threading.Thread(
            target=http_request,
            args=(port, "GET", "/slow"),
            kwargs={"timeout": 30},
        )
        for _ in range(count)
    ]
    for thread in slow:
        thread.start()
    return slow


def probe_both_ports(
    main_port: int, probe_port: int, seconds: float
) -> dict[str, Tally]:
    """Probe /livez on ``main_port``, /livez and /readyz on ``probe_port``, at once."""
    results: dict[str, Tally] = {}
    probes = [
        threading.Thread(target=record, args=(results, key, port, path, seconds))
        for key, port, path in (
            ("main /livez", main_port, "/livez"),
            ("listener /livez", probe_port, "/livez"),
            ("listener /readyz", probe_port, "/readyz"),
        )
    ]
    for thread in probes:
        thread.start()
    for thread in probes:
        thread.join(timeout=60)
    return results


def add_up(results: dict[str, Tally], busy: int, listener: Tally, main: Tally) -> None:
    """Sum the listener's probes into ``listener``, a full main port's into ``main``."""
    for key, tally in results.items():
        if key.startswith("listener"):
            total = listener
        elif busy >= THREADS:
            total = main
        else:
            continue
        total.sent += tally.sent
        total.failed += tally.failed
        total.lost += tally.lost


def record_busy_threads(
    fault_record: FaultRecorder, levels: tuple[int, ...], listener: Tally, main: Tally
) -> None:
    """The fault record's rows: the management listener, then the main port."""
    threads = f"{WORKERS} workers x {THREADS} threads"
    fault_record(
        fault="every thread busy, management listener",
        injected=(
            f"{', '.join(map(str, levels))} slow ({SLOW_SECONDS:.0f} s) requests in "
            f"turn on {threads}"
        ),
        load=(
            "/livez and /readyz probes on the management listener every 0.1 s, "
            "1 s timeout"
        ),
        recovery="none needed",
        **listener.counts(),
    )
    fault_record(
        fault="every thread busy, main port",
        injected=(
            f"{', '.join(str(n) for n in levels if n >= THREADS)} slow "
            f"({SLOW_SECONDS:.0f} s) requests in turn on {threads}"
        ),
        load="/livez probe on the main port every 0.1 s, 1 s timeout",
        recovery=f"waits for a free thread (slow requests take {SLOW_SECONDS:.0f} s)",
        **main.counts(),
    )


@pytest.mark.fault
def test_probes_answer_while_every_thread_is_busy(
    start_gunicorn: GunicornFactory, fault_record: FaultRecorder
) -> None:
    probe_port = free_port()
    server = start_gunicorn(
        {
            "PETSAGE_WORKERS": str(WORKERS),
            "PETSAGE_THREADS": str(THREADS),
            "PETSAGE_MANAGEMENT_BIND": f"127.0.0.1:{probe_port}",
        },
        app="tests.support.apps.slow:app",
    )
    wait_until_ready(probe_port)
    capacity = WORKERS * THREADS
    lines = []
    # For the fault record: the listener over every level, the main port over those
    # that can fill one worker's threads (with 1 slow request it answers, as it should).
    listener, main = Tally(), Tally()
    levels = (1, capacity // 2, capacity, 2 * capacity)
    for busy in levels:
        slow = start_slow_requests(server.port, busy)
        time.sleep(0.3)  # the slow requests take their threads
        results = probe_both_ports(server.port, probe_port, SLOW_SECONDS - 0.6)
        for thread in slow:
            thread.join(timeout=60)
        lines.append(
            f"{busy} slow requests ({capacity} threads): "
            + ", ".join(
                f"{key} {tally.sent} sent {len(tally.failed)} failed"
                for key, tally in results.items()
            )
        )
        add_up(results, busy, listener, main)
    print("\n" + "\n".join(lines))
    record_busy_threads(fault_record, levels, listener, main)
    assert listener.failed == [], listener.failed
