"""Who may import whom in petsage/: the import-linter contracts in setup.cfg hold, and
an import that breaks one of them is caught (the rules: the ``petsage`` docstring)."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.gunicorn_process import REPO_ROOT

pytestmark = pytest.mark.slow  # real processes: not in the fast tier

LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")


def lint_imports(project: Path) -> subprocess.CompletedProcess[str]:
    """Run lint-imports on the ``petsage`` package and setup.cfg in ``project``."""
    return subprocess.run(
        [str(LINT_IMPORTS), "--no-cache", "--no-logo"],
        cwd=project,
        # Ahead of the editable install, so that a copy's petsage is the one analysed;
        # wide, so that no contract's name is wrapped.
        env={**os.environ, "PYTHONPATH": str(project), "COLUMNS": "200"},
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_the_import_contracts_hold() -> None:
    result = lint_imports(REPO_ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Contracts: 3 kept, 0 broken." in result.stdout


@pytest.fixture
def project_copy(tmp_path: Path) -> Path:
    """A copy of the package and setup.cfg, to break a contract in."""
    shutil.copytree(
        REPO_ROOT / "petsage",
        tmp_path / "petsage",
        ignore=shutil.ignore_patterns("__pycache__"),
    )
    shutil.copy(REPO_ROOT / "setup.cfg", tmp_path)
    return tmp_path


@pytest.mark.parametrize(
    ("module", "forbidden_import", "broken_contract"),
    [
        ("api.py", "petsage.serving.server", "Programs"),
        ("__init__.py", "petsage.cli.commands", "The app factory"),
        ("app.py", "petsage.serving.server", "The app factory"),
        ("cli/commands.py", "petsage.serving.logs", "Programs"),
        ("serving/server.py", "petsage.cli.contract", "Programs"),
        ("instance.py", "petsage.health.state", "Programs"),
        (
            "features/second_feature/__init__.py",
            "petsage.features.smoke_test.service",
            "A feature never imports another feature",
        ),
    ],
)
def test_an_import_against_the_rules_is_caught(
    project_copy: Path, module: str, forbidden_import: str, broken_contract: str
) -> None:
    path = project_copy / "petsage" / module
    path.parent.mkdir(exist_ok=True)
    source = path.read_text() if path.exists() else ""
    path.write_text(source + f"\nimport {forbidden_import}  # noqa\n")
    result = lint_imports(project_copy)
    assert result.returncode == 1, result.stdout + result.stderr
    assert forbidden_import in result.stdout
    broken = [line for line in result.stdout.splitlines() if line.endswith("BROKEN")]
    assert any(broken_contract in line for line in broken), result.stdout
