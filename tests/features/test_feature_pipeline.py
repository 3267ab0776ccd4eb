"""The feature pipeline: what tools/new-feature makes passes every gate at once, and
``--remove`` puts the tree back to its bytes (docs/contributors/adding-a-feature.md).

In a copy of the repository (its files as git lists them, tracked and untracked but not
ignored), with this checkout's environment and tools/openapi's npm packages, it makes
two features, a resource (``--resource``: records in the database, a migration) and a
status at a path of its own, and runs the gate there: ruff, mypy, the import contracts,
the features' own tests, the fast tier of the suite and every slow test whose outcome
depends on the routes or the documents (marked ``routes``: schemathesis on both
listeners, the security and method rules on real gunicorns), the OpenAPI linters, the
breaking-change gate and the docs build. The rest of the slow tier (signals, drains,
faults, containers) serves the same application whatever its features, and would
double the test command's time.
Then it removes both and compares every file's bytes with the copy's before.
"""

import contextlib
import hashlib
import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.checkout_copy import copy_checkout, run_in
from tests.support.gunicorn_process import REPO_ROOT
from tests.support.openapi_tools import require_npm_packages

# It runs the fast tier and every linter in a copy.
pytestmark = [pytest.mark.slow, pytest.mark.long]

# The commands docs/contributors/adding-a-feature.md shows, run here as written.
STATUS_DRY_RUN = "tools/new-feature pet_profile --dry-run"
STATUS = "tools/new-feature pet_profile"
DRY_RUN = "tools/new-feature pet_profile --resource --dry-run"
NEW_FEATURE = "tools/new-feature pet_profile --resource"
SECOND_FEATURE = "tools/new-feature health_tracker --path /api/v1/pets/health-log"
REMOVE = "tools/new-feature --remove pet_profile"
REMOVE_SECOND = "tools/new-feature --remove health_tracker"
# Each feature's paths and the operations on them the gate sees added.
FEATURES: dict[str, dict[str, tuple[str, ...]]] = {
    "pet_profile": {
        "/api/v1/pet-profiles": ("GET", "POST"),
        "/api/v1/pet-profiles/{pet_profile_id}": ("GET", "PATCH", "DELETE"),
    },
    "health_tracker": {"/api/v1/pets/health-log": ("GET",)},
}
BIN = Path(sys.executable).parent


def copy_repository(destination: Path) -> Path:
    """The checkout's files in ``destination``, tools/openapi's npm packages linked; a
    git repository of its own (nothing committed), so that git can list its files the
    same way."""
    copy_checkout(destination)
    modules = REPO_ROOT / "tools" / "openapi" / "node_modules"
    (destination / "tools" / "openapi" / "node_modules").symlink_to(modules)
    # mypy's cache of the libraries (keyed by module, the same here): without it the
    # copy's mypy would check every dependency again, a minute of the test.
    cache = REPO_ROOT / ".mypy_cache"
    if cache.is_dir():
        # A mypy running meanwhile may replace files as they are copied: what is
        # copied is a cache, which mypy checks before it trusts an entry.
        with contextlib.suppress(shutil.Error, OSError):
            shutil.copytree(cache, destination / ".mypy_cache")
    subprocess.run(["git", "init", "--quiet"], cwd=destination, check=True)
    return destination


def tree_hashes(root: Path) -> dict[str, str]:
    """Each file git would list in ``root`` (not ignored) and a hash of its bytes; a
    symbolic link by its target."""
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--others", "--exclude-standard"],
        cwd=root,
        capture_output=True,
        check=True,
    ).stdout
    hashes = {}
    for name in filter(None, listed.split(b"\0")):
        path = root / os.fsdecode(name)
        content = os.readlink(path).encode() if path.is_symlink() else path.read_bytes()
        hashes[os.fsdecode(name)] = hashlib.sha256(content).hexdigest()
    return hashes


def passes(root: Path, *command: str | Path) -> str:
    """Run ``command`` in ``root``; it must succeed. Its output."""
    result = run_in(root, *command)
    output = result.stdout + result.stderr
    assert result.returncode == 0, f"{shlex.join(map(str, command))}:\n{output}"
    return output


def tool(root: Path, command: str) -> list[str]:
    """A tools/new-feature command line as the page writes it, on this interpreter."""
    return [sys.executable, *shlex.split(command)]


@pytest.fixture
def repository(tmp_path: Path) -> Path:
    """A copy of the repository to make features in; where the checkout has features
    of these names made by the tool (``tools/new-feature pet_profile`` just run), the
    copy is without them, so that the page's commands run as written."""
    require_npm_packages()
    copy = copy_repository(tmp_path / "repository")
    for name in FEATURES:
        if (copy / "tests" / "features" / f"test_{name}.py").exists():
            passes(
                copy, sys.executable, "tools/new-feature", "--remove", name, "--force"
            )
    return copy


def test_two_made_features_pass_every_gate_and_removing_them_restores_the_tree(
    repository: Path, tmp_path: Path
) -> None:
    imported = passes(
        repository, sys.executable, "-c", "import petsage; print(petsage.__file__)"
    )
    assert imported.strip() == str(repository / "petsage" / "__init__.py")
    before = tree_hashes(repository)

    status_dry_run = passes(repository, *tool(repository, STATUS_DRY_RUN))
    assert "== petsage/features/pet_profile/blueprint.py" in status_dry_run
    dry_run = passes(repository, *tool(repository, DRY_RUN))
    assert "== petsage/features/pet_profile/repository.py" in dry_run
    assert "== petsage/db/migrations/versions/r" in dry_run
    assert tree_hashes(repository) == before

    made = passes(repository, *tool(repository, NEW_FEATURE))
    assert "petsage/features/pet_profile/blueprint.py" in made
    assert "tests/features/test_pet_profile.py" in made
    assert "petsage/db/migrations/versions/r" in made
    passes(repository, *tool(repository, SECOND_FEATURE))
    again = run_in(repository, *tool(repository, STATUS))
    assert again.returncode == 2, again.stdout + again.stderr
    assert "the feature pet_profile exists already" in again.stderr

    assert_every_gate_passes(repository, tmp_path)

    passes(repository, *tool(repository, REMOVE))
    passes(repository, *tool(repository, REMOVE_SECOND))
    assert tree_hashes(repository) == before


def assert_every_gate_passes(repository: Path, tmp_path: Path) -> None:
    """ruff, mypy, the import contracts, the tests, the OpenAPI linters and gate, and
    the docs, on ``repository``."""
    passes(repository, sys.executable, "-m", "ruff", "check", ".")
    passes(repository, sys.executable, "-m", "ruff", "format", "--check", ".")
    passes(repository, sys.executable, "-m", "mypy")
    if "tools/new-feature" not in (repository / "setup.cfg").read_text():
        passes(repository, sys.executable, "-m", "mypy", "tools/new-feature")
    contracts = passes(repository, BIN / "lint-imports", "--no-cache", "--no-logo")
    assert "Contracts: 3 kept, 0 broken." in contracts

    own_tests = [f"tests/features/test_{name}.py" for name in FEATURES]
    pytest_run = (sys.executable, "-m", "pytest", "-p", "no:cacheprovider")
    # Their slow tests too: a resource's through gunicorn on SQLite and PostgreSQL.
    own = passes(repository, *pytest_run, "-n", "2", *own_tests)
    assert " passed" in own and "failed" not in own, own
    # The fast tier, and the slow tests that walk every route or operation.
    tier = passes(repository, *pytest_run, "-n", "2", "-m", "not slow or routes")
    assert " passed" in tier and "failed" not in tier, tier

    document = (repository / "openapi.json").read_text()
    paths = {
        path: methods for made in FEATURES.values() for path, methods in made.items()
    }
    assert all(f'"{path}"' in document for path in paths)
    lint = passes(repository, repository / "tools" / "openapi" / "lint")
    assert "Your API description is valid" in lint
    assert "No results with a severity of 'warn' or higher found!" in lint
    gate = passes(repository, "node", "tools/openapi/check-compatibility.mjs")
    for path, methods in paths.items():
        for method in methods:
            assert f"{method} {path}: added" in gate, gate

    site = tmp_path / "site"
    passes(repository, BIN / "mkdocs", "build", "--strict", "--site-dir", site)
