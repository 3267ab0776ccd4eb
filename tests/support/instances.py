"""A PetSage instance as an operator reaches it from outside: the ``petsage``
command, /readyz on a new connection (once, or polled as a kubelet polls it), the
instance's name and state directory, the health token, and readiness once the master
drains."""

import http.client
import os
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

from petsage.instance.directory import process_start_time
from tests.support.gunicorn_process import GunicornServer
from tests.support.processes import wait_until

PETSAGE = Path(sys.executable).with_name("petsage")
# Bounds on waiting for what must happen: far longer than it takes on a busy machine.
LIVENESS = 60.0
TOKEN = "health-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
# What the master logs once the drain marker is written: readiness fails from then on.
DRAINING = "Draining: readiness fails now"


def readiness(port: int, timeout: float = 2.0) -> int | None:
    """The status /readyz of 127.0.0.1:``port`` answers, or None without an answer."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
            sock.sendall(
                b"GET /readyz HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n"
            )
            head = sock.recv(64)
    except OSError:
        return None
    return int(head.split()[1]) if head.startswith(b"HTTP/1.") else None


class ReadinessPoller:
    """/readyz on each of ``ports``, on a new connection every ``every`` seconds
    with a ``timeout`` (a strict kubelet or load balancer), in a thread, for as long
    as the ``with`` block lasts. With the health ``token`` each poll asks for the
    verbose answer, and ``reasons`` counts the failing items of the polls that
    failed (``refresher failed: stale``)."""

    def __init__(
        self,
        ports: list[int],
        every: float = 0.25,
        timeout: float = 2.0,
        token: str | None = None,
    ) -> None:
        self.ports = ports
        self.every = every
        self.timeout = timeout
        self.token = token
        # (port, status), or (port, None) for a poll that got no answer in time.
        self.polls: list[tuple[int, int | None]] = []
        self.reasons: Counter[str] = Counter()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(self.every):
            for port in self.ports:
                self.polls.append((port, self._poll(port)))

    def _poll(self, port: int) -> int | None:
        if self.token is None:
            return readiness(port, self.timeout)
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=self.timeout)
        try:
            connection.request(
                "GET",
                "/readyz?verbose",
                headers={"Authorization": f"Bearer {self.token}"},
            )
            response = connection.getresponse()
            body = response.read().decode(errors="replace")
        except (OSError, http.client.HTTPException):
            return None
        finally:
            connection.close()
        if response.status != 200:
            failing = [line[3:] for line in body.splitlines() if line.startswith("[-]")]
            self.reasons.update(failing or [body[:80]])
        return response.status

    def __enter__(self) -> "ReadinessPoller":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=30)

    @property
    def statuses(self) -> list[int | None]:
        """Every poll's status, None where it got no answer."""
        return [status for _, status in self.polls]

    def failed(self, port: int | None = None) -> int:
        """Polls (of ``port``, or of every port) answered other than 200."""
        return sum(
            status is not None and status != 200
            for polled, status in self.polls
            if port in (None, polled)
        )

    def lost(self, port: int | None = None) -> int:
        """Polls (of ``port``, or of every port) that got no answer in time."""
        return sum(
            status is None for polled, status in self.polls if port in (None, polled)
        )


def petsage(
    *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """Run the installed ``petsage`` command with ``env`` added to the environment."""
    return subprocess.run(
        [str(PETSAGE), *args],
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        timeout=30,
    )


def instance_name(pid: int) -> str:
    """The instance name of the master ``pid`` (alive, in this PID namespace)."""
    namespace = os.stat("/proc/self/ns/pid").st_ino
    return f"petsage-{pid}-{namespace}-{process_start_time(pid)}"


def instance_directory(server: GunicornServer, state: str = "/dev/shm") -> Path:
    """The state directory of ``server``'s master (alive)."""
    return Path(state) / instance_name(server.process.pid)


def wait_for_status(
    server: GunicornServer, path: str, status: int, timeout: float = LIVENESS
) -> float:
    """Probe ``path`` until it answers ``status``; the seconds it took."""
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        if server.request("GET", path, timeout=10).status == status:
            return time.monotonic() - started
        time.sleep(0.02)
    raise AssertionError(f"{path} did not answer {status} within {timeout} s")


def readiness_once_draining(server: GunicornServer) -> int:
    """The answer to the first /readyz sent after the master logged, on SIGTERM, that
    it drains: readiness fails at once, with no moment of 200 left after that."""
    wait_until(lambda: DRAINING in server.log(), LIVENESS, "the master draining")
    return server.request("GET", "/readyz").status
