"""Write ``docs/reliability.md`` from the fault record's JSON lines.

``bash tests/faults/run`` (and ``.ci/run``) runs every fault test with
``PETSAGE_FAULT_RECORD`` naming a fresh file, then this module:

    python -m tests.faults.render RECORD --junit JUNIT_XML [--quick] [--output PATH]

It refuses (exit 1, nothing written) when a fault test failed or passed without
recording a row; a fault test skipped on this machine is listed with its reason.
"""

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
import xml.etree.ElementTree as ElementTree
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, fields
from pathlib import Path

from tests.support.fault_record import RECORD_VARIABLE, FaultRow
from tests.support.gunicorn_process import REPO_ROOT

OUTPUT = REPO_ROOT / "docs" / "reliability.md"
FULL_VARIABLE = "PETSAGE_FAULT_FULL"
COLUMNS = ("fault", "injected", "load meanwhile", "sent", "failed", "lost", "recovery")


class RecordError(Exception):
    """The record cannot be rendered: a fault test failed or recorded nothing."""


@dataclass(frozen=True)
class Outcome:
    """How one test ended in the run: passed, failed or skipped, and why."""

    status: str
    message: str = ""


@dataclass(frozen=True)
class Machine:
    """Where and when the record was measured."""

    date: str
    commit: str
    system: str
    processor: str
    cores: int
    usable_cores: int
    python: str


def read_rows(path: Path) -> list[FaultRow]:
    """The rows of a record file, one JSON object a line."""
    names = {field.name for field in fields(FaultRow)}
    rows = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            data = json.loads(line)
            if not isinstance(data, dict) or set(data) != names:
                raise ValueError(f"expected an object with the fields {sorted(names)}")
            row = FaultRow(**data)
            if not all(isinstance(n, int) for n in (row.sent, row.failed, row.lost)):
                raise ValueError("sent, failed and lost must be whole numbers")
        except ValueError as error:
            raise RecordError(f"{path}:{number}: not a row: {error}") from error
        rows.append(row)
    return rows


def junit_key(test_id: str) -> tuple[str, str]:
    """The (classname, name) pytest's JUnit XML gives the test ``test_id``."""
    path, *scopes = test_id.split("::")
    module = path.removesuffix(".py").replace("/", ".")
    return ".".join([module, *scopes[:-1]]), scopes[-1]


def read_outcomes(path: Path) -> dict[tuple[str, str], Outcome]:
    """Each test's outcome in pytest's JUnit XML, by (classname, name)."""
    outcomes: dict[tuple[str, str], Outcome] = {}
    for case in ElementTree.parse(path).iter("testcase"):
        key = (case.get("classname", ""), case.get("name", ""))
        outcome = Outcome("passed")
        for tag in ("failure", "error", "skipped"):
            element = case.find(tag)
            if element is not None:
                status = "skipped" if tag == "skipped" else "failed"
                outcome = Outcome(status, element.get("message", ""))
                break
        # A teardown error adds a second testcase element: the worst one counts.
        if outcomes.get(key, Outcome("passed")).status != "failed":
            outcomes[key] = outcome
    return outcomes


def collect_fault_tests() -> list[str]:
    """The ids of every test marked ``fault``, as pytest collects them."""
    environment = {
        name: value
        for name, value in os.environ.items()
        # The caller's options (CI's --junitxml) must not apply to this collection.
        if name not in ("PYTEST_ADDOPTS", RECORD_VARIABLE)
    }
    command = [sys.executable, "-m", "pytest", "-m", "fault", "--collect-only", "-q"]
    result = subprocess.run(
        [*command, "-p", "no:cacheprovider"],
        cwd=REPO_ROOT,
        env=environment,
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        raise RecordError(f"collecting the fault tests failed:\n{result.stdout}")
    return sorted(line for line in result.stdout.splitlines() if "::" in line)


def check_run(
    rows: Sequence[FaultRow],
    fault_tests: Iterable[str],
    outcomes: dict[tuple[str, str], Outcome],
) -> dict[str, str]:
    """The fault tests that recorded nothing because they were skipped, with why.

    Raises ``RecordError`` when a fault test failed or did not run, or passed
    without recording a row, or a row names a test that is not a fault test.
    """
    recorded = {row.test for row in rows}
    tests = set(fault_tests)
    problems: list[str] = []
    skipped: dict[str, str] = {}
    for test in sorted(tests):
        outcome = outcomes.get(junit_key(test))
        if outcome is None:
            problems.append(f"{test} did not run")
        elif outcome.status == "failed":
            problems.append(f"{test} failed")
        elif outcome.status == "skipped":
            skipped[test] = outcome.message
        elif test not in recorded:
            problems.append(f"{test} passed but recorded no row (call fault_record)")
    problems += [
        f"{test} recorded a row but is not marked fault"
        for test in sorted(recorded - tests)
    ]
    if not rows:
        problems.append("the record has no row")
    if problems:
        raise RecordError("\n".join(problems))
    return skipped


def git(*arguments: str) -> str:
    """The output of a git command in the repository, or "" without git."""
    try:
        result = subprocess.run(
            ["git", *arguments],
            cwd=REPO_ROOT,
            capture_output=True,
            text=True,
            check=True,
        )
    except (OSError, subprocess.CalledProcessError):
        return ""
    return result.stdout.strip()


def this_machine() -> Machine:
    """The date, commit and machine of this run."""
    commit = git("rev-parse", "--short", "HEAD") or "unknown (not a git checkout)"
    # The record itself is rewritten by every run: it does not count as a change.
    changes = git(
        "status", "--porcelain", "--", ".", f":!{OUTPUT.relative_to(REPO_ROOT)}"
    )
    if changes:
        commit += " with uncommitted changes"
    processor = ""
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                processor = line.split(":", 1)[1].strip()
                break
    return Machine(
        date=datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        commit=commit,
        system=f"{platform.system()} {platform.release()} {platform.machine()}",
        processor=processor or platform.processor() or "unknown processor",
        cores=os.cpu_count() or 0,
        usable_cores=len(os.sched_getaffinity(0)),
        python=platform.python_version(),
    )


def cell(value: object) -> str:
    """``value`` as one Markdown table cell."""
    return " ".join(str(value).split()).replace("|", "\\|")


def render(
    rows: Sequence[FaultRow], skipped: dict[str, str], machine: Machine, quick: bool
) -> str:
    """The Markdown text of ``docs/reliability.md``."""
    form = (
        "short form (`--quick`, the test suite's own: scenarios with a long form, "
        f"such as the soak, run their short one unless {FULL_VARIABLE}=1)"
        if quick
        else "full form"
    )
    lines = [
        "# Reliability: the fault record",
        "",
        "Every fault PetSage is tested against, injected into real processes on "
        "127.0.0.1 (gunicorn, HAProxy, nginx), and what became of the requests sent "
        "meanwhile. Generated by `bash tests/faults/run`; do not edit by hand.",
        "",
        f"Measured {machine.date} on commit {machine.commit}, {form}; "
        f"{machine.system}, {machine.processor}, {machine.usable_cores} usable of "
        f"{machine.cores} CPU cores (shared with other work), Python {machine.python}.",
        "",
        "| " + " | ".join((*COLUMNS, "test")) + " |",
        "|" + "---|" * 3 + "--:|" * 3 + "---|---|",
    ]
    # Stable: by test id, and within a test in the order it recorded its rows.
    for row in sorted(rows, key=lambda row: row.test):
        values = (
            row.fault,
            row.injected,
            row.load,
            f"{row.sent:,}",
            f"{row.failed:,}",
            f"{row.lost:,}",
            row.recovery,
            f"`{row.test}`",
        )
        lines.append("| " + " | ".join(cell(value) for value in values) + " |")
    lines += [
        "",
        "**sent**: requests the load sent while the fault was in effect (for the "
        "probe scenarios, the probes). **failed**: requests answered wrongly, with "
        "a status or body other than expected (a proxy's `503` included). **lost**: "
        "requests that got no answer at all (reset, refused, timed out). Each test "
        "fails when more requests fail or are lost than its scenario allows; the "
        "rows for gunicorn alone under slow clients and for probes to the main port "
        "of a busy instance are measurements, kept to show what the recommended "
        "deployment prevents.",
        "",
        "To regenerate: `bash tests/faults/run` (the full form) or "
        "`bash tests/faults/run --quick` (the short form, which the test suite and "
        "CI run). It runs `pytest -m fault` with `PETSAGE_FAULT_RECORD` naming a "
        "fresh file, to which each fault test appends its rows as JSON lines, and "
        "rewrites this file only when every fault test passed (one skipped on the "
        "machine is listed under *Not measured in this run*). Figures vary from run "
        "to run with the machine's load; the tests hold the counts, not the timings.",
    ]
    if skipped:
        lines += ["", "## Not measured in this run", ""]
        lines += [
            f"- `{test}`: skipped: {cell(reason)}" for test, reason in skipped.items()
        ]
    return "\n".join(lines) + "\n"


def write_atomically(path: Path, text: str) -> None:
    """Replace ``path`` with ``text`` in one step: never a half-written record."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    partial.write_text(text)
    partial.replace(path)


def main(argv: Sequence[str] | None = None) -> int:
    """Render the record file named on the command line; 0 when written."""
    parser = argparse.ArgumentParser(
        prog="python -m tests.faults.render", description=__doc__.splitlines()[0]
    )
    parser.add_argument(
        "record", type=Path, help="the JSON lines the fault tests wrote"
    )
    parser.add_argument(
        "--junit", type=Path, required=True, help="pytest's --junitxml of the same run"
    )
    parser.add_argument(
        "--quick", action="store_true", help="the run was the short form"
    )
    parser.add_argument(
        "--output", type=Path, default=OUTPUT, help="default: %(default)s"
    )
    arguments = parser.parse_args(argv)
    try:
        rows = read_rows(arguments.record)
        skipped = check_run(rows, collect_fault_tests(), read_outcomes(arguments.junit))
    except (OSError, ElementTree.ParseError, RecordError) as error:
        print(f"fault record not written: {error}", file=sys.stderr)
        return 1
    write_atomically(
        arguments.output, render(rows, skipped, this_machine(), arguments.quick)
    )
    print(f"{arguments.output}: {len(rows)} rows, {len(skipped)} tests skipped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
