"""Where a request's time goes, in process: pyinstrument profiles of the request path.

``python -m bench.profiling OUT_DIR [--seconds S]`` writes ``profile_smoke_test.txt``
(PetSage's ``GET /api/v1/smoke-test``) and ``profile_bare_flask.txt`` (the bare Flask
route, for comparison): the call tree first, then a flat list by self time.
"""

import argparse
import json
import time
from pathlib import Path

from pyinstrument import Profiler
from pyinstrument.frame import Frame

from bench.apps import SMOKE_TEST_PATH
from bench.microbench import application, call, check, environ_for

#: 0.1 ms: a request costs tens of microseconds, so the default 1 ms sees too little.
INTERVAL_S = 0.0001
FLAT_LINES = 40

PROFILES = (
    ("profile_smoke_test.txt", "petsage", SMOKE_TEST_PATH, "PetSage"),
    ("profile_bare_flask.txt", "bare_flask", SMOKE_TEST_PATH, "bare Flask route"),
)


def flat_entries(flat: str) -> list[str]:
    """The lines of pyinstrument's flat report, without its banner."""
    lines = flat.splitlines()
    for index, line in enumerate(lines):
        if line.startswith("Profile at "):
            return [entry for entry in lines[index + 1 :] if entry.strip()]
    return lines


def package_of(frame: Frame, inherited: str) -> str:
    """The top-level package a frame's code belongs to (``flask``, ``json``, ...).

    Built-in functions count towards the package that called them.
    """
    short = frame.file_path_short
    if not short or short.startswith("<"):
        return inherited
    return short.replace("\\", "/").split("/", 1)[0].removesuffix(".py")


def self_time_by_package(root: Frame | None) -> dict[str, float]:
    """Seconds of self time per top-level package, over the whole call tree."""
    totals: dict[str, float] = {}
    stack = [(root, "?")] if root is not None else []
    while stack:
        frame, inherited = stack.pop()
        package = package_of(frame, inherited)
        if not frame.is_synthetic:
            own = frame.time - sum(
                child.time for child in frame.children if not child.is_synthetic
            )
            totals[package] = totals.get(package, 0.0) + own
        stack.extend((child, package) for child in frame.children)
    return totals


def profile(name: str, path: str, seconds: float) -> tuple[str, int, dict[str, float]]:
    """Profile requests to ``path`` through ``name``'s app for about ``seconds``.

    Returns the text report, how many requests it covers, and each package's share
    of the time.
    """
    app = application(name)
    check(name, path)
    template = environ_for(path)
    for _ in range(2000):
        # Warm caches (routing, werkzeug's header objects) before measuring.
        call(app, template)
    profiler = Profiler(interval=INTERVAL_S, async_mode="disabled")
    requests = 0
    deadline = time.monotonic() + seconds
    profiler.start()
    while time.monotonic() < deadline:
        for _ in range(100):
            call(app, template)
        requests += 100
    session = profiler.stop()
    by_package = self_time_by_package(session.root_frame(trim_stem=False))
    total = sum(by_package.values()) or 1.0
    shares = {package: time / total for package, time in by_package.items()}
    tree = profiler.output_text(unicode=False, color=False, show_all=True)
    flat = profiler.output_text(unicode=False, color=False, flat=True)
    flat_top = "\n".join(flat_entries(flat)[:FLAT_LINES])
    report = f"{tree}\nFlat, by self time (top {FLAT_LINES} lines):\n\n{flat_top}\n"
    return report, requests, shares


def main() -> None:
    """Write the profiles to the output directory."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("out", type=Path, help="directory for the profile files")
    parser.add_argument(
        "--seconds", type=float, default=5.0, help="profiling time per profile"
    )
    parser.add_argument(
        "--summary", type=Path, help="write each package's share of time here (JSON)"
    )
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    summary: dict[str, dict[str, float]] = {}
    for filename, name, path, title in PROFILES:
        text, requests, shares = profile(name, path, args.seconds)
        summary[name] = shares
        header = (
            f"pyinstrument profile of GET {path} through the {title} WSGI app, in"
            f" process ({requests} requests, sampled every {INTERVAL_S * 1e3:.1f} ms)."
            "\nRegenerate with: bash bench/run (or python -m bench.profiling DIR)\n"
        )
        (args.out / filename).write_text(header + text)
    if args.summary is not None:
        args.summary.write_text(json.dumps(summary, indent=1) + "\n")


if __name__ == "__main__":
    main()
