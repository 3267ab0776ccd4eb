"""The fault record's renderer and run script, and the committed docs/reliability.md."""

import json
import os
import subprocess
import sys
from dataclasses import asdict, replace
from pathlib import Path

import pytest

from tests.faults.render import (
    OUTPUT,
    Machine,
    Outcome,
    RecordError,
    check_run,
    collect_fault_tests,
    junit_key,
    main,
    read_outcomes,
    read_rows,
    render,
)
from tests.support.fault_record import FaultRow
from tests.support.gunicorn_process import REPO_ROOT

ROW = FaultRow(
    fault="worker killed",
    injected="SIGKILL to 1 of 2 workers",
    load="4 client threads",
    sent=1000,
    failed=1,
    lost=2,
    recovery="0.1 s",
    test="tests/test_b.py::test_kill",
)
MACHINE = Machine(
    date="2026-01-02 03:04 UTC",
    commit="abc1234",
    system="Linux 6.1 x86_64",
    processor="a processor",
    cores=8,
    usable_cores=2,
    python="3.11.7",
)
PASSED = Outcome("passed")
# CI's pytest options (its --junitxml) must not reach the pytest these tests start.
ENVIRONMENT = {
    key: value for key, value in os.environ.items() if key != "PYTEST_ADDOPTS"
}


def table_rows(text: str) -> list[str]:
    """The data rows of the record's table."""
    lines = [line for line in text.splitlines() if line.startswith("| ")]
    return lines[1:]


def test_rows_are_ordered_by_test_and_kept_in_order_within_a_test() -> None:
    rows = [
        replace(ROW, fault="second of b", test="tests/test_b.py::test_x"),
        replace(ROW, fault="only one of a", test="tests/test_a.py::test_y"),
        replace(ROW, fault="third of b", test="tests/test_b.py::test_x"),
    ]
    text = render(rows, {}, MACHINE, quick=False)
    assert [line.split(" | ")[0] for line in table_rows(text)] == [
        "| only one of a",
        "| second of b",
        "| third of b",
    ]


def test_each_row_shows_the_counts_and_the_run_says_where_it_was_measured() -> None:
    text = render([ROW], {}, MACHINE, quick=True)
    [line] = table_rows(text)
    assert "| 1,000 | 1 | 2 | 0.1 s |" in line
    assert "on commit abc1234" in text
    assert "2 usable of 8 CPU cores" in text
    assert "2026-01-02 03:04 UTC" in text
    assert "short form" in text
    assert "**lost**: requests that got no answer at all" in text
    assert "`bash tests/faults/run`" in text


def test_text_cannot_break_the_table() -> None:
    row = replace(ROW, injected="a | b\nc", recovery="  d  ")
    [line] = table_rows(render([row], {}, MACHINE, quick=False))
    assert "a \\| b c" in line
    assert line.count(" | ") == 7  # eight cells


def test_skipped_fault_tests_are_listed_with_their_reason() -> None:
    skipped = check_run(
        [ROW],
        [ROW.test, "tests/test_c.py::test_tmpfs"],
        {
            junit_key(ROW.test): PASSED,
            junit_key("tests/test_c.py::test_tmpfs"): Outcome("skipped", "no mount"),
        },
    )
    assert skipped == {"tests/test_c.py::test_tmpfs": "no mount"}
    text = render([ROW], skipped, MACHINE, quick=False)
    assert "- `tests/test_c.py::test_tmpfs`: skipped: no mount" in text


@pytest.mark.parametrize(
    ("outcome", "recorded", "complaint"),
    [
        (Outcome("failed", "assert 3 == 0"), True, "failed"),
        (PASSED, False, "recorded no row"),
        (None, True, "did not run"),
    ],
)
def test_a_run_with_a_failed_or_silent_fault_test_is_refused(
    outcome: Outcome | None, recorded: bool, complaint: str
) -> None:
    outcomes = {junit_key(ROW.test): outcome} if outcome else {}
    other = replace(ROW, test="tests/test_a.py::test_other")
    with pytest.raises(RecordError, match=complaint):
        check_run(
            [ROW, other] if recorded else [other],
            [ROW.test, other.test],
            {**outcomes, junit_key(other.test): PASSED},
        )


def test_a_row_from_a_test_not_marked_fault_is_refused() -> None:
    with pytest.raises(RecordError, match="not marked fault"):
        check_run([ROW], [], {junit_key(ROW.test): PASSED})


def test_a_malformed_record_line_is_refused(tmp_path: Path) -> None:
    record = tmp_path / "record.jsonl"
    good = json.dumps(asdict(ROW))
    record.write_text(f"{good}\n\n{json.dumps({**asdict(ROW), 'sent': 'many'})}\n")
    with pytest.raises(RecordError, match=r"record.jsonl:3: .*whole numbers"):
        read_rows(record)
    record.write_text(good + "\n")
    assert read_rows(record) == [ROW]


@pytest.mark.slow
def test_outcomes_are_read_from_pytests_own_junit_xml(tmp_path: Path) -> None:
    # A real pytest run, so that junit_key matches what pytest writes.
    package = tmp_path / "sample"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "test_sample.py").write_text(
        "import pytest\n"
        "def test_passes(): pass\n"
        "@pytest.mark.skip(reason='no tmpfs here')\n"
        "def test_skipped(): pass\n"
        "class TestGroup:\n"
        "    @pytest.mark.parametrize('n', [1, 2])\n"
        "    def test_fails(self, n): assert n == 1\n"
    )
    junit = tmp_path / "junit.xml"
    pytest = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider"]
    subprocess.run(
        [*pytest, "--rootdir", str(tmp_path), f"--junitxml={junit}", "sample"],
        cwd=tmp_path,
        env=ENVIRONMENT,
        capture_output=True,
        check=False,
    )
    outcomes = read_outcomes(junit)
    status = {
        test: outcomes[junit_key(f"sample/test_sample.py::{test}")].status
        for test in (
            "test_passes",
            "test_skipped",
            "TestGroup::test_fails[1]",
            "TestGroup::test_fails[2]",
        )
    }
    assert status == {
        "test_passes": "passed",
        "test_skipped": "skipped",
        "TestGroup::test_fails[1]": "passed",
        "TestGroup::test_fails[2]": "failed",
    }
    assert outcomes[junit_key("sample/test_sample.py::test_skipped")].message == (
        "no tmpfs here"
    )


@pytest.mark.slow
def test_the_run_script_leaves_the_record_alone_when_pytest_fails() -> None:
    before = OUTPUT.read_bytes() if OUTPUT.exists() else None
    # No fault test selected: pytest exits 5, as it would on a failure, quickly.
    result = subprocess.run(
        ["bash", "tests/faults/run", "--quick"],
        cwd=REPO_ROOT,
        env={**ENVIRONMENT, "PYTEST_ADDOPTS": "-k no_such_fault_test -n 0"},
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 5, result.stdout + result.stderr
    assert "docs/reliability.md not changed" in result.stderr
    assert (OUTPUT.read_bytes() if OUTPUT.exists() else None) == before


def test_the_run_script_refuses_unknown_arguments() -> None:
    result = subprocess.run(
        ["bash", "tests/faults/run", "--fast"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 64
    assert "usage: bash tests/faults/run [--quick]" in result.stderr


def test_the_renderer_writes_nothing_for_a_record_it_refuses(tmp_path: Path) -> None:
    record = tmp_path / "record.jsonl"
    record.write_text("not json\n")
    junit = tmp_path / "junit.xml"
    junit.write_text("<testsuites/>")
    output = tmp_path / "reliability.md"
    assert main([str(record), "--junit", str(junit), "--output", str(output)]) == 1
    assert not output.exists()


@pytest.mark.slow
def test_the_committed_record_covers_every_fault_test() -> None:
    """Adding a fault test means regenerating: bash tests/faults/run --quick."""
    text = OUTPUT.read_text()
    missing = [test for test in collect_fault_tests() if f"`{test}`" not in text]
    assert missing == [], "not in docs/reliability.md: run bash tests/faults/run"
