"""Prometheus's own tools, from Debian's packages, as the monitoring tests run them.

``.ci/run`` installs ``prometheus`` (promtool, prometheus) and
``prometheus-blackbox-exporter``; where one is absent, the tests that need it are
skipped and say which package to install.
"""

import http.client
import json
import shutil
import subprocess
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from tests.support.gunicorn_process import REPO_ROOT

RULES = REPO_ROOT / "deploy" / "prometheus" / "petsage-rules.yml"
RULE_TESTS = REPO_ROOT / "tests" / "prometheus" / "petsage-rules.test.yml"
BLACKBOX_CONFIG = REPO_ROOT / "deploy" / "prometheus" / "blackbox.yml"
RUNBOOK = REPO_ROOT / "docs" / "runbook.md"
START_TIMEOUT = 15.0
# The Debian package that ships each tool.
PACKAGES = {
    "promtool": "prometheus",
    "prometheus": "prometheus",
    "prometheus-blackbox-exporter": "prometheus-blackbox-exporter",
}


def tool(name: str) -> str:
    """The path of ``name``; the test is skipped, saying why, when it is absent."""
    path = shutil.which(name) or shutil.which(name, path="/usr/sbin:/usr/bin")
    if path is None:
        pytest.skip(
            f"{name} is not installed: Debian's {PACKAGES[name]} package has it"
            " (.ci/run installs it)"
        )
    return path


def run_tool(name: str, *args: str, stdin: bytes | None = None) -> tuple[int, str]:
    """Run ``name`` with ``args`` in the repository root: exit status and output."""
    done = subprocess.run(
        [tool(name), *args],
        cwd=REPO_ROOT,
        input=stdin,
        capture_output=True,
        timeout=60,
    )
    return done.returncode, (done.stdout + done.stderr).decode(errors="replace")


def get_json(port: int, path: str) -> Any:
    """GET ``path`` from 127.0.0.1:``port`` and parse the JSON answer."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        connection.request("GET", path)
        response = connection.getresponse()
        return json.loads(response.read())
    finally:
        connection.close()


def get_text(port: int, path: str) -> tuple[int, str]:
    """GET ``path`` from 127.0.0.1:``port``: the status and the body as text."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        connection.request("GET", path)
        response = connection.getresponse()
        return response.status, response.read().decode()
    finally:
        connection.close()


@contextmanager
def serving_process(
    command: Sequence[str], port: int, ready_path: str, log: Path
) -> Iterator[subprocess.Popen[bytes]]:
    """Run ``command`` until the block ends, once it answers ``ready_path`` with 200
    on 127.0.0.1:``port``; its output goes to ``log``."""
    with log.open("wb") as output:
        process = subprocess.Popen(command, stdout=output, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            try:
                if get_text(port, ready_path)[0] == 200:
                    break
            except OSError:
                pass
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(
                    f"{command[0]} did not start:\n{log.read_text(errors='replace')}"
                )
            time.sleep(0.05)
        yield process
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
