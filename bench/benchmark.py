"""PetSage's load benchmark: every candidate, interleaved over rounds, medians reported.

Run from the repository root: ``bash bench/run`` (which installs wrk and the packages),
or ``.venv/bin/python -m bench.benchmark [--quick] [--out DIR]``.

Each round launches every candidate fresh (timing launch to first 200), warms it up,
reads its workers' memory, then runs ``wrk --latency`` against each of its paths at each
connection count while reading the server's CPU time before and after. Rounds rotate
the candidates' order, so that a slow spell of a shared machine falls on each in turn.
"""

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from bench import report
from bench.apps import SMOKE_TEST_BODY, SMOKE_TEST_PATH
from bench.loadgen import WrkOutputError, run_wrk, wrk_command
from bench.model import Launch, LoadRun
from bench.servers import (
    CANDIDATES,
    REPO_ROOT,
    Candidate,
    Server,
    cpu_between,
    get,
)
from petsage.config import SETTINGS, default_workers

RESULTS_DIR = REPO_ROOT / "bench" / "results"
THREADS_DEFAULT: int = next(s.default for s in SETTINGS if s.key == "THREADS")
WARMUP_S = 1
#: Requests, each on a new connection, that check every path answers before its runs.
CHECK_REQUESTS = 20
MICRO_TIMEOUT_S = 300
PROFILE_TIMEOUT_S = 120
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


@dataclass
class Measurements:
    """Everything one benchmark run collected, and what went wrong."""

    runs: list[LoadRun] = field(default_factory=list)
    launches: list[Launch] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    micro: list[dict[str, Any]] = field(default_factory=list)
    profile_shares: dict[str, dict[str, float]] = field(default_factory=dict)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    """The command line; ``--quick`` sets the short mode's defaults."""
    parser = argparse.ArgumentParser(
        prog="bench/run", description=__doc__.split("\n\n")[0] if __doc__ else None
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="CI mode: 1 round of 1 s at 16 connections, results to a temporary"
        " directory; fails unless every candidate answers and every output parses",
    )
    parser.add_argument("--rounds", type=int, help="rounds (default 5; quick 1)")
    parser.add_argument(
        "--duration", type=int, help="seconds per wrk run (default 5; quick 1)"
    )
    parser.add_argument(
        "--connections",
        help="comma-separated connection counts (default 16,64; quick 16)",
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=default_workers(),
        help="worker processes for every server (default: PetSage's default,"
        " %(default)s here)",
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=THREADS_DEFAULT,
        help="gunicorn threads per worker (default: PetSage's, %(default)s)",
    )
    parser.add_argument(
        "--candidates",
        help="comma-separated candidates to run (default all: "
        + ",".join(c.key for c in CANDIDATES)
        + "); the others show as not measured",
    )
    parser.add_argument(
        "--out",
        type=Path,
        help="results directory (default bench/results; quick: a temporary one)",
    )
    args = parser.parse_args(argv)
    by_key = {candidate.key: candidate for candidate in CANDIDATES}
    chosen = args.candidates.split(",") if args.candidates else list(by_key)
    unknown = [key for key in chosen if key not in by_key]
    if unknown:
        parser.error(f"unknown candidates {unknown}; known: {', '.join(by_key)}")
    args.candidates = [by_key[key] for key in by_key if key in chosen]
    args.rounds = args.rounds or (1 if args.quick else 5)
    args.duration = args.duration or (1 if args.quick else 5)
    args.connections = [
        int(n)
        for n in (args.connections or ("16" if args.quick else "16,64")).split(",")
    ]
    if args.out is None:
        args.out = (
            Path(tempfile.mkdtemp(prefix="petsage-bench-"))
            if args.quick
            else RESULTS_DIR
        )
    return args


def log(message: str) -> None:
    """Progress, as it happens."""
    print(message, flush=True)


def cpu_now() -> tuple[float, float, float]:
    """CPU seconds so far: every process's (user, nice, system from /proc/stat), this
    process's and its waited-for children's (wrk), and the monotonic clock.

    irq and softirq time stay out: loopback traffic is processed there, and it
    belongs to the benchmark itself.
    """
    with open("/proc/stat") as stat:
        fields = [int(n) for n in stat.readline().split()[1:4]]
    mine = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    own = mine.ru_utime + mine.ru_stime + children.ru_utime + children.ru_stime
    return sum(fields) / CLOCK_TICKS, own, time.monotonic()


def other_cores(
    before: tuple[float, float, float], after: tuple[float, float, float], server: float
) -> float:
    """Cores used meanwhile by processes that are neither the server nor wrk."""
    elapsed = after[2] - before[2]
    others = (after[0] - before[0]) - (after[1] - before[1]) - server
    return max(0.0, others) / elapsed if elapsed > 0 else float("nan")


def check_answers(server: Server, measurements: Measurements) -> None:
    """Record a problem for any path not answering ``200`` (and the right body)."""
    candidate = server.candidate
    for path in candidate.paths:
        # Several, on new connections, so that more than one worker has to answer.
        for _ in range(CHECK_REQUESTS):
            try:
                status, body = get(server.measured_port, path)
            except OSError as error:
                measurements.problems.append(f"{candidate.label} GET {path}: {error}")
                break
            if status != 200:
                measurements.problems.append(f"{candidate.label} GET {path}: {status}")
                break
            if path == SMOKE_TEST_PATH and json.loads(body) != json.loads(
                SMOKE_TEST_BODY
            ):
                measurements.problems.append(
                    f"{candidate.label} GET {path}: unexpected body {body!r}"
                )
                break


def measure_candidate(
    candidate: Candidate,
    round_number: int,
    args: argparse.Namespace,
    scratch: Path,
    measurements: Measurements,
) -> None:
    """Launch one candidate fresh, measure every path and connection count, stop it."""
    with Server.running(candidate, args.workers, args.threads, scratch) as server:
        assert server.startup_s is not None
        # Lets the last workers finish booting and gives each its first requests;
        # the other paths share the workers, and check_answers() calls them too.
        try:
            run_wrk(
                server.url(candidate.paths[0]),
                max(args.connections),
                WARMUP_S,
                candidate.close,
            )
        except (WrkOutputError, subprocess.TimeoutExpired) as error:
            measurements.problems.append(f"{candidate.label} warm-up: {error}")
        check_answers(server, measurements)
        measurements.launches.append(
            Launch(
                round=round_number,
                candidate=candidate.key,
                startup_s=server.startup_s,
                rss_per_worker_mib=server.rss_per_worker_mib(),
            )
        )
        for path in candidate.paths:
            for connections in candidate.connection_counts(args.connections):
                machine_before = cpu_now()
                before = server.cpu_seconds()
                try:
                    result, _ = run_wrk(
                        server.url(path), connections, args.duration, candidate.close
                    )
                except (WrkOutputError, subprocess.TimeoutExpired) as error:
                    measurements.problems.append(
                        f"{candidate.label} {path} c={connections}: {error}"
                    )
                    continue
                used, replaced = cpu_between(before, server.cpu_seconds())
                machine_after = cpu_now()
                run = LoadRun(
                    **asdict(result),
                    round=round_number,
                    candidate=candidate.key,
                    path=path,
                    connections=connections,
                    cpu_s=used,
                    workers_replaced=replaced,
                    other_cores=other_cores(machine_before, machine_after, used),
                )
                measurements.runs.append(run)
                if replaced:
                    measurements.problems.append(
                        f"{candidate.label} {path} c={connections}: a server process"
                        " exited or was replaced during the run, which is left out of"
                        " the medians; the server's log ends:\n" + server.log_tail(15)
                    )
                if run.socket_errors > run.requests // 1000:
                    measurements.problems.append(
                        f"{candidate.label} {path} c={connections}:"
                        f" {run.socket_errors} socket errors, {run.requests} requests"
                    )
                if run.non_2xx:
                    measurements.problems.append(
                        f"{candidate.label} {path} c={connections}:"
                        f" {run.non_2xx} responses were not 2xx"
                    )
                if run.requests == 0:
                    measurements.problems.append(
                        f"{candidate.label} {path} c={connections}: no requests"
                    )
                log(
                    f"  {candidate.label:<34} {path:<19} c={connections:<3}"
                    f" {run.requests_per_s:8.0f} req/s  p50 {run.p50_ms:6.2f} ms"
                    f"  p99 {run.p99_ms:6.2f} ms"
                    f"  {run.cpu_us_per_request:6.0f} us CPU/req"
                    f"  (others: {run.other_cores:.2f} cores)"
                )
        log(
            f"  {candidate.label:<34} start-up {server.startup_s * 1e3:.0f} ms,"
            f" RSS/worker {measurements.launches[-1].rss_per_worker_mib:.1f} MiB"
        )


def run_rounds(args: argparse.Namespace, measurements: Measurements) -> None:
    """Every candidate once per round, in an order rotated each round."""
    with tempfile.TemporaryDirectory(prefix="petsage-bench-") as scratch_dir:
        scratch = Path(scratch_dir)
        for round_number in range(args.rounds):
            candidates = args.candidates
            shift = round_number % len(candidates)
            order = candidates[shift:] + candidates[:shift]
            log(f"round {round_number + 1}/{args.rounds}")
            for candidate in order:
                try:
                    measure_candidate(
                        candidate, round_number, args, scratch, measurements
                    )
                except RuntimeError as error:
                    measurements.problems.append(f"{candidate.label}: {error}")
                    log(f"  {candidate.label}: FAILED: {error}")
                # Each server's access log is only needed while it runs.
                for leftover in scratch.glob(f"{candidate.key}-*.log"):
                    leftover.unlink()


def bench_environment(scratch: Path) -> dict[str, str]:
    """The environment of the in-process benchmarks: defaults, as under gunicorn."""
    environment = {
        name: value
        for name, value in os.environ.items()
        if not name.startswith(("PETSAGE_", "PROMETHEUS_"))
    }
    environment["PYTHONPATH"] = str(REPO_ROOT)
    # Not the default marker of 127.0.0.1:8000, which a local server may be draining.
    environment["PETSAGE_DRAIN_FILE"] = str(scratch / "inprocess.drain")
    # prometheus_client's multiprocess mode, which gunicorn.conf.py switches on.
    metrics = scratch / "metrics"
    metrics.mkdir(exist_ok=True)
    environment["PROMETHEUS_MULTIPROC_DIR"] = str(metrics)
    return environment


def run_microbenchmarks(args: argparse.Namespace, measurements: Measurements) -> None:
    """The pyperf microbenchmarks, in their own processes; results as dicts."""
    with tempfile.TemporaryDirectory(prefix="petsage-micro-") as scratch_dir:
        scratch = Path(scratch_dir)
        output = scratch / "micro.json"
        # Quick mode only proves the benchmarks run; 6 x 3 values give stable medians.
        sizes = ["--processes", "1", "--values", "2"] if args.quick else []
        sizes = sizes or ["--processes", "6", "--values", "3"]
        command = [
            sys.executable,
            str(REPO_ROOT / "bench" / "microbench.py"),
            *sizes,
            "--inherit-environ",
            "PETSAGE_DRAIN_FILE,PROMETHEUS_MULTIPROC_DIR",
            "--quiet",
            "-o",
            str(output),
        ]
        log("in-process microbenchmarks (pyperf)")
        completed = subprocess.run(
            command,
            cwd=REPO_ROOT,
            env=bench_environment(scratch),
            capture_output=True,
            text=True,
            timeout=MICRO_TIMEOUT_S,
            check=False,
        )
        if completed.returncode != 0 or not output.exists():
            measurements.problems.append(
                f"microbenchmarks failed ({completed.returncode}):"
                f" {completed.stdout[-2000:]}{completed.stderr[-2000:]}"
            )
            return
        import pyperf  # type: ignore[import-untyped]

        suite = pyperf.BenchmarkSuite.load(str(output))
        for benchmark in suite.get_benchmarks():
            values = [float(v) for v in benchmark.get_values()]
            measurements.micro.append(
                {
                    "name": str(benchmark.get_name()),
                    "median_us": float(benchmark.median()) * 1e6,
                    "stdev_us": (
                        float(benchmark.stdev()) * 1e6 if len(values) > 1 else 0.0
                    ),
                    "values": len(values),
                }
            )
            entry = measurements.micro[-1]
            log(f"  {entry['name']:<30} {entry['median_us']:7.1f} us")


def run_profiles(args: argparse.Namespace, measurements: Measurements) -> None:
    """pyinstrument profiles of the smoke-test path (and the bare Flask route)."""
    with tempfile.TemporaryDirectory(prefix="petsage-profile-") as scratch_dir:
        log("profiles (pyinstrument)")
        summary = Path(scratch_dir) / "shares.json"
        completed = subprocess.run(
            [
                sys.executable,
                "-m",
                "bench.profiling",
                str(args.out),
                "--seconds",
                "1" if args.quick else "5",
                "--summary",
                str(summary),
            ],
            cwd=REPO_ROOT,
            env=bench_environment(Path(scratch_dir)),
            capture_output=True,
            text=True,
            timeout=PROFILE_TIMEOUT_S,
            check=False,
        )
        if completed.returncode != 0 or not summary.exists():
            measurements.problems.append(
                f"profiling failed ({completed.returncode}): {completed.stderr[-2000:]}"
            )
            return
        measurements.profile_shares = json.loads(summary.read_text())


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark; 0 when every candidate answered and every output parsed."""
    args = parse_args(argv)
    if shutil.which("wrk") is None:
        log("wrk is not installed: run `bash bench/run`, which installs it")
        return 2
    args.out.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    machine_before = report.machine_snapshot()
    log(
        f"PetSage load benchmark: {args.rounds} round(s) of {args.duration} s per run,"
        f" connections {args.connections}, {args.workers} workers x {args.threads}"
        f" threads; results to {args.out}"
    )
    log(
        "wrk command: "
        + " ".join(wrk_command("URL", max(args.connections), args.duration))
    )
    measurements = Measurements()
    run_rounds(args, measurements)
    run_microbenchmarks(args, measurements)
    run_profiles(args, measurements)
    machine_after = report.machine_snapshot()
    elapsed = time.monotonic() - started
    context = report.Context(
        rounds=args.rounds,
        duration_s=args.duration,
        connections=args.connections,
        workers=args.workers,
        threads=args.threads,
        quick=args.quick,
        warmup_s=WARMUP_S,
        elapsed_s=elapsed,
        machine_before=machine_before,
        machine_after=machine_after,
    )
    expected = sum(
        len(c.paths) * len(c.connection_counts(args.connections))
        for c in args.candidates
    )
    if len(measurements.runs) != expected * args.rounds:
        measurements.problems.append(
            f"{len(measurements.runs)} of {expected * args.rounds} wrk runs ran"
        )
    (args.out / "raw.json").write_text(
        json.dumps(
            {
                "context": asdict(context),
                "runs": [asdict(run) for run in measurements.runs],
                "launches": [asdict(launch) for launch in measurements.launches],
                "micro": measurements.micro,
                "problems": measurements.problems,
            },
            indent=1,
        )
        + "\n"
    )
    report.write(
        args.out,
        context,
        measurements.runs,
        measurements.launches,
        measurements.micro,
        measurements.profile_shares,
        measurements.problems,
    )
    log(f"done in {elapsed:.0f} s; results in {args.out}")
    for problem in measurements.problems:
        log(f"PROBLEM: {problem}")
    return 1 if measurements.problems else 0


if __name__ == "__main__":
    sys.exit(main())
