"""ruff and mypy pass on the whole project, as part of the test command; no test
function runs over 50 lines."""

import ast
import configparser
import shutil
import subprocess
import sys
from importlib.metadata import version
from pathlib import Path

import pytest

from petsage.instance.directory import LEGACY_REMOVED_IN
from tests.support.gunicorn_process import REPO_ROOT

BIN = Path(sys.executable).parent
# A test longer than this is split into helpers whose names say what its steps do.
MAX_TEST_LINES = 50
# The files that decide what ruff and mypy check.
CONFIGURATION = ("ruff.toml", "setup.cfg", "pyproject.toml", ".gitignore")
# What setup.cfg's mypy ``files`` names, stood in for by empty modules.


def mypy_stand_ins() -> list[str]:
    """A stand-in file for each entry of mypy's ``files`` (setup.cfg): the file, or a
    package's ``__init__.py``."""
    config = configparser.ConfigParser()
    config.read(REPO_ROOT / "setup.cfg")
    entries = [entry.strip() for entry in config["mypy"]["files"].split(",")]
    return [
        entry if (REPO_ROOT / entry).is_file() else f"{entry}/__init__.py"
        for entry in entries
    ]


def run_tool(*args: str, cwd: Path = REPO_ROOT) -> subprocess.CompletedProcess[str]:
    """Run a Python tool from this environment in the project root (or ``cwd``)."""
    return subprocess.run(
        [sys.executable, "-m", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_ruff_check_passes() -> None:
    result = run_tool("ruff", "check", ".")
    assert result.returncode == 0, result.stdout + result.stderr


def test_ruff_format_leaves_nothing_to_change() -> None:
    result = run_tool("ruff", "format", "--check", ".")
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.slow
def test_mypy_passes() -> None:
    result = run_tool("mypy")
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.slow
def test_a_python_client_generated_into_the_root_is_not_checked(
    tmp_path: Path,
) -> None:
    """The client docs/api/clients.md once generated into the root (the generator's
    code, with lines over 88 characters) is left out of ruff and mypy."""
    root = tmp_path / "root"
    for name in CONFIGURATION:
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(REPO_ROOT / name, root / name)
    for name in mypy_stand_ins():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text('"""A stand-in."""\n')
    generated = subprocess.run(
        [
            *(BIN / "openapi-python-client", "generate", "--meta", "none"),
            *("--path", REPO_ROOT / "openapi.json", "--output-path", "petsage_client"),
        ],
        cwd=root,
        env={"PATH": str(BIN), "HOME": str(tmp_path)},
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert generated.returncode == 0, generated.stdout + generated.stderr
    client = root / "petsage_client"
    assert len(list(client.rglob("*.py"))) > 10
    # Without the exclusion ruff would report the client: the check is real.
    unexcluded = run_tool("ruff", "check", "--isolated", "petsage_client", cwd=root)
    assert "petsage_client/" in unexcluded.stdout
    for tool in (("ruff", "check", "."), ("ruff", "format", "--check", "."), ("mypy",)):
        result = run_tool(*tool, cwd=root)
        assert result.returncode == 0, result.stdout + result.stderr
        assert "petsage_client" not in result.stdout + result.stderr
    ignored = (REPO_ROOT / ".gitignore").read_text().splitlines()
    assert "/petsage_client/" in ignored


def test_the_clean_up_of_earlier_releases_is_removed_when_due() -> None:
    installed = tuple(int(part) for part in version("petsage-backend").split(".")[:3])
    assert installed < LEGACY_REMOVED_IN, (
        "remove the clean-up of 1.0.x instance directories (LEGACY_* in"
        " petsage.instance.directory) and this test"
    )


def long_test_functions(root: Path) -> list[str]:
    """Each test function under ``root`` over MAX_TEST_LINES: where, name, size."""
    found = []
    for path in sorted(root.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if not isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                continue
            lines = (node.end_lineno or node.lineno) - node.lineno + 1
            if node.name.startswith("test_") and lines > MAX_TEST_LINES:
                where = f"{path.relative_to(REPO_ROOT)}:{node.lineno}"
                found.append(f"{where} {node.name} ({lines} lines)")
    return found


def test_no_test_function_runs_over_50_lines() -> None:
    long_tests = long_test_functions(REPO_ROOT / "tests")
    assert not long_tests, (
        f"test functions over {MAX_TEST_LINES} lines (extract helpers whose names say"
        " what the steps do):\n" + "\n".join(long_tests)
    )
