"""A PetSage instance whose master a test kills with SIGKILL while clients hold it:
idle keep-alive connections to the public port, and a request in flight
(``tests.support.apps.held``) that the test releases when it chooses."""

import contextlib
import http.client
import os
import signal
import socket
import threading
import time
from pathlib import Path

from tests.support.gunicorn_process import GunicornFactory, GunicornServer, HttpResult
from tests.support.instances import LIVENESS
from tests.support.processes import (
    answers,
    free_ports,
    gone,
    status_on,
    wait_for_workers,
    wait_until,
)

APP = "tests.support.apps.held:app"
WORKERS = 3
PROBES = ("/livez", "/readyz")


class OrphanedInstance:
    """3 workers, a management listener and a state directory of their own; each
    probe path asked once on a connection kept alive; one request held in flight."""

    def __init__(
        self, start_gunicorn: GunicornFactory, state: Path, **settings: str
    ) -> None:
        """Start it with ``settings`` added (``GRACEFUL_TIMEOUT="2"``) and wait until
        every worker serves and the held request is in flight."""
        self.port, self.management_port = free_ports(2)
        self.state = {"PETSAGE_STATE_DIR": str(state)}
        self.env = {
            **self.state,
            "PETSAGE_WORKERS": str(WORKERS),
            "PETSAGE_MANAGEMENT_BIND": f"127.0.0.1:{self.management_port}",
            **{f"PETSAGE_{name}": value for name, value in settings.items()},
        }
        self.args = ["-b", f"127.0.0.1:{self.port}"]
        self.server = start_gunicorn(self.env, app=APP, args=self.args)
        self.master = self.server.process.pid
        self.workers = set(wait_for_workers(self.server, WORKERS))
        wait_until(
            lambda: answers(self.management_port, "/readyz") == 200,
            LIVENESS,
            "the management listener ready",
        )
        self.kept_alive = {path: self._kept_alive(path) for path in PROBES}
        self._started, self._release = state / "held-started", state / "held-release"
        self.held: HttpResult | Exception | None = None
        self._holder = threading.Thread(target=self._hold, daemon=True)
        self._holder.start()
        wait_until(self._started.exists, LIVENESS, "the held request in flight")

    def _kept_alive(self, path: str) -> http.client.HTTPConnection:
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        connection.request("GET", path)
        response = connection.getresponse()
        response.read()
        assert response.status == 200, f"{path} before the kill: {response.status}"
        return connection

    def _hold(self) -> None:
        path = f"/held?started={self._started}&until={self._release}"
        try:
            self.held = self.server.request("GET", path, timeout=LIVENESS * 3)
        except Exception as error:  # the answer the test reads, whatever it is
            self.held = error

    def kill_master(self) -> float:
        """SIGKILL the master and reap it; when it was reaped (monotonic clock)."""
        self.server.process.kill()
        self.server.process.wait()
        return time.monotonic()

    def probe_kept_alive(self, path: str) -> int | None:
        """The status ``path`` answers on its kept-alive connection, or None when the
        connection was closed instead."""
        return status_on(self.kept_alive[path], path)

    def release(self) -> HttpResult | Exception | None:
        """Let the held request answer; its answer (or what its client raised)."""
        self._release.touch()
        self._holder.join(LIVENESS)
        return self.held

    def workers_alive(self) -> set[int]:
        """The workers that have not exited yet."""
        return {pid for pid in self.workers if not gone(pid)}

    def start_successor(self, start_gunicorn: GunicornFactory) -> GunicornServer:
        """A new instance with the same addresses, settings and state directory."""
        return start_gunicorn(self.env, app=APP, args=self.args)

    def close(self) -> None:
        """Release the held request, close the kept-alive connections, and kill
        every worker left (a failed test's)."""
        self._release.touch()
        for connection in self.kept_alive.values():
            connection.close()
        for pid in self.workers_alive():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def refuses(port: int) -> bool:
    """Whether a new connection to 127.0.0.1:``port`` is refused (nothing listens),
    rather than accepted, or left waiting in a queue nobody accepts from."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1.0):
            return False
    except ConnectionRefusedError:
        return True
    except OSError:
        return False
