"""The benchmark's outputs: ``RESULTS.md``, ``cpu_per_request.png`` and the machine."""

import datetime
import importlib.metadata
import os
import platform
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.apps import SMOKE_TEST_PATH
from bench.loadgen import wrk_command, wrk_version
from bench.model import (
    BARE_FLASK,
    BARE_WSGI,
    BARE_WSGI_CLOSE,
    BARE_WSGI_MICRO,
    FASTAPI,
    METRICS_ONLY,
    PETSAGE,
    PETSAGE_MANAGEMENT,
    PETSAGE_METRICS_OFF,
    PROBES,
    Launch,
    LaunchSummary,
    LoadRun,
    Summary,
    Target,
    access_line_us,
    median,
    pooled_cpu,
    ratio,
    request_metrics_us,
    summarize,
    summarize_launches,
    targets,
    valid,
)
from bench.servers import (
    BARE_WSGI_UNLOGGED_PATH,
    CANDIDATES,
    PETSAGE_PATHS,
    REPO_ROOT,
)

PACKAGES = (
    "flask",
    "werkzeug",
    "flask-smorest",
    "marshmallow",
    "apispec",
    "gunicorn",
    "fastapi",
    "starlette",
    "pydantic",
    "uvicorn",
    "h11",
    "psutil",
    "pyperf",
    "pyinstrument",
    "matplotlib",
)
PROFILE_FILE = "profile_smoke_test.txt"
CHART_FILE = "cpu_per_request.png"
PROFILE_TOP_LINES = 15
LABELS = {candidate.key: candidate.label for candidate in CANDIDATES}


@dataclass(frozen=True)
class Context:
    """How the benchmark ran."""

    rounds: int
    duration_s: int
    connections: list[int]
    workers: int
    threads: int
    quick: bool
    warmup_s: int
    elapsed_s: float
    machine_before: dict[str, Any]
    machine_after: dict[str, Any]


def _cpu_counters() -> list[int]:
    """The aggregate ``cpu`` line of /proc/stat: user, nice, system, idle, ... steal."""
    try:
        with open("/proc/stat") as stat:
            return [int(n) for n in stat.readline().split()[1:]]
    except OSError:
        return []


def machine_snapshot() -> dict[str, Any]:
    """Load average and CPU counters now, to compare before and after the run."""
    return {
        "time": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "loadavg": list(os.getloadavg()),
        "cpu_counters": _cpu_counters(),
    }


def steal_share(before: dict[str, Any], after: dict[str, Any]) -> float | None:
    """Share of CPU time the hypervisor gave to others during the run (``steal``)."""
    first, last = before.get("cpu_counters") or [], after.get("cpu_counters") or []
    if len(first) < 8 or len(last) < 8:
        return None
    # Fields 0-7: user nice system idle iowait irq softirq steal (guest is in user).
    total = sum(last[:8]) - sum(first[:8])
    return (last[7] - first[7]) / total if total > 0 else None


def cpu_model() -> str:
    """The CPU's model name, from /proc/cpuinfo."""
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def os_name() -> str:
    """The distribution's name, from /etc/os-release."""
    try:
        with open("/etc/os-release") as release:
            for line in release:
                if line.startswith("PRETTY_NAME="):
                    return line.split("=", 1)[1].strip().strip('"')
    except OSError:
        pass
    return platform.system()


def git_revision() -> str:
    """The commit measured, with ``+ local changes`` when the work tree differs."""
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=REPO_ROOT,
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
        # --no-optional-locks: reading the status must not rewrite the index.
        status = subprocess.run(
            ["git", "--no-optional-locks", "status", "--porcelain"],
            cwd=REPO_ROOT,
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return commit + (" + local changes" if status.strip() else "")


def package_version(name: str) -> str:
    """An installed package's version, or ``not installed``."""
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def _number(value: float | None, digits: int = 0) -> str:
    if value is None or value != value:
        return "n/a"
    return f"{value:,.{digits}f}"


def _ratio(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f}"


def _load_table(
    summaries: dict[tuple[str, str, int], Summary], connections: Sequence[int]
) -> list[str]:
    lines = [
        "| candidate | path | conns | req/s | p50 ms | p99 ms"
        " | CPU us/req (min-max) | CPU / bare Flask | CPU / bare WSGI"
        " | CPU / FastAPI | p99 / bare Flask | non-2xx | socket errors |",
        "|---|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|",
    ]
    for candidate in CANDIDATES:
        for path in candidate.paths:
            for conns in candidate.connection_counts(connections):
                summary = summaries.get((candidate.key, path, conns))
                if summary is None:
                    lines.append(
                        f"| {candidate.label} | `{path}` | {conns} | not measured"
                        " | | | | | | | | | |"
                    )
                    continue

                def versus(baseline: str, attribute: str, s: Summary = summary) -> str:
                    other = summaries.get((baseline, SMOKE_TEST_PATH, s.connections))
                    if other is None:
                        return "n/a"
                    return _ratio(
                        ratio(getattr(s, attribute), getattr(other, attribute))
                    )

                shown = f"`{path}`" + (
                    " (no access log)"
                    if candidate.key == BARE_WSGI and path != SMOKE_TEST_PATH
                    else ""
                )
                lines.append(
                    f"| {candidate.label} | {shown} | {conns}"
                    f" | {_number(summary.requests_per_s)}"
                    f" | {_number(summary.p50_ms, 2)} | {_number(summary.p99_ms, 2)}"
                    f" | **{_number(summary.cpu_us)}**"
                    f" ({_number(summary.cpu_us_min)}-{_number(summary.cpu_us_max)})"
                    f" | {versus(BARE_FLASK, 'cpu_us')} | {versus(BARE_WSGI, 'cpu_us')}"
                    f" | {versus(FASTAPI, 'cpu_us')} | {versus(BARE_FLASK, 'p99_ms')}"
                    f" | {summary.non_2xx} | {summary.socket_errors} |"
                )
    return lines


def _launch_table(launches: dict[str, LaunchSummary]) -> list[str]:
    lines = [
        "| candidate | RSS per worker MiB | / bare Flask | / FastAPI"
        " | start-up to first 200, ms | / bare Flask |",
        "|---|--:|--:|--:|--:|--:|",
    ]
    flask, fastapi = launches.get(BARE_FLASK), launches.get(FASTAPI)
    for candidate in CANDIDATES:
        launch = launches.get(candidate.key)
        if launch is None:
            lines.append(f"| {candidate.label} | not measured | | | | |")
            continue
        rss, startup = launch.rss_per_worker_mib, launch.startup_s
        lines.append(
            f"| {candidate.label} | {rss:.1f}"
            f" | {_ratio(ratio(rss, flask.rss_per_worker_mib if flask else None))}"
            f" | {_ratio(ratio(rss, fastapi.rss_per_worker_mib if fastapi else None))}"
            f" | {startup * 1e3:.0f}"
            f" | {_ratio(ratio(startup, flask.startup_s if flask else None))} |"
        )
    return lines


def _targets_table(found: Sequence[Target]) -> list[str]:
    lines = [
        "| target | ratio or figure | limit | verdict |",
        "|---|--:|--:|---|",
    ]
    for target in found:
        figure, limit = _ratio(target.ratio), f"{target.limit:g}"
        if target.unit:
            figure = f"{_number(target.ratio, 1)} {target.unit}"
            limit = f"{limit} {target.unit}"
        lines.append(
            f"| {target.group}: {target.what} | {figure} | <= {limit}"
            f" | {target.verdict} |"
        )
    return lines


def _micro_table(micro: Sequence[dict[str, Any]]) -> list[str]:
    if not micro:
        return ["Not measured (see Problems)."]
    flask = next((m for m in micro if m["name"] == "bare Flask route"), None)
    lines = [
        "| called through the WSGI app | CPU us/request (median) | std dev"
        " | / bare Flask route |",
        "|---|--:|--:|--:|",
    ]
    for entry in micro:
        versus = ratio(entry["median_us"], flask["median_us"] if flask else None)
        lines.append(
            f"| {entry['name']} | {entry['median_us']:.1f} | {entry['stdev_us']:.1f}"
            f" | {_ratio(versus)} |"
        )
    medians = {entry["name"]: entry["median_us"] for entry in micro}
    on = medians.get(f"PetSage {SMOKE_TEST_PATH}")
    off = medians.get(f"PetSage {SMOKE_TEST_PATH}, metrics off")
    lines += [
        f"| request metrics alone: {METRICS_ONLY} minus {BARE_WSGI_MICRO}"
        f" | {_number(request_metrics_us(micro), 1)} | | |",
        f"| request metrics in PetSage: {SMOKE_TEST_PATH} minus the same, metrics off"
        f" | {_number(None if on is None or off is None else on - off, 1)} | | |",
    ]
    return lines


def _decomposition(
    pooled: dict[tuple[str, str], float],
    micro: Sequence[dict[str, Any]],
    connections: Sequence[int],
) -> list[str]:
    """Server CPU per request split into gunicorn, its access log, the app, the rest."""
    floor = pooled.get((BARE_WSGI, BARE_WSGI_UNLOGGED_PATH))
    access_log = access_line_us(pooled)
    if floor is None or access_log is None:
        return ["Not measured (see Problems)."]
    in_process = {m["name"]: m["median_us"] for m in micro}
    rows = [
        (LABELS[BARE_FLASK], BARE_FLASK, SMOKE_TEST_PATH, "bare Flask route", True),
        *(
            (f"PetSage `{path}`", PETSAGE, path, f"PetSage {path}", path not in PROBES)
            for path in PETSAGE_PATHS
        ),
        (
            f"PetSage `{SMOKE_TEST_PATH}`, metrics off",
            PETSAGE_METRICS_OFF,
            SMOKE_TEST_PATH,
            f"PetSage {SMOKE_TEST_PATH}, metrics off",
            True,
        ),
    ]
    lines = [
        "Medians over every run at "
        + " and ".join(map(str, connections))
        + " connections."
        " gunicorn's own handling of a request (HTTP parsing, socket I/O, the worker's"
        " threads) is the bare WSGI callable on a path left out of the access log:"
        f" **{floor:.0f} us**. The access log line adds **{access_log:.0f} us** (bare"
        f" WSGI on `{SMOKE_TEST_PATH}` minus the same on `{BARE_WSGI_UNLOGGED_PATH}`);"
        " PetSage writes none for successful probes. The application's share is its"
        " in-process cost (pyperf, below); the remainder is what serving costs beyond"
        " that under load: GIL hand-offs between a worker's threads, which grow with"
        " the time each request holds the GIL, cache misses, and noise.",
        "",
        "| endpoint | server CPU us/req | gunicorn | access log"
        " | app, in process | remainder |",
        "|---|--:|--:|--:|--:|--:|",
        f"| gunicorn's JSON access line alone (bare WSGI, `{SMOKE_TEST_PATH}` minus"
        f" `{BARE_WSGI_UNLOGGED_PATH}`) | {access_log:.0f} | | {access_log:.0f} | | |",
    ]
    for label, key, path, micro_name, writes_log in rows:
        server = pooled.get((key, path))
        app_us = in_process.get(micro_name)
        if server is None:
            continue
        log_us = access_log if writes_log else 0.0
        rest = None if app_us is None else server - floor - log_us - app_us
        lines.append(
            f"| {label} | {server:.0f} | {floor:.0f} | {log_us:.0f}"
            f" | {_number(app_us, 1)} | {_number(rest, 0)} |"
        )
    return lines


def _package_table(
    shares: dict[str, dict[str, float]], micro: Sequence[dict[str, Any]]
) -> list[str]:
    """In-process CPU per request by package: the profile's shares x pyperf's median."""
    medians = {m["name"]: m["median_us"] for m in micro}
    flask_us = medians.get("bare Flask route")
    petsage_us = medians.get(f"PetSage {SMOKE_TEST_PATH}")
    flask, petsage = shares.get("bare_flask"), shares.get("petsage")
    if None in (flask_us, petsage_us, flask, petsage):
        return ["Not measured (see Problems)."]
    assert flask is not None and petsage is not None
    assert flask_us is not None and petsage_us is not None
    rows = []
    for package in set(flask) | set(petsage):
        mine = petsage.get(package, 0.0) * petsage_us
        theirs = flask.get(package, 0.0) * flask_us
        if max(mine, theirs) >= 0.05:
            rows.append((mine - theirs, package, theirs, mine))
    rows.sort(reverse=True)
    lines = [
        f"Self time of each package's code (and the built-ins it calls) in the"
        f" profiles, scaled to pyperf's medians: where PetSage's `{SMOKE_TEST_PATH}`"
        " spends what a bare Flask route does not. `bench` is the calling harness.",
        "",
        f"| package | bare Flask route us | PetSage `{SMOKE_TEST_PATH}` us"
        " | difference |",
        "|---|--:|--:|--:|",
    ]
    for difference, package, theirs, mine in rows:
        lines.append(f"| {package} | {theirs:.1f} | {mine:.1f} | {difference:+.1f} |")
    total = petsage_us - flask_us
    lines.append(f"| **total** | {flask_us:.1f} | {petsage_us:.1f} | {total:+.1f} |")
    return lines


def _other_load(runs: Sequence[LoadRun]) -> str:
    """Median and highest CPU other processes used during the runs."""
    loads = sorted(r.other_cores for r in valid(runs) if r.other_cores == r.other_cores)
    if not loads:
        return "n/a"
    busy = sum(load > 0.25 for load in loads)
    return (
        f"median {median(loads):.2f}, highest {loads[-1]:.2f};"
        f" {busy} of {len(loads)} runs shared the machine with more than 0.25 cores"
    )


def _profile_top(out: Path) -> list[str]:
    try:
        text = (out / PROFILE_FILE).read_text()
    except FileNotFoundError:
        return ["(no profile: see Problems)"]
    marker = "Flat, by self time"
    if marker not in text:
        return []
    flat = text.split(marker, 1)[1].splitlines()[2:]
    return [line for line in flat if line.strip()][:PROFILE_TOP_LINES]


def _bar_label(key: str, label: str, path: str) -> str:
    if key == PETSAGE:
        return f"PetSage\n{path}"
    if key == PETSAGE_MANAGEMENT:
        return f"PetSage\n{path}\nmanagement"
    if key == PETSAGE_METRICS_OFF:
        return f"PetSage\n{path}\nmetrics off"
    if key == BARE_WSGI:
        return "bare WSGI" + ("\n(no access log)" if path != SMOKE_TEST_PATH else "")
    if key == BARE_WSGI_CLOSE:
        return "bare WSGI\n(no access log)\nconnection\nper request"
    # "FastAPI, uvicorn --no-access-log" on three short lines.
    return label.replace(", ", "\n", 1).replace(" --", "\n--").replace(" as ", "\nas ")


def chart(
    out: Path,
    summaries: dict[tuple[str, str, int], Summary],
    context: Context,
) -> None:
    """Bars of server CPU per request, PetSage's endpoints beside the baselines."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    bars = [
        (candidate.key, path, _bar_label(candidate.key, candidate.label, path))
        for candidate in CANDIDATES
        for path in candidate.paths
    ]
    colours = {
        PETSAGE: "#2b6cb0",
        PETSAGE_MANAGEMENT: "#2c7a7b",
        PETSAGE_METRICS_OFF: "#63b3ed",
        BARE_WSGI: "#718096",
        BARE_WSGI_CLOSE: "#a0aec0",
        BARE_FLASK: "#4a5568",
    }
    width = 0.8 / len(context.connections)
    figure, axes = plt.subplots(figsize=(13, 6.5), dpi=110)
    for index, conns in enumerate(context.connections):
        xs, heights, low, high, colour = [], [], [], [], []
        for position, (key, path, _) in enumerate(bars):
            summary = summaries.get((key, path, conns))
            if summary is None:
                continue
            xs.append(position + (index - (len(context.connections) - 1) / 2) * width)
            heights.append(summary.cpu_us)
            low.append(summary.cpu_us - summary.cpu_us_min)
            high.append(summary.cpu_us_max - summary.cpu_us)
            colour.append(colours.get(key, "#dd6b20"))
        drawn = axes.bar(
            xs,
            heights,
            width * 0.95,
            yerr=[low, high],
            capsize=3,
            color=colour,
            alpha=1.0 if index == 0 else 0.6,
            hatch=None if index == 0 else "//",
            edgecolor="white",
            label=f"{conns} connections",
        )
        axes.bar_label(drawn, fmt="%.0f", padding=2, fontsize=8)
    flask = summaries.get((BARE_FLASK, SMOKE_TEST_PATH, context.connections[0]))
    wsgi = summaries.get((BARE_WSGI, SMOKE_TEST_PATH, context.connections[0]))
    if flask is not None:
        axes.axhline(
            0.75 * flask.cpu_us,
            color="#c53030",
            linestyle="--",
            linewidth=1,
            label=f"probe target: 0.75 x bare Flask ({context.connections[0]} conns)",
        )
    if wsgi is not None:
        axes.axhline(
            1.3 * wsgi.cpu_us,
            color="#805ad5",
            linestyle=":",
            linewidth=1.2,
            label=f"probe target: 1.3 x bare WSGI ({context.connections[0]} conns)",
        )
    axes.set_xticks(range(len(bars)), [label for _, _, label in bars], fontsize=9)
    axes.set_ylabel("server CPU time per request (us)")
    axes.set_title(
        "Server CPU per request (all server processes, user + system), median of"
        f" {context.rounds} round(s); whiskers: min-max\n{context.workers} workers"
        " each; gunicorn candidates share PetSage's gunicorn.conf.py (gthread,"
        f" {context.threads} threads)",
        fontsize=10,
    )
    top = max(
        (s.cpu_us_max for s in summaries.values() if s.cpu_us_max == s.cpu_us_max),
        default=1.0,
    )
    # Headroom above the tallest whisker for the value labels and the legend.
    axes.set_ylim(0, top * 1.3)
    axes.legend(fontsize=8, loc="upper center", ncol=2)
    axes.grid(axis="y", alpha=0.3)
    axes.set_axisbelow(True)
    figure.tight_layout()
    figure.savefig(out / CHART_FILE)
    plt.close(figure)


def write(
    out: Path,
    context: Context,
    runs: Sequence[LoadRun],
    launch_records: Sequence[Launch],
    micro: Sequence[dict[str, Any]],
    profile_shares: dict[str, dict[str, float]],
    problems: Sequence[str],
) -> None:
    """Write ``RESULTS.md`` and the chart to ``out``."""
    summaries = summarize(runs)
    launches = summarize_launches(launch_records)
    pooled = pooled_cpu(runs)
    found = targets(
        summaries, pooled, launches, context.connections, PETSAGE_PATHS, micro
    )
    if summaries:
        chart(out, summaries, context)
    before, after = context.machine_before, context.machine_after
    steal = steal_share(before, after)
    replaced = sum(run.workers_replaced for run in runs)
    lines = [
        "# PetSage load benchmark: results",
        "",
        f"Generated by `bash bench/run{' --quick' if context.quick else ''}` on"
        f" {after['time']} (commit {git_revision()}), in {context.elapsed_s / 60:.1f}"
        f" min: {context.rounds} round(s), {context.duration_s} s per wrk run,"
        f" {', '.join(map(str, context.connections))} connections,"
        f" {context.workers} worker processes for every server. Figures are medians"
        " over the rounds; ratios are ratios of those medians, from this run.",
        "",
        "Server CPU per request is the primary figure: the user + system CPU time of"
        " the server's whole process tree (master and workers, psutil) during a wrk"
        " run, divided by the requests wrk completed. On a shared 2-core machine it"
        " holds still where requests per second do not, since wrk shares those cores.",
        "",
        f"![server CPU per request]({CHART_FILE})",
        "",
        "## Targets (issues 4, 14 and 29)",
        "",
        *_targets_table(found),
        "",
        "CPU targets compare medians over every run at "
        + " and ".join(map(str, context.connections))
        + " connections"
        + (
            " (more samples than one connection count has, so less noise);"
            if len(context.connections) > 1
            else ";"
        )
        + ' the ratios per connection count are in the Load table. "Metrics off" is'
        " `PETSAGE_METRICS=false`; request ids have no switch. The JSON access log is"
        " gunicorn.conf.py's and every gunicorn candidate writes it alike, baselines"
        " included, so its cost is in both sides of each ratio.",
        "",
        "## Load",
        "",
        *_load_table(summaries, context.connections),
        "",
        "## Memory and start-up",
        "",
        "RSS is the mean resident set of the worker processes after warm-up; start-up"
        " is the time from launching the server to its first `200` on"
        f" `{SMOKE_TEST_PATH}` (one worker up), polled every 5 ms.",
        "",
        *_launch_table(launches),
        "",
        "## Where PetSage's CPU goes",
        "",
        *_decomposition(pooled, micro, context.connections),
        "",
        "### In process (pyperf, CPU time per call, no server)",
        "",
        *_micro_table(micro),
        "",
        f"### Profile of `{SMOKE_TEST_PATH}`, in process (pyinstrument)",
        "",
        *_package_table(profile_shares, micro),
        "",
        "Top entries by self time; the call tree is in"
        f" [{PROFILE_FILE}]({PROFILE_FILE}) and the bare Flask route's in"
        " [profile_bare_flask.txt](profile_bare_flask.txt).",
        "",
        "```",
        *_profile_top(out),
        "```",
        "",
        "## Method",
        "",
        "- Candidates: PetSage (`wsgi:app`: `/api/v1/smoke-test`, `/livez`,"
        " `/readyz`, `/health`); a bare WSGI callable and a bare Flask route"
        " answering the smoke test's exact bytes, served by gunicorn with PetSage's"
        " own `gunicorn.conf.py` (same workers, threads, access log to a file, hooks);"
        " the same endpoint in FastAPI (pydantic response model, `async def`) under"
        " uvicorn with as many worker processes, with uvicorn's defaults (access log"
        " on) and with `--no-access-log`. The bare WSGI callable is also measured on"
        f" `{BARE_WSGI_UNLOGGED_PATH}`, which PetSage's gunicorn logger leaves out of"
        " the access log: gunicorn's cost without the log line.",
        "- uvicorn 0.54 with `--workers N` leaves Nagle's algorithm on for every"
        " connection (Kludex/uvicorn#3149, open): each keep-alive response after the"
        " first waits ~40 ms for the client's delayed ACK. The FastAPI baselines run"
        " through `bench/apps/uvicorn_nodelay.py`, uvicorn's own command with the"
        " proposed fix (the listening socket marked `IPPROTO_TCP`); the row"
        ' "as shipped" is plain `uvicorn` and shows the stall.',
        "- Each round launches every candidate fresh, in an order rotated each round,"
        f" warms each path with {context.warmup_s} s of wrk, reads memory, then runs"
        " wrk per path and connection count, reading the server's CPU time before"
        " and after each run.",
        "- PetSage's successful `/livez` and `/readyz` requests are left out of its"
        " access log by design (docs/operators/monitoring.md); every other request"
        " of every gunicorn candidate writes an access log line.",
        "- Runs during which a server process exited or was replaced (part of their"
        f" CPU time unrecorded), left out of every figure: {replaced}.",
        "",
        "## Machine, versions, commands",
        "",
        f"- Date (UTC): {before['time']} to {after['time']}",
        f"- CPU: {cpu_model()}; {os.cpu_count()} CPUs,"
        f" {len(os.sched_getaffinity(0))} usable",
        f"- Kernel: {platform.release()}; OS: {os_name()}",
        "- Load average (1, 5, 15 min) before: "
        + ", ".join(f"{n:.2f}" for n in before["loadavg"])
        + "; after: "
        + ", ".join(f"{n:.2f}" for n in after["loadavg"]),
        "- CPU steal during the run (hypervisor time given to other guests): "
        + ("n/a" if steal is None else f"{steal:.1%}"),
        "- CPU used by other processes (neither the server nor wrk) during the wrk"
        f" runs, in cores of {os.cpu_count()}: {_other_load(runs)}",
        f"- Python {platform.python_version()} ({platform.python_implementation()});"
        f" wrk: {wrk_version()}",
        "- Packages: "
        + ", ".join(f"{name} {package_version(name)}" for name in PACKAGES),
        "- wrk: `"
        + " ".join(
            wrk_command("http://127.0.0.1:PORT/PATH", 64, context.duration_s)
        ).replace("-c64", "-c<16|64>")
        + "`; with `-H 'Connection: close'` for "
        + " and ".join(c.label for c in CANDIDATES if c.close)
        + " (a new connection for every request)",
        *(
            f"- {c.label}: `{c.shown_command(context.workers, context.threads)}`"
            for c in CANDIDATES
        ),
        "- In process: `python bench/microbench.py` (pyperf, 6 processes x 3 values,"
        " `time.process_time`) and `python -m bench.profiling DIR` (pyinstrument,"
        " 0.1 ms interval).",
        "",
        "## Problems",
        "",
        *([f"- {problem}".replace("\n", "\n  ") for problem in problems] or ["None."]),
        "",
    ]
    (out / "RESULTS.md").write_text("\n".join(lines))
