"""wrk, the load generator: one run against one URL, and what it printed, parsed."""

import re
import shutil
import subprocess
from dataclasses import dataclass

#: wrk's threads: one per core of the 2-core machines this runs on.
WRK_THREADS = 2

# wrk prints durations with these units (src/units.c: time units).
TIME_UNITS_MS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60_000.0, "h": 3_600_000.0}

REQUESTS = re.compile(r"^\s*(\d+) requests in ([\d.]+)(us|ms|s|m|h),", re.MULTILINE)
REQUESTS_PER_SECOND = re.compile(r"^Requests/sec:\s+([\d.]+)\s*$", re.MULTILINE)
PERCENTILE = r"^\s+{}%\s+([\d.]+)(us|ms|s|m|h)\s*$"
P50 = re.compile(PERCENTILE.format("50"), re.MULTILINE)
P99 = re.compile(PERCENTILE.format("99"), re.MULTILINE)
NON_2XX = re.compile(r"^\s*Non-2xx or 3xx responses: (\d+)\s*$", re.MULTILINE)
SOCKET_ERRORS = re.compile(
    r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)"
)


class WrkOutputError(ValueError):
    """wrk's output lacks a figure the benchmark needs."""


@dataclass(frozen=True)
class WrkResult:
    """What one wrk run measured."""

    requests: int
    duration_s: float
    requests_per_s: float
    p50_ms: float
    p99_ms: float
    non_2xx: int
    socket_errors: int


def wrk_command(
    url: str, connections: int, duration_s: int, close: bool = False
) -> list[str]:
    """The wrk command line: 2 threads, ``connections`` keep-alive connections, or,
    with ``close``, a new connection for every request (``Connection: close``, as a
    kubelet's probe or a scrape sends)."""
    threads = min(WRK_THREADS, connections)
    return [
        "wrk",
        f"-t{threads}",
        f"-c{connections}",
        f"-d{duration_s}s",
        "--latency",
        *(["-H", "Connection: close"] if close else []),
        url,
    ]


def run_wrk(
    url: str, connections: int, duration_s: int, close: bool = False
) -> tuple[WrkResult, str]:
    """Run wrk against ``url`` and parse what it prints; also return the raw output."""
    if shutil.which("wrk") is None:
        raise FileNotFoundError(
            "wrk is not installed: run bench/run, which installs it"
        )
    completed = subprocess.run(
        wrk_command(url, connections, duration_s, close),
        capture_output=True,
        text=True,
        # wrk stops itself after the duration; the margin covers its 2 s socket timeout.
        timeout=duration_s + 30,
        check=False,
    )
    if completed.returncode != 0:
        raise WrkOutputError(
            f"wrk exited with {completed.returncode}: {completed.stderr.strip()}"
        )
    return parse_wrk(completed.stdout), completed.stdout


def _duration_ms(value: str, unit: str) -> float:
    return float(value) * TIME_UNITS_MS[unit]


def _search(pattern: re.Pattern[str], output: str, what: str) -> re.Match[str]:
    match = pattern.search(output)
    if match is None:
        raise WrkOutputError(f"wrk output has no {what}:\n{output}")
    return match


def parse_wrk(output: str) -> WrkResult:
    """Parse the output of ``wrk --latency``; raise ``WrkOutputError`` if incomplete.

    The two optional lines, non-2xx responses and socket errors, are printed only when
    not zero, and so default to zero.
    """
    requests = _search(REQUESTS, output, "request count")
    p50 = _search(P50, output, "50th percentile (was --latency given?)")
    p99 = _search(P99, output, "99th percentile (was --latency given?)")
    rate = _search(REQUESTS_PER_SECOND, output, "Requests/sec")
    non_2xx = NON_2XX.search(output)
    socket_errors = SOCKET_ERRORS.search(output)
    return WrkResult(
        requests=int(requests.group(1)),
        duration_s=_duration_ms(requests.group(2), requests.group(3)) / 1000.0,
        requests_per_s=float(rate.group(1)),
        p50_ms=_duration_ms(p50.group(1), p50.group(2)),
        p99_ms=_duration_ms(p99.group(1), p99.group(2)),
        non_2xx=int(non_2xx.group(1)) if non_2xx else 0,
        socket_errors=sum(int(n) for n in socket_errors.groups())
        if socket_errors
        else 0,
    )


def wrk_version() -> str:
    """wrk's first line of ``wrk -v``, e.g. ``wrk debian/4.1.0-3+b2 [epoll]``."""
    if shutil.which("wrk") is None:
        return "not installed"
    completed = subprocess.run(
        ["wrk", "-v"], capture_output=True, text=True, timeout=10, check=False
    )
    first = (completed.stdout or completed.stderr).splitlines()
    return first[0].split(" Copyright")[0].strip() if first else "unknown"
