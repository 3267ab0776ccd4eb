"""Client load for tests against real servers: threads sending requests, tallied."""

import http.client
import json
import math
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

SMOKE_TEST = "/api/v1/smoke-test"
SMOKE_TEST_BODY = {"status": "ok", "message": "PetSage smoke test successful!"}


@dataclass
class Tally:
    """Requests sent and failed, and the latency of each answered one (seconds).

    ``failed`` describes every unsuccessful request; ``lost`` counts those of them
    that got no answer at all (reset, refused, timed out), the rest were answered
    wrongly.
    """

    sent: int = 0
    failed: list[str] = field(default_factory=list)
    latencies: list[float] = field(default_factory=list)
    lost: int = 0

    def counts(self) -> dict[str, int]:
        """Sent, failed (answered wrongly) and lost, as the fault record counts them."""
        return {
            "sent": self.sent,
            "failed": len(self.failed) - self.lost,
            "lost": self.lost,
        }


def percentile(values: Sequence[float], fraction: float) -> float:
    """The value below which ``fraction`` of ``values`` lie (nearest rank)."""
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    rank = min(len(ordered), max(1, math.ceil(fraction * len(ordered)))) - 1
    return ordered[rank]


class ClientLoad:
    """Threads sending GET requests to 127.0.0.1:``port`` until stopped.

    Each thread cycles through ``paths``. ``keep_alive_threads`` of the threads reuse
    one connection (reopened only when the server answers ``Connection: close`` or a
    request fails), the others open a new connection per request: load balancers and
    clients do both, and a restart can lose requests in either. A request fails when
    it raises or answers other than 200 (for the smoke test, other than its exact
    body). Requests are tallied in total and by the phase current when they started
    (see ``phase``), so a test can tell which event lost them.
    """

    def __init__(
        self,
        port: int,
        threads: int = 4,
        *,
        keep_alive_threads: int = 0,
        paths: Sequence[str] = (SMOKE_TEST,),
        pause: float = 0.0,
        timeout: float = 5.0,
    ) -> None:
        self.port = port
        self.paths = tuple(paths)
        self.pause = pause
        self.timeout = timeout
        self.total = Tally()
        self.phases: dict[str, Tally] = {}
        self._phase = "start"
        self._started = time.monotonic()
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._threads = [
            threading.Thread(
                target=self._run, args=(index, index < keep_alive_threads), daemon=True
            )
            for index in range(threads)
        ]

    @property
    def sent(self) -> int:
        """Requests sent so far."""
        return self.total.sent

    @property
    def failed(self) -> list[str]:
        """What went wrong with each failed request, in order."""
        return self.total.failed

    def wait_for_requests(
        self, count: int, phase: str | None = None, timeout: float = 60.0
    ) -> None:
        """Wait until ``count`` requests (started in ``phase``, or in all) have been
        tallied: a number of requests, however long a busy machine takes to send
        them. Fails after ``timeout`` seconds."""
        tally = self.total if phase is None else self.phases[phase]
        deadline = time.monotonic() + timeout
        while tally.sent < count:
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"{tally.sent} of {count} requests sent within {timeout:g} s"
                )
            time.sleep(0.01)

    def phase(self, name: str) -> None:
        """Tally requests that start from now on under ``name`` too."""
        with self._lock:
            self._phase = name
            self.phases.setdefault(name, Tally())

    def _connect(self) -> http.client.HTTPConnection:
        return http.client.HTTPConnection("127.0.0.1", self.port, timeout=self.timeout)

    def _run(self, index: int, keep_alive: bool) -> None:
        connection: http.client.HTTPConnection | None = None
        count = index  # threads start at different paths
        while not self._stop.is_set():
            path = self.paths[count % len(self.paths)]
            count += 1
            with self._lock:
                phase = self._phase
            started = time.monotonic()
            failure: str | None = None
            lost = False
            try:
                if connection is None:
                    connection = self._connect()
                connection.request("GET", path)
                response = connection.getresponse()
                body = response.read()
                if response.status != 200:
                    failure = f"HTTP {response.status}"
                elif path == SMOKE_TEST and json.loads(body) != SMOKE_TEST_BODY:
                    failure = f"unexpected body {body[:100]!r}"
                if not keep_alive or response.will_close:
                    connection.close()
                    connection = None
            except (OSError, http.client.HTTPException, ValueError) as error:
                failure = repr(error)
                # A body that is not JSON is a wrong answer; anything else, none.
                lost = not isinstance(error, ValueError)
                if connection is not None:
                    connection.close()
                    connection = None
            finished = time.monotonic()
            self._tally(phase, path, started, finished, failure, lost)
            if self.pause:
                self._stop.wait(self.pause)
        if connection is not None:
            connection.close()

    def _tally(
        self,
        phase: str,
        path: str,
        started: float,
        finished: float,
        failure: str | None,
        lost: bool,
    ) -> None:
        with self._lock:
            tallies = [self.total]
            if phase in self.phases:
                tallies.append(self.phases[phase])
            for tally in tallies:
                tally.sent += 1
                if failure is None:
                    tally.latencies.append(finished - started)
                else:
                    at = started - self._started
                    tally.failed.append(f"{phase} +{at:.2f} s GET {path}: {failure}")
                    tally.lost += lost

    def __enter__(self) -> "ClientLoad":
        self._started = time.monotonic()
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=self.timeout + 5)
