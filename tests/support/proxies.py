"""HAProxy and nginx in front of real instances, each running its file of deploy/ as
it ships, the markers that skip a test where one is not installed, and the timings of
an instance restarted behind them."""

import contextlib
import csv
import io
import os
import re
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.support.gunicorn_process import REPO_ROOT, complete_lines
from tests.support.processes import answers, free_ports, wait_until

DEPLOY = REPO_ROOT / "deploy"
HAPROXY_CONFIG = DEPLOY / "haproxy.cfg"
NGINX_CONFIG = DEPLOY / "nginx.conf"
HAPROXY = shutil.which("haproxy") or shutil.which("haproxy", path="/usr/sbin")
NGINX = shutil.which("nginx") or shutil.which("nginx", path="/usr/sbin")

needs_haproxy = pytest.mark.skipif(
    HAPROXY is None,
    reason="haproxy is not installed (Debian: apt-get install -y haproxy)",
)
needs_nginx = pytest.mark.skipif(
    NGINX is None,
    reason="nginx is not installed (Debian: apt-get install -y nginx)",
)

# Long enough for HAProxy (inter 500ms, fall 2) to take a draining instance out of
# rotation before it closes its listener, short enough for a quick test.
DRAIN_DELAY = 3.0
# Requests a client waits for: an instance whose workers are rebooting holds new
# connections in its listen backlog for a second or two; that is latency, not loss.
CLIENT_TIMEOUT = 15.0


# HAProxy, running deploy/haproxy.cfg itself.


class HAProxy:
    """HAProxy in the foreground with ``deploy/haproxy.cfg``, and its servers' states.

    The shipped file is loaded unchanged (HAProxy fills in its environment variables);
    a second file adds only a stats socket, so the test can see what HAProxy thinks of
    each instance. A thread records every change of state with its time.
    """

    def __init__(self, workdir: Path, port: int, instances: list[int]) -> None:
        assert HAPROXY is not None
        self.port = port
        self.stats_path = workdir / "haproxy.sock"
        self.log_path = workdir / "haproxy.log"
        extra = workdir / "stats.cfg"
        extra.write_text(f'global\n    stats socket "{self.stats_path}" mode 600\n')
        environment = {
            **os.environ,
            "PETSAGE_HAPROXY_BIND": f"127.0.0.1:{port}",
            **{
                f"PETSAGE_INSTANCE_{number}": f"127.0.0.1:{instance}"
                for number, instance in enumerate(instances, start=1)
            },
        }
        command = [HAPROXY, "-db", "-f", str(HAPROXY_CONFIG), "-f", str(extra)]
        with self.log_path.open("wb") as log:
            self.process = subprocess.Popen(
                command, env=environment, stdout=log, stderr=subprocess.STDOUT
            )
        self.states: dict[str, str] = {}
        self.transitions: list[tuple[float, str, str]] = []
        self._stop = threading.Event()
        self._watcher = threading.Thread(target=self._watch, daemon=True)

    def stat(self) -> dict[str, str]:
        """Each server's status as HAProxy reports it: UP, DOWN, 'UP 1/2', ..."""
        with socket.socket(socket.AF_UNIX) as client:
            client.settimeout(2)
            client.connect(str(self.stats_path))
            client.sendall(b"show stat\n")
            chunks = []
            while chunk := client.recv(65536):
                chunks.append(chunk)
        text = b"".join(chunks).decode().lstrip("# ")
        return {
            row["svname"]: row["status"]
            for row in csv.DictReader(io.StringIO(text))
            if row["pxname"] == "petsage"
            and row["svname"] not in ("FRONTEND", "BACKEND")
        }

    def _watch(self) -> None:
        while not self._stop.wait(0.05):
            try:
                states = self.stat()
            except OSError:
                continue
            for name, status in states.items():
                if self.states.get(name) != status:
                    self.transitions.append((time.monotonic(), name, status))
            self.states = states

    def in_rotation(self, name: str) -> bool:
        """HAProxy sends ``name`` traffic and has no failed check pending."""
        return self.states.get(name) == "UP"

    def out_of_rotation(self, name: str) -> bool:
        """HAProxy sends ``name`` no new traffic."""
        return self.states.get(name, "").startswith("DOWN")

    def transitions_since(self, began: float) -> list[str]:
        """Each change of a server's state since ``began``, as +seconds, name, state."""
        return [
            f"+{at - began:.1f} s {name} {status}"
            for at, name, status in self.transitions
            if at >= began
        ]

    def log(self) -> str:
        """What HAProxy logged: one line per request (option httplog)."""
        return self.log_path.read_text(errors="replace")

    def failed_requests(self) -> list[str]:
        """Request log lines whose answer was not 200, for a failing test's message."""
        return [
            line
            for line in complete_lines(self.log())
            if " petsage petsage/" in line and not re.search(r"/\d+ 200 ", line)
        ]

    def start(self) -> None:
        """Wait until HAProxy answers on its stats socket, then watch its servers."""

        def up() -> bool:
            if self.process.poll() is not None:
                raise AssertionError(f"haproxy exited:\n{self.log()}")
            try:
                self.stat()
            except OSError:
                return False
            return True

        wait_until(up, 10, "HAProxy started")
        self._watcher.start()

    def stop(self) -> None:
        """Stop watching and stop HAProxy."""
        self._stop.set()
        if self._watcher.is_alive():
            self._watcher.join(timeout=5)
        if self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=10)


@contextlib.contextmanager
def haproxy(workdir: Path, port: int, instances: list[int]) -> Iterator[HAProxy]:
    """HAProxy balancing ``instances`` on ``port``, stopped after."""
    proxy = HAProxy(workdir, port, instances)
    try:
        proxy.start()
        yield proxy
    finally:
        proxy.stop()


# nginx, running deploy/nginx.conf itself.


def render_nginx_config(listen: str, upstream: str) -> str:
    """deploy/nginx.conf with its two placeholders filled in, as envsubst would."""
    text = NGINX_CONFIG.read_text()
    for name, value in (
        ("PETSAGE_NGINX_LISTEN", listen),
        ("PETSAGE_UPSTREAM", upstream),
    ):
        text = text.replace("${" + name + "}", value)
    assert "${" not in text, "deploy/nginx.conf has a placeholder the test misses"
    return text


@contextlib.contextmanager
def nginx_running(config_for: Callable[[int], str]) -> Iterator[int]:
    """nginx running the configuration ``config_for(port)`` gives, ``port`` being the
    free port it is to listen on; that port, once nginx answers /livez there."""
    assert NGINX is not None
    [port] = free_ports(1)
    # nginx's workers run as an unprivileged user when started as root: its prefix
    # (temporary files) must be theirs to enter.
    prefix = Path(tempfile.mkdtemp(prefix="petsage-nginx-"))
    prefix.chmod(0o755)
    config = prefix / "nginx.conf"
    config.write_text(config_for(port))
    log_path = prefix / "nginx.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [NGINX, "-p", f"{prefix}/", "-e", "stderr", "-c", str(config)],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:

        def serving() -> bool:
            if process.poll() is not None:
                raise AssertionError(f"nginx exited:\n{log_path.read_text()}")
            return answers(port, "/livez") == 200

        # A bound for a loaded machine, not a measurement.
        wait_until(serving, 30, "nginx serving /livez")
        yield port
    finally:
        process.terminate()
        process.wait(timeout=10)
        shutil.rmtree(prefix, ignore_errors=True)


@contextlib.contextmanager
def nginx(upstream_port: int) -> Iterator[int]:
    """nginx running deploy/nginx.conf in front of 127.0.0.1:``upstream_port``."""
    with nginx_running(
        lambda port: render_nginx_config(
            f"127.0.0.1:{port}", f"127.0.0.1:{upstream_port}"
        )
    ) as port:
        yield port
