"""The npm tools of tools/openapi (linters, TypeScript client, breaking-change gate).

The tests that run them install the locked packages first (``npm ci``, as .ci/run
does) where npm is present and ``node_modules`` is missing or differs from
``package-lock.json``: once per test session, under a file lock, so that several
pytest processes starting at once (pytest-xdist's workers) install them once and none
runs a tool meanwhile. Without npm, or when ``npm ci`` fails (no registry), they skip.
"""

import fcntl
import functools
import json
import os
import re
import shutil
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path

import pytest

from tests.support.gunicorn_process import REPO_ROOT

TOOLS = REPO_ROOT / "tools" / "openapi"
BIN = TOOLS / "node_modules" / ".bin"
# Held while one process checks and installs the packages; it records a failed
# install for the other processes of the same pytest-xdist run. Git-ignored.
INSTALL_LOCK = ".npm-ci.lock"
NPM_CI_OPTIONS = ("--ignore-scripts", "--no-audit", "--no-fund")
NPM_CI_TIMEOUT = 900


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


def locked_versions(lockfile: Path) -> dict[str, tuple[str, bool]]:
    """The packages an npm lockfile names: path, version and whether it is optional."""
    packages = json.loads(lockfile.read_text()).get("packages", {})
    return {
        path: (entry.get("version", ""), bool(entry.get("optional")))
        for path, entry in packages.items()
        if path.startswith("node_modules/")
    }


def packages_are_current(tools: Path) -> bool:
    """Whether ``tools/node_modules`` holds the packages ``package-lock.json`` locks.

    npm records what it installed in ``node_modules/.package-lock.json``; an optional
    package for another platform may be missing from it, nothing else may differ.
    """
    installed = tools / "node_modules" / ".package-lock.json"
    if not (tools / "node_modules" / ".bin").is_dir() or not installed.is_file():
        return False
    locked = locked_versions(tools / "package-lock.json")
    present = locked_versions(installed)
    return all(
        present[path][0] == version if path in present else optional
        for path, (version, optional) in locked.items()
    ) and set(present) <= set(locked)


def npm_ci(npm: str, tools: Path, env: Mapping[str, str]) -> str:
    """Run ``npm ci`` in ``tools``; an empty string if it installed the locked
    packages, else what went wrong, with the last lines npm said."""
    command = [npm, "ci", "--prefix", str(tools), *NPM_CI_OPTIONS]
    try:
        result = subprocess.run(
            command,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            timeout=NPM_CI_TIMEOUT,
            check=False,
        )
    except subprocess.TimeoutExpired:
        return f"`npm ci` had not ended after {NPM_CI_TIMEOUT} s"
    if result.returncode != 0:
        lines = result.stdout.strip().splitlines()
        # npm's error starts with its code and the failed request (no registry, say).
        errors = [line for line in lines if re.match(r"npm error \S", line)]
        said = " | ".join(errors[:4] or lines[-3:])
        return f"`npm ci` failed (exit {result.returncode}): {said}"
    if not packages_are_current(tools):
        return "`npm ci` left packages that differ from package-lock.json"
    return ""


def install_npm_packages(
    tools: Path = TOOLS, env: Mapping[str, str] | None = None
) -> str:
    """Install the packages ``tools/package-lock.json`` locks unless they are there,
    once for all the processes of a pytest-xdist run; an empty string when they are
    there, else why they are not."""
    env = dict(os.environ if env is None else env)
    run = env.get("PYTEST_XDIST_TESTRUNUID", "")
    with open(tools / INSTALL_LOCK, "a+") as lock:
        # Released when the file is closed, also by a process that dies.
        fcntl.flock(lock, fcntl.LOCK_EX)
        if packages_are_current(tools):
            return ""
        npm = shutil.which("npm", path=env.get("PATH"))
        if npm is None:
            return "npm is not installed, so `npm ci` cannot install them"
        lock.seek(0)
        failed_run, _, failure = lock.read().partition("\n")
        if run and failed_run == run:
            return failure
        failure = npm_ci(npm, tools, env)
        lock.seek(0)
        lock.truncate()
        lock.write(f"{run}\n{failure}" if failure else "")
        return failure


@functools.cache
def npm_packages_missing() -> str:
    """Why tools/openapi's npm packages cannot be had, after installing them if
    needed; an empty string when they are there. Asked once per process."""
    return install_npm_packages()


def require_npm_packages() -> None:
    """Install tools/openapi's npm packages if needed, or skip the test, saying why."""
    missing = npm_packages_missing()
    if missing:
        pytest.skip(f"no npm packages in tools/openapi: {missing}")
