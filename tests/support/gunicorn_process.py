"""A real gunicorn process serving PetSage with ``gunicorn.conf.py``, and HTTP to it."""

import http.client
import itertools
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[2]
# The first address on 127.0.0.1 among those gunicorn lists.
LISTENING = re.compile(r"Listening at: [^ ]*?http://127\.0\.0\.1:(\d+)")
# The console script, as operators run it: a SIGUSR2 upgrade re-executes the command
# line, and `python -m gunicorn` comes back as gunicorn/__main__.py, whose directory
# then shadows the standard library's `http` package.
GUNICORN = str(Path(sys.executable).with_name("gunicorn"))
START_TIMEOUT = 20.0
# The master's lines as its checker process starts and runs its first cycle.
CHECKER_STARTED = "Health checker started"
CHECKER_CYCLED = "ran its first cycle"
STOP_TIMEOUT = 40.0


@dataclass(frozen=True)
class HttpResult:
    """An HTTP response, read whole."""

    status: int
    headers: http.client.HTTPMessage
    body: bytes


def http_request(
    port: int,
    method: str,
    path: str,
    headers: dict[str, str] | None = None,
    timeout: float = 5.0,
    body: bytes | Iterable[bytes] | None = None,
) -> HttpResult:
    """Send one request to 127.0.0.1:``port`` on a new connection, with ``body``
    (an iterable of chunks is sent chunked)."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        connection.request(method, path, body=body, headers=headers or {})
        response = connection.getresponse()
        return HttpResult(response.status, response.headers, response.read())
    finally:
        connection.close()


def complete_lines(log: str) -> list[str]:
    """The lines of a log that a running process may still be writing, without the
    last one when its newline has not been written yet."""
    *lines, _unfinished = log.split("\n")
    return lines


def given_port(args: Sequence[str]) -> int | None:
    """The port of the first ``-b 127.0.0.1:PORT`` among gunicorn's arguments."""
    for flag, value in itertools.pairwise(args):
        if flag == "-b" and value.startswith("127.0.0.1:"):
            return int(value.rpartition(":")[2]) or None
    return None


@dataclass
class GunicornServer:
    """gunicorn started as an operator starts it: ``gunicorn`` in the project root."""

    process: subprocess.Popen[bytes]
    port: int
    log_path: Path

    @classmethod
    def start(
        cls,
        env: dict[str, str],
        app: str | None = None,
        args: Sequence[str] = (),
        preexec_fn: Callable[[], object] | None = None,
        output: int | None = None,
    ) -> "GunicornServer":
        """Start gunicorn on a free port and wait until its workers answer.

        ``app`` replaces the config's ``wsgi:app``, e.g. with a test module's app;
        ``args`` go on gunicorn's command line (e.g. ``-b 127.0.0.1:8001``), where
        the first ``-b`` address is the one requests go to; ``preexec_fn`` runs in
        the new process before gunicorn does (e.g. to join a cgroup). ``output``, a
        file descriptor, takes gunicorn's stdout and stderr instead of the log file
        (which stays empty): its port must then be given with ``-b``.
        """
        log_path = Path(tempfile.mkstemp(prefix="petsage-gunicorn-", suffix=".log")[1])
        environment = {
            # The test run's own knobs (tests/support/fault_record.py) are not settings.
            **{
                name: value
                for name, value in os.environ.items()
                if not name.startswith("PETSAGE_FAULT_")
            },
            "PETSAGE_BIND": "127.0.0.1:0",
            "PETSAGE_WORKERS": "2",
            # A database of the server's own, beside its log, its schema upgraded by
            # the master: never the installation's file, which other runs share.
            "PETSAGE_DATABASE_URL": f"sqlite:///{log_path}.sqlite3",
            "PETSAGE_DATABASE_UPGRADE": "start",
            # Tests that are not about draining should not wait for it at the end.
            "PETSAGE_SHUTDOWN_DELAY": "0",
            **env,
        }
        with log_path.open("wb") as log:
            process = subprocess.Popen(
                [GUNICORN, *args, *([app] if app else [])],
                cwd=REPO_ROOT,
                env=environment,
                stdout=log if output is None else output,
                stderr=subprocess.STDOUT,
                preexec_fn=preexec_fn,
            )
        server = cls(process, 0, log_path)
        try:
            given = given_port(args)
            if output is None:
                server.port = server._wait_for_port(given)
            elif given is not None:
                server.port = given  # nothing to read "Listening at" from
            else:
                raise ValueError("gunicorn writing to another output needs -b")
            server._wait_for_an_answer()
            if output is None:
                server._wait_for_the_first_cycle()
        except BaseException:
            # Not handed to a fixture yet: nobody else would stop it.
            server.stop()
            raise
        return server

    def _wait_for_an_answer(self) -> None:
        # With --reuse-port the workers bind after the master says it listens.
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            try:
                self.request("GET", "/", timeout=START_TIMEOUT)
                return
            except ConnectionRefusedError:
                if time.monotonic() > deadline or self.process.poll() is not None:
                    raise
                time.sleep(0.05)

    def _wait_for_the_first_cycle(self) -> None:
        """With a checker process (petsage.serving.supervisor), wait until it has run
        its first cycle, so that /readyz answers from the instance's results rather
        than ``startup: starting``. An application without health starts none."""
        deadline = time.monotonic() + START_TIMEOUT
        while CHECKER_STARTED in self.log() and CHECKER_CYCLED not in self.log():
            if time.monotonic() > deadline or self.process.poll() is not None:
                raise AssertionError("the checker ran no first cycle:\n" + self.log())
            time.sleep(0.05)

    def _wait_for_port(self, given: int | None) -> int:
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            log = self.log()
            match = LISTENING.search(log)
            if match:
                return int(match.group(1))
            # With --reuse-port the master binds nothing and lists no address.
            if given and "Listening at: " in log:
                return given
            if self.process.poll() is not None:
                break
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"gunicorn did not start:\n{self.log()}")

    def log(self) -> str:
        """Everything gunicorn and PetSage wrote so far."""
        return self.log_path.read_text(errors="replace")

    def log_lines(self) -> list[str]:
        """The lines written whole so far: a line still being written is left out."""
        return complete_lines(self.log())

    def log_records(self) -> list[dict[str, Any]]:
        """Every JSON log record written whole so far."""
        return [json.loads(line) for line in self.log_lines() if line.startswith("{")]

    def request(
        self,
        method: str,
        path: str,
        headers: dict[str, str] | None = None,
        timeout: float = 5.0,
        body: bytes | Iterable[bytes] | None = None,
    ) -> HttpResult:
        """Send one request to this server, with ``body``."""
        return http_request(self.port, method, path, headers, timeout, body)

    def stop(self) -> None:
        """Stop gunicorn gracefully (SIGTERM); kill it if it does not exit in time."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


GunicornFactory = Callable[..., GunicornServer]
