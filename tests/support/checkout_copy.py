"""A copy of this checkout to run tools/new-feature in, and commands run there.

The copy holds the checkout's files as git lists them (tracked, and untracked but not
ignored); its commands run with the copy's petsage first on the path and none of this
session's PETSAGE_* or pytest settings, as a contributor's shell in that tree would.
"""

import os
import shutil
import subprocess
from pathlib import Path

from tests.support.gunicorn_process import REPO_ROOT

TIMEOUT = 600


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
