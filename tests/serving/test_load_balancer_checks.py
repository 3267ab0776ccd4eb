"""Real load balancers' own health checks against the management listener.

A real HAProxy checks a real instance's management listener (PETSAGE_MANAGEMENT_BIND)
the ways operators configure it: ``option httpchk GET /readyz`` as it is (HAProxy
sends ``GET /readyz HTTP/1.0`` without a Host field), ``http-check send`` with
HTTP/1.1 and a Host, and through an nginx that forwards to the listener. Each time the
server must come UP, and go DOWN within ``fall`` failed checks once ``petsage drain``
runs; UP again after ``petsage drain --cancel``. HAProxy's view is read from its stats
socket (``show stat``): the server's status, its last check's result and code, and its
count of failed checks, so no assertion depends on how long anything took.
"""

import contextlib
import csv
import io
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.gunicorn_process import GunicornFactory
from tests.support.management import Instance, get
from tests.support.processes import wait_until
from tests.support.proxies import HAPROXY, needs_haproxy, needs_nginx, nginx_running

pytestmark = [pytest.mark.slow, needs_haproxy]  # real processes: not in the fast tier

PETSAGE = Path(sys.executable).with_name("petsage")
BACKEND = "management"
SERVER = "petsage"
# Checks close together, so that the test is quick; judged by count, not by time.
FALL = 2
RISE = 2
# A bound on every wait: far longer than any of it takes on a busy machine.
BOUND = 60.0

# How each case makes HAProxy check: the lines of its backend. The first as operators
# write it, which HAProxy sends as "GET /readyz HTTP/1.0" with no Host field.
DEFAULT_CHECK = ["option httpchk GET /readyz"]
HTTP_11_CHECK = [
    "option httpchk",
    "http-check send meth GET uri /readyz ver HTTP/1.1 hdr Host petsage-management",
]


class CheckingHAProxy:
    """HAProxy with one backend whose one server it checks, and its stats socket."""

    def __init__(self, workdir: Path, check: list[str], server: str) -> None:
        assert HAPROXY is not None
        self.stats_path = workdir / "haproxy.sock"
        self.log_path = workdir / "haproxy.log"
        config = workdir / "haproxy.cfg"
        backend = "\n".join(f"    {line}" for line in check)
        config.write_text(
            f"""global
    stats socket "{self.stats_path}" mode 600

defaults
    mode http
    timeout connect 2s
    timeout client 10s
    timeout server 10s
    # Generous: a check that times out on a busy machine would count as failed.
    timeout check 5s

backend {BACKEND}
{backend}
    http-check expect status 200
    default-server inter 200ms fall {FALL} rise {RISE}
    server {SERVER} {server} check
"""
        )
        with self.log_path.open("wb") as log:
            self.process = subprocess.Popen(
                [HAPROXY, "-db", "-f", str(config)],
                stdout=log,
                stderr=subprocess.STDOUT,
            )

    def row(self) -> dict[str, str]:
        """The server's row of ``show stat``: status, check_status, check_code,
        chkfail (checks failed while it was up), chkdown (UP to DOWN changes)."""
        with socket.socket(socket.AF_UNIX) as client:
            client.settimeout(5)
            client.connect(str(self.stats_path))
            client.sendall(b"show stat\n")
            chunks = []
            while chunk := client.recv(65536):
                chunks.append(chunk)
        text = b"".join(chunks).decode().lstrip("# ")
        for row in csv.DictReader(io.StringIO(text)):
            if row["pxname"] == BACKEND and row["svname"] == SERVER:
                return row
        raise AssertionError(f"no server {SERVER} in HAProxy's stats:\n{text}")

    def describe(self) -> str:
        """HAProxy's view of the server, for a failing test's message."""
        try:
            row = self.row()
        except OSError as error:
            return f"no stats: {error}"
        fields = ("status", "check_status", "check_code", "chkfail", "chkdown")
        return ", ".join(f"{name}={row[name]}" for name in fields)

    def wait_for(self, status: str, check_status: str, code: str) -> dict[str, str]:
        """Wait until the server's status and its last check's result are these."""
        found: dict[str, str] = {}

        def reached() -> bool:
            if self.process.poll() is not None:
                raise AssertionError(f"haproxy exited:\n{self.log_path.read_text()}")
            try:
                found.update(self.row())
            except OSError:
                return False  # not listening on its stats socket yet
            return (found["status"], found["check_status"], found["check_code"]) == (
                status,
                check_status,
                code,
            )

        try:
            wait_until(reached, BOUND, f"{status}, last check {check_status} {code}")
        except AssertionError as error:
            raise AssertionError(f"{error}; HAProxy sees {self.describe()}") from None
        return found

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=10)


@contextlib.contextmanager
def haproxy_checking(
    workdir: Path, check: list[str], server: str
) -> Iterator[CheckingHAProxy]:
    """HAProxy checking ``server`` (HOST:PORT) with ``check``'s lines; stopped after."""
    proxy = CheckingHAProxy(workdir, check, server)
    try:
        yield proxy
    finally:
        proxy.stop()


@contextlib.contextmanager
def nginx_forwarding(upstream_port: int) -> Iterator[int]:
    """nginx forwarding everything to 127.0.0.1:``upstream_port`` as deploy/nginx.conf
    forwards (HTTP/1.1, the client's Host, X-Forwarded-For); the port it listens on.

    A request without a Host field (HTTP/1.0) leaves ``$host`` empty, and nginx
    sends no Host field on: the listener gets what the client sent.
    """

    def config_for(port: int) -> str:
        return f"""daemon off;
pid nginx.pid;
events {{}}
http {{
    access_log off;
    server {{
        listen 127.0.0.1:{port};
        location / {{
            proxy_pass http://127.0.0.1:{upstream_port};
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host $host;
            proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
        }}
    }}
}}
"""

    with nginx_running(config_for) as port:
        yield port


def petsage(*args: str, state: Path) -> None:
    """Run the ``petsage`` command against the instances in ``state``."""
    result = subprocess.run(
        [str(PETSAGE), *args],
        env={**os.environ, "PETSAGE_STATE_DIR": str(state)},
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def drained_and_back(proxy: CheckingHAProxy, instance: Instance, state: Path) -> None:
    """The server UP, DOWN within FALL failed checks of ``petsage drain``, and UP
    again after ``petsage drain --cancel``."""
    up = proxy.wait_for("UP", "L7OK", "200")
    target = str(instance.port)
    petsage("drain", "--instance", target, state=state)
    down = proxy.wait_for("DOWN", "L7STS", "503")
    # chkfail counts the checks that failed while the server was up: from the drain
    # to DOWN, at most FALL (fewer only if a check had failed just before).
    failed = int(down["chkfail"]) - int(up["chkfail"])
    assert 1 <= failed <= FALL, proxy.describe()
    assert int(down["chkdown"]) == int(up["chkdown"]) + 1, proxy.describe()
    petsage("drain", "--cancel", "--instance", target, state=state)
    proxy.wait_for("UP", "L7OK", "200")


@pytest.fixture
def state(tmp_path: Path) -> Path:
    """The instances' state directory, for ``petsage drain``."""
    directory = tmp_path / "state"
    directory.mkdir()
    return directory


@pytest.mark.parametrize(
    "check",
    [DEFAULT_CHECK, HTTP_11_CHECK],
    ids=["http10-without-host", "http11-with-host"],
)
def test_haproxy_checks_the_management_listener(
    start_gunicorn: GunicornFactory, tmp_path: Path, state: Path, check: list[str]
) -> None:
    instance = Instance(start_gunicorn, {"PETSAGE_STATE_DIR": str(state)})
    server = f"127.0.0.1:{instance.management_port}"
    with haproxy_checking(tmp_path, check, server) as proxy:
        drained_and_back(proxy, instance, state)


@needs_nginx
@pytest.mark.parametrize(
    "check",
    [DEFAULT_CHECK, HTTP_11_CHECK],
    ids=["http10-without-host", "http11-with-host"],
)
def test_haproxy_checks_the_management_listener_through_nginx(
    start_gunicorn: GunicornFactory, tmp_path: Path, state: Path, check: list[str]
) -> None:
    # A forwarding proxy in front of the listener, against the docs' advice: its
    # checks still pass, and what it forwards grants nothing.
    instance = Instance(
        start_gunicorn,
        {"PETSAGE_STATE_DIR": str(state)},
        TRUSTED_PROXIES="127.0.0.1",
        TRUSTED_NETWORKS="10.0.0.0/8",
        HEALTH_TOKEN="s3cret",
    )
    with nginx_forwarding(instance.management_port) as port:
        with haproxy_checking(tmp_path, check, f"127.0.0.1:{port}") as proxy:
            drained_and_back(proxy, instance, state)
        claimed = {"X-Forwarded-For": "10.1.2.3"}
        assert get(port, "/metrics", claimed).status == 401
        assert get(port, "/metrics", {"Authorization": "Bearer s3cret"}).status == 200
