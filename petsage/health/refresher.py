"""The background refresher: runs every check on a period and caches the results.

Probes only ever read the cached snapshot, so a probe costs the same whatever the checks
do, and a storm of probes causes no check to run. Outside gunicorn it runs on a thread
of the process, each check on a thread of its own; under gunicorn the instance's
checker process runs it, each check in a process of its own
(petsage.health.runners), and publishes each snapshot to the workers
(petsage.health.shared).
"""

import logging
import random
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Protocol

from petsage.health.checks import (
    Check,
    CheckFailed,
    Observation,
    Status,
    describe_error,
    worst,
)

logger = logging.getLogger(__name__)

# After a failure the next cycle comes sooner, to notice recovery quickly.
FAILURE_PERIOD_FACTOR = 0.5
# Workers (and instances) spread their cycles over +-10% of the period.
JITTER = 0.1


@dataclass(frozen=True)
class CheckResult:
    """The latest outcome of one check."""

    status: Status
    value: float | int | str | None
    unit: str | None
    output: str
    time: str
    duration_ms: float
    consecutive_failures: int


@dataclass(frozen=True)
class Snapshot:
    """The results of one complete cycle, and when it completed (monotonic clock).

    Linux's monotonic clock counts from boot for every process on the host, so a time
    taken by one worker means the same in another.
    """

    results: Mapping[str, CheckResult]
    completed_at: float

    @property
    def status(self) -> Status:
        """The worst status among the results."""
        return worst([result.status for result in self.results.values()])


class Run(Protocol):
    """One run of one check, started when made, wherever it runs."""

    check: Check
    # When it started and ended (monotonic clock); ended None while it runs.
    started: float
    ended: float | None
    observation: Observation | None
    error: BaseException | None

    def finished(self) -> bool:
        """Whether the run has ended, without waiting."""

    def wait(self) -> bool:
        """Wait until the run ends or its timeout passes; True when it ended."""


class CheckRun:
    """One run of one check, on a thread of its own, so that it can hang alone."""

    def __init__(self, check: Check) -> None:
        self.check = check
        self.started = time.monotonic()
        self.done = threading.Event()
        self.observation: Observation | None = None
        self.error: BaseException | None = None
        self.ended: float | None = None
        threading.Thread(
            target=self._run, name=f"petsage-check-{check.name}", daemon=True
        ).start()

    def _run(self) -> None:
        try:
            self.observation = self.check.run()
        except BaseException as error:  # a check's failure is its result
            self.error = error
        finally:
            self.ended = time.monotonic()
            self.done.set()

    def finished(self) -> bool:
        """Whether the run has ended, without waiting."""
        return self.done.is_set()

    def wait(self) -> bool:
        """Wait until the run ends or its timeout passes; True when it ended."""
        remaining = self.started + self.check.timeout - time.monotonic()
        return self.done.wait(max(0.0, remaining))


class CheckRefresher:
    """Runs the checks in the background, concurrently, each within its timeout.

    ``start_run`` starts one run of a check: on a thread of this process unless
    told otherwise (the checker process runs each in a process of its own).
    """

    def __init__(
        self,
        checks: Sequence[Check],
        period: float,
        start_run: Callable[[Check], Run] = CheckRun,
    ) -> None:
        self.checks = list(checks)
        self.period = period
        self.start_run = start_run
        # Whether a cycle logs the changes of status it sees (a checker that does
        # not publish yet leaves that to the one that does).
        self.logging = True
        self.snapshot: Snapshot | None = None
        # When the next cycle is due (monotonic clock); None: at once.
        self.next_cycle_at: float | None = None
        # Called with each new snapshot, on the refresher's thread.
        self.listeners: list[Callable[[Snapshot], None]] = []
        self._runs: dict[str, Run] = {}
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()
        self._lock = threading.Lock()
        # Its own generator: jitter must not draw from, or disturb, the global one.
        # Jitter spreads load; nothing about it needs to be unpredictable. Seeded
        # again in the process that runs the cycles (see seed).
        self._random = random.Random()  # nosec B311

    @property
    def started(self) -> bool:
        """Whether the background thread was started."""
        return self._thread is not None

    @property
    def alive(self) -> bool:
        """Whether the background thread is running."""
        return self._thread is not None and self._thread.is_alive()

    @property
    def stale_after(self) -> float:
        """Age after which the snapshot can no longer be trusted."""
        longest = max((check.timeout for check in self.checks), default=0.0)
        return 3 * self.period + longest

    def start(self) -> None:
        """Start the background thread, once."""
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._loop, name="petsage-health-refresher", daemon=True
                )
                self._thread.start()

    def run(self) -> None:
        """Run the cycles on the calling thread until stopped; once per refresher."""
        with self._lock:
            if self._thread is not None:
                raise RuntimeError("the refresher already runs")
            self._thread = threading.current_thread()
        self._loop()

    def stop(self) -> None:
        """Stop the background thread after its current cycle."""
        self._stopping.set()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def seed(self) -> None:
        """Seed the jitter again, in the process that runs the cycles: with
        --preload the refresher is made before gunicorn forks, and a generator
        copied into every worker would draw the same jitter in each."""
        self._random = random.Random()  # nosec B311

    def _loop(self) -> None:
        self.seed()
        while not self._stopping.is_set():
            due = self.next_cycle_at
            if self._stopping.wait(0.0 if due is None else due - time.monotonic()):
                return
            try:
                self.run_cycle()
            except Exception:
                logger.exception("health check cycle failed")
                self.next_cycle_at = time.monotonic() + self.next_delay(None)

    def next_delay(self, snapshot: Snapshot | None) -> float:
        """Seconds to the next cycle: the period, halved after a failure, jittered."""
        healthy = snapshot is not None and snapshot.status == "pass"
        delay = self.period * (1 if healthy else FAILURE_PERIOD_FACTOR)
        return delay * self._random.uniform(1 - JITTER, 1 + JITTER)

    def run_cycle(self) -> Snapshot:
        """Run every check once, concurrently, and publish the new snapshot.

        A check still running from an earlier cycle is not started again; it is
        reported as timed out until it returns.
        """
        for check in self.checks:
            run = self._runs.get(check.name)
            if run is None or run.finished():
                self._runs[check.name] = self.start_run(check)
        previous = self.snapshot
        results = {
            name: self._result(run, previous) for name, run in self._runs.items()
        }
        snapshot = Snapshot(results, time.monotonic())
        if self.logging:
            log_transitions(previous, snapshot)
        self.snapshot = snapshot
        self.next_cycle_at = snapshot.completed_at + self.next_delay(snapshot)
        for listener in self.listeners:
            listener(snapshot)
        return snapshot

    def _result(self, run: Run, previous: Snapshot | None) -> CheckResult:
        check = run.check
        finished = run.wait()
        value: float | int | str | None = None
        unit: str | None = None
        # A run that ended after its timeout timed out, though it ended before this
        # cycle looked (the run of an earlier cycle, or a wait that came late).
        late = run.ended is not None and run.ended - run.started > check.timeout
        if not finished or late:
            status: Status = "fail"
            output = f"timed out after {check.timeout:g} s"
        elif run.error is not None:
            status = "fail"
            output = (
                str(run.error)
                if isinstance(run.error, CheckFailed)
                else describe_error(run.error)
            )
        elif run.observation is None:
            status = "fail"
            output = "returned no observation"
        else:
            status = run.observation.status
            value, unit = run.observation.value, run.observation.unit
            output = run.observation.output
        if status == "fail" and not check.critical:
            status = "warn"
        ended = run.ended if run.ended is not None else time.monotonic()
        earlier = previous.results.get(check.name) if previous else None
        failures = 0 if status == "pass" else 1
        if earlier is not None and status != "pass":
            failures += earlier.consecutive_failures
        return CheckResult(
            status=status,
            value=value,
            unit=unit,
            output=output,
            time=datetime.now(UTC).isoformat(timespec="milliseconds"),
            duration_ms=round((ended - run.started) * 1000, 3),
            consecutive_failures=failures,
        )


def log_transitions(previous: Snapshot | None, current: Snapshot) -> None:
    """Log each check's change of status once: fail at ERROR, warn at WARNING, pass."""
    for name, result in current.results.items():
        earlier = previous.results.get(name) if previous else None
        before = earlier.status if earlier else None
        if result.status == before or (before is None and result.status == "pass"):
            continue
        if result.status == "fail":
            logger.error("health check %s failed: %s", name, result.output)
        elif result.status == "warn":
            logger.warning("health check %s warns: %s", name, result.output or "warn")
        else:
            logger.info("health check %s passes again", name)
