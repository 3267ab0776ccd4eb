"""The npm tools of tools/openapi (linters, TypeScript client, breaking-change gate)."""

import os
import subprocess
from collections.abc import Sequence
from pathlib import Path

import pytest

from tests.gunicorn_process import REPO_ROOT

TOOLS = REPO_ROOT / "tools" / "openapi"
BIN = TOOLS / "node_modules" / ".bin"
needs_npm_packages = pytest.mark.skipif(
    not BIN.is_dir(), reason="no npm packages: run `npm ci` in tools/openapi"
)


def run_tool(
    command: Sequence[str | Path],
    env: dict[str, str] | None = None,
    timeout: float = 120,
) -> subprocess.CompletedProcess[str]:
    """Run a command in tools/openapi; its output together, whatever its exit code."""
    return subprocess.run(
        [str(part) for part in command],
        cwd=TOOLS,
        env={**os.environ, **(env or {})},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=timeout,
        check=False,
    )
