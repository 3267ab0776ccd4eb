"""A copy of this checkout to run tools/new-feature in, commands run there, and the
tool loaded as a module.

The copy holds the checkout's files as git lists them (tracked, and untracked but not
ignored); its commands run with the copy's petsage first on the path and none of this
session's PETSAGE_* or pytest settings, as a contributor's shell in that tree would.
"""

import importlib.machinery
import importlib.util
import os
import shutil
import subprocess
from pathlib import Path
from types import ModuleType

from tests.support.gunicorn_process import REPO_ROOT

TIMEOUT = 600
NEW_FEATURE = REPO_ROOT / "tools" / "new-feature"


def copy_checkout(destination: Path) -> Path:
    """The checkout's files (tracked, and untracked but not ignored) in
    ``destination``."""
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=REPO_ROOT,
        capture_output=True,
        check=True,
    ).stdout
    for name in filter(None, listed.split(b"\0")):
        source = REPO_ROOT / os.fsdecode(name)
        if source.is_file():  # a file deleted but not yet from the index is not
            target = destination / os.fsdecode(name)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target)
    return destination


def run_in(root: Path, *command: str | Path) -> subprocess.CompletedProcess[str]:
    """Run ``command`` in ``root`` with ``root``'s petsage first on the path and none
    of this session's PETSAGE_* or pytest settings."""
    environ = {
        name: value
        for name, value in os.environ.items()
        if not name.startswith(("PETSAGE_", "PYTEST_"))
    }
    return subprocess.run(
        [str(part) for part in command],
        cwd=root,
        env={**environ, "PYTHONPATH": str(root), "COLUMNS": "200"},
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )


def load_new_feature(name: str = "new_feature") -> ModuleType:
    """tools/new-feature as a module named ``name`` (its file name has no .py), to
    run in the test's process."""
    loader = importlib.machinery.SourceFileLoader(name, str(NEW_FEATURE))
    spec = importlib.util.spec_from_loader(name, loader)
    assert spec is not None
    module = importlib.util.module_from_spec(spec)
    loader.exec_module(module)
    return module
