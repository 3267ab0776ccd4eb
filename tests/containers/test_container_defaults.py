"""The image's defaults against a container runtime's: Docker's stop timeout, CPU quota.

gunicorn runs as deploy/Dockerfile runs it: the image's environment and command, in
the project root (the image's WORKDIR holds the same files), bound to 127.0.0.1.
"""

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import FaultRecorder
from tests.support.dockerfile import image_command, image_environment
from tests.support.gunicorn_process import (
    LISTENING,
    REPO_ROOT,
    START_TIMEOUT,
    GunicornServer,
)
from tests.support.instances import readiness_once_draining, wait_for_status
from tests.support.load import ClientLoad
from tests.support.processes import children

pytestmark = pytest.mark.slow  # real processes: not in the fast tier

# `docker stop` and `docker compose down` send SIGKILL this long after SIGTERM.
DOCKER_STOP_TIMEOUT = 10.0
CGROUP_ROOT = Path("/sys/fs/cgroup")


def environment_without_settings() -> dict[str, str]:
    """This process's environment less anything that would configure the server."""
    return {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("PETSAGE_", "GUNICORN_", "PROMETHEUS_"))
        and key != "WEB_CONCURRENCY"
    }


def launch(
    command: list[str],
    env: dict[str, str],
    preexec_fn: Callable[[], None] | None = None,
) -> GunicornServer:
    """Start ``command`` in the project root; wait until it listens and answers."""
    log_path = Path(tempfile.mkstemp(prefix="petsage-gunicorn-", suffix=".log")[1])
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            command,
            cwd=REPO_ROOT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            preexec_fn=preexec_fn,
        )
    server = GunicornServer(process, 0, log_path)
    deadline = time.monotonic() + START_TIMEOUT
    while not (match := LISTENING.search(server.log())):
        if process.poll() is not None or time.monotonic() > deadline:
            server.stop()
            raise RuntimeError(f"gunicorn did not start:\n{server.log()}")
        time.sleep(0.05)
    server.port = int(match.group(1))
    server.request("GET", "/", timeout=START_TIMEOUT)
    return server


@pytest.fixture
def image_server() -> Iterator[GunicornServer]:
    """gunicorn started with exactly the image's ENV and CMD, bound to 127.0.0.1."""
    env = {**environment_without_settings(), **image_environment()}
    env["PETSAGE_BIND"] = "127.0.0.1:0"
    program, *arguments = image_command()
    found = shutil.which(program, path=f"{Path(sys.executable).parent}:{env['PATH']}")
    assert found, f"the image's command {program!r} is not installed"
    server = launch([found, *arguments], env)
    yield server
    server.stop()
    server.log_path.unlink(missing_ok=True)


@pytest.mark.fault
def test_the_image_stops_gracefully_within_dockers_stop_timeout(
    image_server: GunicornServer, fault_record: FaultRecorder
) -> None:
    delay = float(image_environment().get("PETSAGE_SHUTDOWN_DELAY", "15"))
    wait_for_status(image_server, "/readyz", 200)
    with ClientLoad(image_server.port, threads=4, keep_alive_threads=1) as load:
        time.sleep(0.5)
        terminated = time.monotonic()
        image_server.process.send_signal(signal.SIGTERM)
        readiness = readiness_once_draining(image_server)
        to_503 = time.monotonic() - terminated
        load.phase("draining")
        # A load balancer has taken the instance out by the end of the drain.
        sending = min(delay - 0.5, DOCKER_STOP_TIMEOUT - 1)
        time.sleep(max(0.0, terminated + sending - time.monotonic()))
    try:
        exit_code: int | None = image_server.process.wait(
            max(0.1, terminated + DOCKER_STOP_TIMEOUT - time.monotonic())
        )
    except subprocess.TimeoutExpired:
        exit_code = None  # Docker would send SIGKILL now.
    stopped_after = time.monotonic() - terminated
    print(
        f"\nSIGTERM: readiness {readiness} after {to_503 * 1000:.0f} ms; "
        f"{load.sent} requests, {load.phases['draining'].sent} of them once readiness"
        f" failed; exit {exit_code} after {stopped_after:.1f} s"
    )
    lost = [failure for failure in load.failed if ": HTTP " not in failure]
    fault_record(
        fault="docker stop",
        injected="SIGTERM to gunicorn started with deploy/Dockerfile's ENV and CMD",
        load="4 client threads (1 keep-alive), smoke test, until the drain ends",
        sent=load.sent,
        failed=len(load.failed) - len(lost),
        lost=len(lost),
        recovery=(
            f"exit {exit_code} {stopped_after:.1f} s after SIGTERM"
            if exit_code is not None
            else f"still running {DOCKER_STOP_TIMEOUT:g} s after SIGTERM: SIGKILL"
        ),
    )
    assert delay > 0, "the image must drain before it stops"
    assert readiness == 503
    assert load.phases["draining"].sent > 0, "no request was sent while draining"
    assert load.failed == []
    # Exited by itself (0) while Docker would still wait; None: Docker kills it.
    assert exit_code == 0, f"exit {exit_code} after {stopped_after:.1f} s"
    assert "SIGKILL" not in image_server.log()
    assert "Shutting down: Master" in image_server.log()


@dataclass(frozen=True)
class Cgroup:
    """A cgroup this test created, and the log line its quota should produce."""

    path: Path
    source: str

    def enter(self) -> None:
        """Move the calling process into this cgroup (run in the child before exec)."""
        (self.path / "cgroup.procs").write_text(str(os.getpid()))


def create_cgroup(quota: str, period: str) -> Cgroup:
    """A new cgroup limited to ``quota`` / ``period``; skips where not allowed."""
    name = f"petsage-test-{uuid.uuid4().hex[:12]}"
    v1 = CGROUP_ROOT / "cpu"
    if (v1 / "cpu.cfs_quota_us").exists():
        path = v1 / name
        files = {"cpu.cfs_period_us": period, "cpu.cfs_quota_us": quota}
        source = f"cgroup v1 cpu.cfs_quota_us {quota} / cpu.cfs_period_us {period}"
    elif "cpu" in read_words(CGROUP_ROOT / "cgroup.subtree_control"):
        path = CGROUP_ROOT / name
        files = {"cpu.max": f"{quota} {period}"}
        source = f"cgroup v2 cpu.max {quota} {period}"
    else:
        pytest.skip("no cgroup v1 cpu controller or v2 cpu.max at /sys/fs/cgroup")
    try:
        path.mkdir()
    except OSError as error:
        pytest.skip(f"cannot create a cgroup at {path}: {error}")
    try:
        for file, value in files.items():
            (path / file).write_text(value)
    except OSError as error:
        path.rmdir()
        pytest.skip(f"cannot set a CPU quota on {path}: {error}")
    return Cgroup(path, f"{source} in {path}")


def read_words(path: Path) -> list[str]:
    """The blank-separated words of a file; none when it cannot be read."""
    try:
        return path.read_text().split()
    except OSError:
        return []


def remove_cgroup(cgroup: Cgroup) -> None:
    """Remove the cgroup once the processes in it are gone."""
    deadline = time.monotonic() + 10
    while True:
        try:
            cgroup.path.rmdir()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


@pytest.fixture
def half_cpu() -> Iterator[Cgroup]:
    """A cgroup with a CPU quota of half a CPU, removed after the test."""
    cgroup = create_cgroup("50000", "100000")
    yield cgroup
    remove_cgroup(cgroup)


def test_the_default_worker_count_follows_a_half_cpu_quota(half_cpu: Cgroup) -> None:
    env = {
        **environment_without_settings(),
        "PETSAGE_BIND": "127.0.0.1:0",
        "PETSAGE_SHUTDOWN_DELAY": "0",
    }
    server = launch([sys.executable, "-m", "gunicorn"], env, preexec_fn=half_cpu.enter)
    try:
        deadline = time.monotonic() + START_TIMEOUT
        while server.log().count("Booting worker") < 3 and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(1.0)  # time enough for a fourth and fifth worker to appear
        workers = children(server.process.pid)
        log = server.log()
    finally:
        server.stop()
        server.log_path.unlink(missing_ok=True)
    expected = f"3 workers: 2 x 1 CPU ({half_cpu.source}) + 1"
    print(f"\n{len(workers)} workers; log: {expected in log}")
    assert len(workers) == 3, log
    assert log.count("Booting worker") == 3
    assert log.count(" workers: ") == 1
    assert expected in log, log
