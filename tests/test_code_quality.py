"""ruff and mypy pass on the whole project, as part of the test command; no test
function runs over 50 lines; the package's prose names what exists; the clean-up of
earlier releases goes when due."""

import ast
import configparser
import importlib
import importlib.util
import io
import re
import shutil
import subprocess
import sys
import tokenize
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


def prose_of(path: Path) -> list[tuple[int, str]]:
    """The comments and docstrings of a Python file, with their line numbers."""
    source = path.read_text()
    prose = [
        (token.start[0], token.string)
        for token in tokenize.generate_tokens(io.StringIO(source).readline)
        if token.type == tokenize.COMMENT
    ]
    for node in ast.walk(ast.parse(source)):
        if isinstance(
            node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef
        ):
            docstring = ast.get_docstring(node, clean=False)
            if docstring and node.body:
                prose.append((node.body[0].lineno, docstring))
    return prose


def resolves(dotted: str) -> bool:
    """Whether ``dotted`` names a module of PetSage's, or a name in one."""
    parts = dotted.split(".")
    for end in range(len(parts), 0, -1):
        module = ".".join(parts[:end])
        if importlib.util.find_spec(module) is None:
            continue
        target: object = importlib.import_module(module)
        for name in parts[end:]:
            if not hasattr(target, name):
                return False
            target = getattr(target, name)
        return True
    return False


PACKAGE_SOURCES = sorted(
    [*(REPO_ROOT / "petsage").rglob("*.py"), REPO_ROOT / "gunicorn.conf.py"]
)
# A path a comment or docstring names in the repository: its first folder is one of
# these, or it is a file at the top.
REPOSITORY_PATH = re.compile(
    r"(?<![\w./-])((?:bench|deploy|docs|tests|tools|contracts)/[\w./-]*[\w/]"
    r"|(?:setup\.cfg|pyproject\.toml|gunicorn\.conf\.py|wsgi\.py|mkdocs\.yml))"
)
DOTTED_NAME = re.compile(r"(?<![\w./])petsage(?:\.[A-Za-z_]\w*)+")


@pytest.mark.parametrize(
    "path", PACKAGE_SOURCES, ids=lambda path: str(path.relative_to(REPO_ROOT))
)
def test_the_packages_prose_names_modules_and_paths_that_exist(path: Path) -> None:
    stale = []
    for line, text in prose_of(path):
        stale += [
            f"{line}: {name} (name the module: petsage.…)"
            for name in re.findall(r"petsage/[\w/]+\.py", text)
        ]
        stale += [
            f"{line}: {name}"
            for name in DOTTED_NAME.findall(text)
            if not resolves(name.rstrip("."))
        ]
        stale += [
            f"{line}: {name}"
            for name in REPOSITORY_PATH.findall(text)
            if not (REPO_ROOT / name.rstrip(".")).exists()
        ]
    assert stale == []


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
