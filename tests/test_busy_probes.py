"""Probes while every worker thread is busy: the probe listener still answers."""

import socket
import threading
import time
from http.client import HTTPException

from tests.apps.slow import SLOW_SECONDS
from tests.gunicorn_process import GunicornFactory, http_request

WORKERS, THREADS = 2, 2


def free_port() -> int:
    """A port on 127.0.0.1 that nothing listens on now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def probe_for(port: int, path: str, seconds: float) -> tuple[int, int]:
    """Probe ``path`` with the kubelet's 1 s timeout for ``seconds``: (sent, failed)."""
    sent = failed = 0
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        sent += 1
        try:
            if http_request(port, "GET", path, timeout=1.0).status != 200:
                failed += 1
        except (OSError, HTTPException):
            failed += 1
        time.sleep(0.1)
    return sent, failed


def record(
    results: dict[str, tuple[int, int]], key: str, port: int, path: str, seconds: float
) -> None:
    """Probe, and keep the counts under ``key``."""
    results[key] = probe_for(port, path, seconds)


def test_probes_answer_while_every_thread_is_busy(
    start_gunicorn: GunicornFactory,
) -> None:
    probe_port = free_port()
    server = start_gunicorn(
        {
            "PETSAGE_WORKERS": str(WORKERS),
            "PETSAGE_THREADS": str(THREADS),
            "PETSAGE_PROBE_BIND": f"127.0.0.1:{probe_port}",
        },
        app="tests.apps.slow:app",
    )
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            if http_request(probe_port, "GET", "/readyz", timeout=1).status == 200:
                break
        except OSError:
            time.sleep(0.1)
    capacity = WORKERS * THREADS
    lines, listener_failures = [], 0
    for busy in (1, capacity // 2, capacity, 2 * capacity):
        slow = [
            threading.Thread(
                target=http_request,
                args=(server.port, "GET", "/slow"),
                kwargs={"timeout": 30},
            )
            for _ in range(busy)
        ]
        for thread in slow:
            thread.start()
        time.sleep(0.3)  # the slow requests take their threads
        window = SLOW_SECONDS - 0.6
        results: dict[str, tuple[int, int]] = {}
        probes = [
            threading.Thread(target=record, args=(results, key, port, path, window))
            for key, port, path in (
                ("main /livez", server.port, "/livez"),
                ("listener /livez", probe_port, "/livez"),
                ("listener /readyz", probe_port, "/readyz"),
            )
        ]
        for thread in probes:
            thread.start()
        for thread in probes + slow:
            thread.join(timeout=60)
        lines.append(
            f"{busy} slow requests ({capacity} threads): "
            + ", ".join(f"{key} {s} sent {f} failed" for key, (s, f) in results.items())
        )
        listener_failures += (
            results["listener /livez"][1] + results["listener /readyz"][1]
        )
    print("\n" + "\n".join(lines))
    assert listener_failures == 0
