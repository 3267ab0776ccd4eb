"""Health checks: what a check is, what it observes, and the process's uptime check.

The checks of the dependencies the settings name are made by
``petsage.health.dependencies``, which builds on this module; this module imports
nothing of it.
"""

import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

Status = Literal["pass", "warn", "fail"]

# Worst first: aggregation keeps the worst status it sees. (bandit reads a "pass"
# key as a password; it is a health status.)
SEVERITY: dict[Status, int] = {"pass": 0, "warn": 1, "fail": 2}  # nosec


def worst(statuses: "list[Status]") -> Status:
    """The worst of ``statuses``; pass when there are none."""
    return max(statuses, key=SEVERITY.__getitem__, default="pass")


class CheckFailed(Exception):
    """Raised by a check to fail with an ``output`` safe to show to token holders."""


@dataclass(frozen=True)
class Observation:
    """What one run of a check saw: a value with its unit, and a note when not pass."""

    value: float | int | str | None = None
    unit: str | None = None
    status: Status = "pass"
    output: str = ""


@dataclass(frozen=True)
class Check:
    """A named check, run in the background, never inside a request.

    ``run`` returns an Observation or raises; any exception fails the check. A failing
    critical check fails readiness; a failing non-critical one only makes it warn.
    """

    name: str
    run: Callable[[], Observation]
    component: str
    measurement: str
    component_type: str = "component"
    critical: bool = True
    timeout: float = 2.0
    # Where the check looks, credentials removed; shown only to token holders.
    target: str | None = field(default=None)

    @property
    def key(self) -> str:
        """The check's key in the health document: ``component:measurement``."""
        return f"{self.component}:{self.measurement}"


def process_uptime_check(started: float) -> Check:
    """Seconds since ``started`` in the process that runs the checks; always passes."""

    def observe() -> Observation:
        return Observation(round(time.monotonic() - started, 3), "s")

    return Check(
        name="uptime",
        run=observe,
        component="process",
        measurement="uptime",
        component_type="system",
        critical=False,
        timeout=1.0,
    )


def describe_error(error: BaseException) -> str:
    """An error's kind and OS reason, without the host or URL it may mention."""
    if isinstance(error, TimeoutError | socket.timeout):
        return "timed out"
    if isinstance(error, OSError) and error.strerror:
        return f"{type(error).__name__}: {error.strerror}"
    return type(error).__name__
