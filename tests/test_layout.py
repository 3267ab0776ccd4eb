"""Who may import whom in petsage/: the import-linter contracts in setup.cfg hold, and
an import that breaks one of them is caught (the rules: the ``petsage`` docstring); no
two modules import each other, not even inside a function or for type checking. In
tests/, no test module imports another: what tests share lives in tests/support/."""

import ast
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator, Mapping
from pathlib import Path

import pytest

from tests.support.gunicorn_process import REPO_ROOT
from tests.support.import_graph import import_graph

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


def import_cycles(graph: Mapping[str, set[str]]) -> list[list[str]]:
    """Cycles of imports, each the shortest path from a module back to itself; a
    module on a cycle found already starts no other."""
    cycles = []
    seen: set[str] = set()
    for start in sorted(graph):
        if start in seen:
            continue
        # The shortest path from start back to start, breadth first.
        paths = {imported: [start, imported] for imported in graph[start]}
        queue = sorted(paths)
        while queue and start not in paths:
            module = queue.pop(0)
            for imported in sorted(graph[module] - paths.keys()):
                paths[imported] = [*paths[module], imported]
                queue.append(imported)
        if start in paths:
            cycles.append(paths[start])
            seen.update(paths[start])
    return cycles


def test_no_petsage_modules_import_each_other() -> None:
    cycles = import_cycles(import_graph(REPO_ROOT))
    assert not cycles, "import cycles: " + "; ".join(
        " -> ".join(cycle) for cycle in cycles
    )


def test_an_import_cycle_is_caught_wherever_its_imports_are(
    project_copy: Path,
) -> None:
    package = project_copy / "petsage" / "cycle"
    package.mkdir()
    (package / "__init__.py").write_text("from petsage.cycle import first\n")
    (package / "first.py").write_text(
        "def later() -> None:\n    from . import second\n"
    )
    (package / "second.py").write_text(
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n    from petsage.cycle.first import later\n"
    )
    graph = import_graph(project_copy)
    assert graph["petsage.cycle"] == set()  # a package's own modules: no edge
    assert ["petsage.cycle.first", "petsage.cycle.second", "petsage.cycle.first"] in (
        import_cycles(graph)
    )


def test_the_package_keeps_few_loose_modules() -> None:
    # A reader who opens petsage/ sees the factory, the API's pieces and the shared
    # modules; what belongs together has a package (middleware, health, serving, ...).
    loose = sorted(
        path.name
        for path in (REPO_ROOT / "petsage").glob("*.py")
        if path.name != "__init__.py"
    )
    assert len(loose) <= 11, loose


def test_the_tests_mirror_the_package() -> None:
    # Each package of petsage/ has its folder of tests; only cross-cutting modules
    # (the README, the supply chain, the layout itself) stay at the top.
    top = sorted(path.name for path in (REPO_ROOT / "tests").glob("test_*.py"))
    assert len(top) <= 10, top
    packages = {
        path.parent.name
        for path in (REPO_ROOT / "petsage").glob("*/__init__.py")
        if path.parent.name != "middleware"
    }
    folders = {path.name for path in (REPO_ROOT / "tests").iterdir() if path.is_dir()}
    assert packages <= folders, packages - folders
    assert (REPO_ROOT / "tests" / "features" / "test_smoke_test.py").is_file()


def imported_modules(path: Path) -> Iterator[str]:
    """The dotted names of the modules ``path`` imports, wherever the statement is;
    relative imports resolved. ``from a import b`` gives a, and a.b too when a.b is a
    module of the repository."""
    package = ".".join(path.relative_to(REPO_ROOT).parent.parts)
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.rsplit(".", node.level - 1)[0]
                base = f"{anchor}.{base}" if base else anchor
            yield base
            for alias in node.names:
                name = f"{base}.{alias.name}"
                if (REPO_ROOT / (name.replace(".", "/") + ".py")).is_file():
                    yield name


def test_no_test_module_imports_another_test_module() -> None:
    # What tests share lives in tests/support/ (or a helper module beside them, such
    # as tests/containers/podman.py): a test module is pytest's to collect, never
    # another module's to import. conftest.py is not a test module.
    imports = sorted(
        f"{path.relative_to(REPO_ROOT)} imports {imported}"
        for path in (REPO_ROOT / "tests").rglob("*.py")
        for imported in set(imported_modules(path))
        if imported.rpartition(".")[2].startswith("test_")
    )
    assert imports == [], "test modules imported:\n" + "\n".join(imports)
