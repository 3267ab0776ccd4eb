"""The README's commands are the ones the project runs."""

from pathlib import Path

from tests.support.gunicorn_process import REPO_ROOT
from tests.support.readme_commands import START_COMMAND, TEST_COMMAND


def readme_lines() -> list[str]:
    """The README, line by line."""
    return (REPO_ROOT / "README.md").read_text().splitlines()


def test_readme_gives_the_test_command() -> None:
    assert TEST_COMMAND in readme_lines()


def test_readme_gives_the_start_command() -> None:
    assert START_COMMAND in readme_lines()


def test_ci_runs_the_readmes_test_command() -> None:
    assert TEST_COMMAND in Path(REPO_ROOT / ".ci" / "run").read_text().splitlines()
