"""tools/openapi's npm packages are installed for the tests that need them, once.

A stand-in ``npm`` records each call and installs as ``npm ci`` would (node_modules
replaced, npm's record of it written), in a copy of tools/openapi's package files;
a real npm is also shown failing against a registry that refuses connections.
"""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.gunicorn_process import REPO_ROOT
from tests.support.listeners import refusing
from tests.support.openapi_tools import (
    TOOLS,
    install_npm_packages,
    packages_are_current,
)

pytestmark = pytest.mark.slow  # real processes: not in the fast tier

STAND_IN_NPM = """\
import json, os, pathlib, shutil, sys, time
with open(os.environ["NPM_CALLS"], "a") as calls:
    calls.write(" ".join(sys.argv[1:]) + "\\n")
if os.environ.get("NPM_FAILS"):
    print("npm error code ECONNREFUSED")
    sys.exit(1)
prefix = pathlib.Path(sys.argv[sys.argv.index("--prefix") + 1])
modules = prefix / "node_modules"
shutil.rmtree(modules, ignore_errors=True)
# Long enough for the other processes to be waiting for the lock meanwhile.
time.sleep(0.5)
(modules / ".bin").mkdir(parents=True)
lock = json.loads((prefix / "package-lock.json").read_text())
# Optional packages (here fsevents, for macOS only) are left out, as on Linux.
installed = {
    path: entry
    for path, entry in lock["packages"].items()
    if path and not entry.get("optional")
}
record = {"name": lock["name"], "lockfileVersion": 3, "packages": installed}
(modules / ".package-lock.json").write_text(json.dumps(record))
"""


@pytest.fixture
def tools(tmp_path: Path) -> Path:
    """A copy of tools/openapi's package files, nothing installed."""
    copy = tmp_path / "openapi"
    copy.mkdir()
    for name in ("package.json", "package-lock.json"):
        shutil.copy(TOOLS / name, copy / name)
    return copy


@pytest.fixture
def npm_env(tmp_path: Path) -> dict[str, str]:
    """An environment whose ``npm`` is the stand-in, its calls in ``NPM_CALLS``."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    npm = bin_dir / "npm"
    npm.write_text(f"#!{sys.executable}\n{STAND_IN_NPM}")
    npm.chmod(0o755)
    env = {name: value for name, value in os.environ.items() if name != "NPM_FAILS"}
    env.pop("PYTEST_XDIST_TESTRUNUID", None)
    return {**env, "PATH": str(bin_dir), "NPM_CALLS": str(tmp_path / "calls")}


def npm_calls(env: dict[str, str]) -> list[str]:
    """The stand-in npm's calls so far, one command line each."""
    calls = Path(env["NPM_CALLS"])
    return calls.read_text().splitlines() if calls.exists() else []


INSTALL = (
    "import sys; from pathlib import Path;"
    " from tests.support.openapi_tools import install_npm_packages;"
    " print(repr(install_npm_packages(Path(sys.argv[1]))))"
)


def test_processes_starting_together_install_the_packages_once(
    tools: Path, npm_env: dict[str, str]
) -> None:
    env = {**npm_env, "PYTHONPATH": str(REPO_ROOT), "PYTEST_XDIST_TESTRUNUID": "run"}
    workers = [
        subprocess.Popen(
            [sys.executable, "-c", INSTALL, str(tools)],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(3)
    ]
    answers = [worker.communicate(timeout=120) for worker in workers]
    assert answers == [("''\n", "")] * 3
    assert npm_calls(env) == [
        f"ci --prefix {tools} --ignore-scripts --no-audit --no-fund"
    ]
    assert packages_are_current(tools)


def test_installed_packages_are_not_installed_again(
    tools: Path, npm_env: dict[str, str]
) -> None:
    assert install_npm_packages(tools, npm_env) == ""
    assert install_npm_packages(tools, npm_env) == ""
    assert len(npm_calls(npm_env)) == 1


def test_packages_that_differ_from_the_lock_are_installed_again(
    tools: Path, npm_env: dict[str, str]
) -> None:
    assert install_npm_packages(tools, npm_env) == ""
    record = tools / "node_modules" / ".package-lock.json"
    installed = json.loads(record.read_text())
    installed["packages"]["node_modules/typescript"]["version"] = "5.0.0"
    record.write_text(json.dumps(installed))
    assert not packages_are_current(tools)
    assert install_npm_packages(tools, npm_env) == ""
    assert len(npm_calls(npm_env)) == 2
    assert packages_are_current(tools)


def test_without_npm_the_packages_are_missing_for_a_stated_reason(
    tools: Path, tmp_path: Path
) -> None:
    env = {**os.environ, "PATH": str(tmp_path)}
    assert install_npm_packages(tools, env) == (
        "npm is not installed, so `npm ci` cannot install them"
    )


def test_a_failed_install_is_not_tried_again_in_the_same_run(
    tools: Path, npm_env: dict[str, str]
) -> None:
    env = {**npm_env, "NPM_FAILS": "1", "PYTEST_XDIST_TESTRUNUID": "run-1"}
    reason = "`npm ci` failed (exit 1): npm error code ECONNREFUSED"
    assert install_npm_packages(tools, env) == reason
    assert install_npm_packages(tools, env) == reason
    assert len(npm_calls(env)) == 1
    # The next test session tries again.
    assert install_npm_packages(tools, {**env, "PYTEST_XDIST_TESTRUNUID": "run-2"})
    assert len(npm_calls(env)) == 2


@pytest.mark.skipif(
    shutil.which("npm") is None,
    reason="npm is not installed (Debian: apt-get install -y npm)",
)
def test_an_unreachable_registry_leaves_the_packages_missing_saying_why(
    tools: Path, tmp_path: Path
) -> None:
    with refusing() as port:
        env = {
            **os.environ,
            "npm_config_registry": f"http://127.0.0.1:{port}/",
            # Nothing from a cache of earlier installs, and no retries.
            "npm_config_cache": str(tmp_path / "npm-cache"),
            "npm_config_fetch_retries": "0",
            "npm_config_offline": "false",
        }
        reason = install_npm_packages(tools, env)
    assert reason.startswith("`npm ci` failed (exit 1): "), reason
    assert "ECONNREFUSED" in reason, reason
    assert not packages_are_current(tools)
