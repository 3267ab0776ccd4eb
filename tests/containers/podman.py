"""Podman for the container tests: can it run here, the images, running containers.

Where Podman cannot run (not installed, not root, the runtime refuses) the tests skip
and say why; with PETSAGE_REQUIRE_CONTAINERS=1 (set by .ci/run) they fail instead.
"""

import json
import os
import shutil
import subprocess
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.support.gunicorn_process import REPO_ROOT, HttpResult, http_request

HELPERS = Path(__file__).resolve().parent
REQUIRE_VARIABLE = "PETSAGE_REQUIRE_CONTAINERS"
STANDIN_BASE = "localhost/petsage-base:bookworm"
# Stable names, so that reruns reuse Podman's layer cache; containers run by image ID,
# so another run re-tagging them meanwhile changes nothing under this one.
IMAGE_TAG = "localhost/petsage-backend:test"
NGINX_STANDIN_TAG = "localhost/petsage-nginx-standin:test"
POSTGRES_STANDIN_TAG = "localhost/petsage-postgres-standin:test"
# Podman asks for more open files and processes than the runtime may set on these
# hosts (docs/containers.md); nginx's worker_rlimit_nofile (16384) fits these.
LIMITS = ("--ulimit", "nofile=16384:16384", "--ulimit", "nproc=4096:4096")
BUILD_TIMEOUT = 300.0
COMMAND_TIMEOUT = 90.0


def cannot_run(reason: str) -> None:
    """Skip with ``reason``, or fail where the container tests are required."""
    if os.environ.get(REQUIRE_VARIABLE) == "1":
        pytest.fail(f"{reason} ({REQUIRE_VARIABLE}=1: the container tests must run)")
    pytest.skip(reason)


def podman(
    *arguments: str, timeout: float = COMMAND_TIMEOUT, check: bool = True
) -> subprocess.CompletedProcess[str]:
    """Run ``podman`` with ``arguments``, keeping its output; raise on failure if
    ``check``."""
    result = subprocess.run(
        ["podman", *arguments],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=REPO_ROOT,
    )
    if check and result.returncode != 0:
        raise AssertionError(
            f"podman {' '.join(arguments)} exited {result.returncode}:\n"
            f"{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
        )
    return result


def last_lines(text: str, count: int = 5) -> str:
    """The last ``count`` lines of ``text``, for a skip reason."""
    return " | ".join(text.strip().splitlines()[-count:])


def ensure_podman_runs() -> float:
    """Build the stand-in base if needed and run a container from it; the seconds the
    base took (0 when reused). Skips (or fails, see ``cannot_run``) where it cannot."""
    for tool in ("podman", "mmdebstrap"):
        if shutil.which(tool) is None:
            cannot_run(f"{tool} is not installed (apt-get install podman mmdebstrap)")
    if os.geteuid() != 0:
        cannot_run("not root: the container tests run rootful Podman")
    started = time.monotonic()
    built = subprocess.run(
        [str(HELPERS / "build-standin-base"), STANDIN_BASE],
        capture_output=True,
        text=True,
        timeout=BUILD_TIMEOUT,
    )
    if built.returncode != 0:
        cannot_run(f"cannot build the stand-in base: {last_lines(built.stderr)}")
    seconds = time.monotonic() - started if "built" in built.stdout else 0.0
    ran = podman(
        "run", "--rm", "--network", "host", *LIMITS, STANDIN_BASE, "true", check=False
    )
    if ran.returncode != 0:
        cannot_run(
            "Podman cannot run a container here (run tests/containers/prepare-host as"
            f" root): {last_lines(ran.stderr)}"
        )
    return seconds


def ensure_bridge_networks_run() -> None:
    """Run a container on a network of its own, as Compose does. Podman's network
    backend (netavark, which runs iptables; aardvark-dns for service names) is not
    needed by ``--network host``, so a host without it fails only here: skips (or
    fails, see ``cannot_run``) saying what is missing."""
    missing = [tool for tool in ("iptables",) if shutil.which(tool) is None]
    missing += [
        tool
        for tool in ("netavark", "aardvark-dns")
        if not Path(f"/usr/lib/podman/{tool}").exists()
    ]
    if missing:
        cannot_run(
            "Podman's network backend cannot run: missing "
            f"{', '.join(missing)} (apt-get install netavark aardvark-dns iptables)"
        )
    network = f"petsage-probe-{uuid.uuid4().hex[:12]}"
    podman("network", "create", network)
    try:
        ran = podman(
            "run",
            "--rm",
            "--network",
            network,
            *LIMITS,
            STANDIN_BASE,
            "true",
            check=False,
        )
    finally:
        podman("network", "rm", "--force", network, check=False)
    if ran.returncode != 0:
        cannot_run(
            "Podman cannot run a container on a bridge network (netavark, aardvark-dns"
            f" and iptables): {last_lines(ran.stderr)}"
        )


def build(tag: str, containerfile: Path, context: Path, *options: str) -> str:
    """Build ``containerfile`` as ``tag`` in Docker's format; the image's ID."""
    podman(
        "build",
        "--format",
        "docker",  # the OCI format drops HEALTHCHECK
        "--network",
        "host",  # pip and apt reach their registries through the host
        *LIMITS,
        *options,
        "-f",
        str(containerfile),
        "-t",
        tag,
        str(context),
        timeout=BUILD_TIMEOUT,
    )
    image_id = inspect_image(tag)["Id"]
    assert isinstance(image_id, str)
    return image_id


def inspect_image(image: str) -> dict[str, object]:
    """`podman image inspect` of one image."""
    [found] = json.loads(podman("image", "inspect", image).stdout)
    assert isinstance(found, dict)
    return found


@dataclass
class Container:
    """A container this test run started, on the host's network."""

    name: str
    # Port name (the manifest's: http, management) to its port on 127.0.0.1.
    ports: dict[str, int]
    started: float = field(default_factory=time.monotonic)

    @classmethod
    def run(
        cls,
        image: str,
        ports: dict[str, int],
        environment: dict[str, str],
        options: list[str],
    ) -> "Container":
        """`podman run -d` ``image`` with ``environment`` and ``options``."""
        name = f"petsage-test-{uuid.uuid4().hex[:12]}"
        variables = [f"--env={name}={value}" for name, value in environment.items()]
        container = cls(name, ports)
        podman(
            "run",
            "--detach",
            "--name",
            name,
            "--network",
            "host",
            *LIMITS,
            *variables,
            *options,
            image,
        )
        return container

    def request(
        self, port: str, path: str, headers: dict[str, str] | None = None
    ) -> HttpResult:
        """GET ``path`` from the container's port named ``port``."""
        return http_request(self.ports[port], "GET", path, headers=headers)

    def wait_for(self, port: str, path: str, status: int, timeout: float) -> float:
        """Ask ``path`` until it answers ``status``; the seconds since ``started``."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                if self.request(port, path).status == status:
                    return time.monotonic() - self.started
            except OSError:
                pass  # not listening yet
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"{path} did not answer {status} within {timeout} s:\n{self.logs()}"
                )
            time.sleep(0.02)

    def logs(self) -> str:
        """What the container wrote so far."""
        result = podman("logs", self.name, check=False)
        return result.stdout + result.stderr

    def execute(self, *command: str) -> subprocess.CompletedProcess[str]:
        """`podman exec` ``command`` in the container."""
        return podman("exec", self.name, *command, check=False)

    def inspect(self) -> dict[str, object]:
        """`podman container inspect` of this container."""
        [found] = json.loads(podman("container", "inspect", self.name).stdout)
        assert isinstance(found, dict)
        return found

    def state(self, key: str) -> object:
        """One field of the container's state, e.g. ExitCode or Pid."""
        state = self.inspect()["State"]
        assert isinstance(state, dict)
        return state[key]

    def host_pids(self) -> list[int]:
        """The host's pids of the container's processes."""
        output = podman("top", self.name, "hpid").stdout.split()[1:]
        return [int(pid) for pid in output]

    def remove(self) -> None:
        """Remove the container, running or not."""
        podman("rm", "--force", "--time", "0", self.name, check=False)
