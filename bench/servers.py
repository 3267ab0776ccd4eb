"""The candidates, and their servers: launched fresh, measured, and always stopped.

Every gunicorn candidate runs with PetSage's own ``gunicorn.conf.py`` from the
repository root, differing only in the application module; the FastAPI baseline runs
under uvicorn with as many worker processes.
"""

import contextlib
import http.client
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import psutil  # type: ignore[import-untyped]

from bench.apps import SMOKE_TEST_PATH
from bench.model import UNLOGGED_PATH

REPO_ROOT = Path(__file__).resolve().parent.parent
#: The venv's scripts (gunicorn, uvicorn) sit beside its python.
SCRIPTS = Path(sys.executable).parent
START_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 15.0
POLL_INTERVAL_S = 0.005

#: The module PetSage's health checker runs as (a child of the gunicorn master).
CHECKER = "petsage.serving.checker"
PETSAGE_PATHS = (SMOKE_TEST_PATH, "/livez", "/readyz", "/health")


@dataclass(frozen=True)
class Candidate:
    """One server and application under test, and the paths measured on it."""

    key: str
    label: str
    server: str
    app: str
    paths: tuple[str, ...] = (SMOKE_TEST_PATH,)
    extra_args: tuple[str, ...] = ()
    #: Whether uvicorn runs with its socket fixed for TCP_NODELAY (uvicorn_nodelay).
    nodelay_fix: bool = False
    #: PetSage settings of this candidate, over the defaults.
    settings: tuple[tuple[str, str], ...] = ()
    #: Measured at the lowest connection count only (an illustration, not a baseline).
    lowest_connections_only: bool = False
    #: Its paths are measured on the management listener (PETSAGE_MANAGEMENT_BIND on a
    #: port of its own), not on the public port.
    management: bool = False
    #: Measured with a new connection for every request, as probes are sent.
    close: bool = False

    def connection_counts(self, requested: Sequence[int]) -> list[int]:
        """The connection counts this candidate is measured at."""
        return [min(requested)] if self.lowest_connections_only else list(requested)

    def command(self, port: int, workers: int) -> list[str]:
        """The command line that serves this candidate on 127.0.0.1:``port``."""
        if self.server == "gunicorn":
            # The bind address and worker count come from PETSAGE_* (environment()).
            return [str(SCRIPTS / "gunicorn"), "-c", "gunicorn.conf.py", self.app]
        launcher = (
            [sys.executable, "-m", "bench.apps.uvicorn_nodelay"]
            if self.nodelay_fix
            else [str(SCRIPTS / "uvicorn")]
        )
        return [*launcher, *self._uvicorn_args(str(port), workers)]

    def _uvicorn_args(self, port: str, workers: int) -> list[str]:
        return [
            self.app,
            "--workers",
            str(workers),
            "--host",
            "127.0.0.1",
            "--port",
            port,
            *self.extra_args,
        ]

    def shown_command(self, workers: int, threads: int) -> str:
        """The command as a reader would type it from the repository root."""
        if self.server == "gunicorn":
            settings = "".join(f" {name}={value}" for name, value in self.settings)
            if self.management:
                settings += " PETSAGE_MANAGEMENT_BIND=127.0.0.1:MANAGEMENT_PORT"
            return (
                f"PETSAGE_BIND=127.0.0.1:PORT PETSAGE_WORKERS={workers}"
                f" PETSAGE_THREADS={threads} PETSAGE_SHUTDOWN_DELAY=0"
                f" PETSAGE_DRAIN_FILE=TMP/{self.key}.drain{settings}"
                f" gunicorn -c gunicorn.conf.py {self.app}"
            )
        launcher = (
            "python -m bench.apps.uvicorn_nodelay" if self.nodelay_fix else "uvicorn"
        )
        return " ".join([launcher, *self._uvicorn_args("PORT", workers)])


PETSAGE = Candidate("petsage", "PetSage", "gunicorn", "wsgi:app", PETSAGE_PATHS)
#: PetSage with its optional per-request work switched off. Request ids have no
#: switch; the access log is gunicorn.conf.py's, the same for every gunicorn candidate.
PETSAGE_METRICS_OFF = Candidate(
    "petsage_metrics_off",
    "PetSage, metrics off",
    "gunicorn",
    "wsgi:app",
    settings=(("PETSAGE_METRICS", "false"),),
)
#: The bare callable answers every path; PetSage's gunicorn logger leaves successful
#: /livez requests out of the access log, so that path measures gunicorn without it.
BARE_WSGI_UNLOGGED_PATH = UNLOGGED_PATH
BARE_WSGI = Candidate(
    "bare_wsgi",
    "bare WSGI",
    "gunicorn",
    "bench.apps.bare_wsgi:app",
    (SMOKE_TEST_PATH, BARE_WSGI_UNLOGGED_PATH),
)
BARE_FLASK = Candidate(
    "bare_flask", "bare Flask", "gunicorn", "bench.apps.bare_flask:app"
)
#: PetSage's management listener, beside the public port's probes: /readyz there,
#: read by gunicorn's parser from PetSage's reader and handler threads.
PETSAGE_MANAGEMENT = Candidate(
    "petsage_management",
    "PetSage, management listener",
    "gunicorn",
    "wsgi:app",
    ("/readyz",),
    management=True,
    close=True,
)
#: gunicorn's own handling of a request on a connection of its own, as a kubelet's
#: probe or a scrape opens one: the floor for the management listener, which
#: answers one request per connection.
BARE_WSGI_CLOSE = Candidate(
    "bare_wsgi_close",
    "bare WSGI, a connection per request",
    "gunicorn",
    "bench.apps.bare_wsgi:app",
    (BARE_WSGI_UNLOGGED_PATH,),
    close=True,
)
FASTAPI_APP = "bench.apps.fastapi_app:app"
FASTAPI = Candidate(
    "fastapi", "FastAPI, uvicorn defaults", "uvicorn", FASTAPI_APP, nodelay_fix=True
)
FASTAPI_NO_LOG = Candidate(
    "fastapi_no_log",
    "FastAPI, uvicorn --no-access-log",
    "uvicorn",
    FASTAPI_APP,
    extra_args=("--no-access-log",),
    nodelay_fix=True,
)
FASTAPI_AS_SHIPPED = Candidate(
    "fastapi_as_shipped",
    "FastAPI, uvicorn 0.54 as shipped",
    "uvicorn",
    FASTAPI_APP,
    lowest_connections_only=True,
)
CANDIDATES = (
    PETSAGE,
    PETSAGE_MANAGEMENT,
    PETSAGE_METRICS_OFF,
    BARE_WSGI,
    BARE_WSGI_CLOSE,
    BARE_FLASK,
    FASTAPI,
    FASTAPI_NO_LOG,
    FASTAPI_AS_SHIPPED,
)


def cpu_between(
    before: dict[int, float], after: dict[int, float]
) -> tuple[float, bool]:
    """CPU seconds the server used between two readings, and whether its processes
    changed (a worker died or was replaced: its last CPU time is then lost).
    """
    used = sum(seconds - before.get(pid, 0.0) for pid, seconds in after.items())
    return used, before.keys() != after.keys()


def free_port() -> int:
    """A port nothing listens on now; the server binds it a moment later."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def get(port: int, path: str, timeout: float = 2.0) -> tuple[int, bytes]:
    """One ``GET`` on a new connection: the status and the body."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        connection.request("GET", path)
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


def server_environment(
    candidate: Candidate,
    port: int,
    workers: int,
    threads: int,
    scratch: Path,
    management_port: int | None = None,
) -> dict[str, str]:
    """The environment of a server: PetSage's defaults, but for the bench's needs.

    Inherited ``PETSAGE_*`` variables are dropped so that every run measures the
    default configuration (but for the candidate's own settings), whatever the shell
    that started it has set.
    """
    environment = {
        name: value
        for name, value in os.environ.items()
        # gunicorn.conf.py gives each server a fresh metrics directory of its own.
        if not name.startswith(("PETSAGE_", "PROMETHEUS_"))
    }
    environment["PYTHONPATH"] = str(REPO_ROOT)
    if candidate.server == "gunicorn":
        environment.update(
            PETSAGE_BIND=f"127.0.0.1:{port}",
            PETSAGE_WORKERS=str(workers),
            PETSAGE_THREADS=str(threads),
            # The default 15 s drain on SIGTERM would only slow every stop down.
            PETSAGE_SHUTDOWN_DELAY="0",
            PETSAGE_DRAIN_FILE=str(scratch / f"{candidate.key}-{port}.drain"),
        )
        environment.update(candidate.settings)
        if management_port is not None:
            environment["PETSAGE_MANAGEMENT_BIND"] = f"127.0.0.1:{management_port}"
    return environment


@dataclass
class Server:
    """A running candidate: its process group, port and log file."""

    candidate: Candidate
    process: subprocess.Popen[bytes]
    port: int
    log_path: Path
    launched_at: float
    workers: int
    startup_s: float | None = None
    #: The management listener's port, for a candidate measured there.
    management_port: int | None = None
    _stopped: bool = field(default=False, repr=False)

    @classmethod
    @contextlib.contextmanager
    def running(
        cls, candidate: Candidate, workers: int, threads: int, scratch: Path
    ) -> Iterator["Server"]:
        """Launch ``candidate``, wait for its first 200, and stop it on leaving."""
        port = free_port()
        management_port = free_port() if candidate.management else None
        log_path = scratch / f"{candidate.key}-{port}.log"
        environment = server_environment(
            candidate, port, workers, threads, scratch, management_port
        )
        # The server writes its access log to a file: a pipe nobody reads would fill
        # and block it.
        with log_path.open("wb") as log:
            launched_at = time.monotonic()
            process = subprocess.Popen(
                candidate.command(port, workers),
                cwd=REPO_ROOT,
                env=environment,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                # Its own process group, so that stop() can end every process it made.
                start_new_session=True,
            )
        server = cls(candidate, process, port, log_path, launched_at, workers)
        server.management_port = management_port
        try:
            server.startup_s = server._wait_for_first_200()
            server._wait_for_workers()
            server._wait_for_checks()
            yield server
        finally:
            server.stop()

    @property
    def measured_port(self) -> int:
        """The port the candidate's paths are measured on."""
        return self.management_port or self.port

    def url(self, path: str) -> str:
        """The URL of ``path`` where the candidate's paths are measured."""
        return f"http://127.0.0.1:{self.measured_port}{path}"

    def log_tail(self, lines: int = 30) -> str:
        """The end of what the server wrote."""
        try:
            text = self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def _wait_for_first_200(self) -> float:
        """Seconds from launch to the first ``200`` on the smoke-test path."""
        deadline = self.launched_at + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                break
            try:
                status, _ = get(self.port, SMOKE_TEST_PATH, timeout=1.0)
            except OSError:
                status = 0
            if status == 200:
                return time.monotonic() - self.launched_at
            time.sleep(POLL_INTERVAL_S)
        code = self.process.poll()
        happened = (
            f"exited with {code} before answering"
            if code is not None
            else f"answered no 200 within {START_TIMEOUT_S:.0f} s"
        )
        raise RuntimeError(f"{self.candidate.label} {happened}:\n{self.log_tail(10)}")

    def _wait_for_workers(self) -> None:
        """Wait until every worker process exists; a slow one boots during warm-up."""
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if len(self.worker_processes()) >= self.workers:
                return
            time.sleep(0.05)
        raise RuntimeError(
            f"{self.candidate.label} started {len(self.worker_processes())} of"
            f" {self.workers} workers:\n" + self.log_tail()
        )

    def _checker_processes(self) -> list[psutil.Process]:
        """PetSage's health checker and its runners (petsage.serving.checker)."""
        found = []
        for process in self._tree()[1:]:
            try:
                if CHECKER in " ".join(process.cmdline()):
                    found.append(process)
            except psutil.NoSuchProcess:
                continue
        return found

    def _wait_for_checks(self) -> None:
        """Wait until the server's processes are those it measures with: under
        PetSage's gunicorn settings the master starts a health checker, which forks
        a runner per check and publishes a first cycle (``/readyz`` 200), or, for an
        application that is not PetSage's, finds no checks and exits. A process
        that comes or goes during a run would read as a worker replaced."""
        if self.candidate.server != "gunicorn":
            return
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if not self._checker_processes():
                return
            try:
                status, _ = get(self.measured_port, "/readyz", timeout=1.0)
            except OSError:
                status = 0
            if status == 200 and len(self._checker_processes()) > 1:
                return
            time.sleep(POLL_INTERVAL_S)
        raise RuntimeError(
            f"{self.candidate.label}: its health checker did not settle within"
            f" {START_TIMEOUT_S:.0f} s:\n" + self.log_tail(10)
        )

    def _tree(self) -> list[psutil.Process]:
        master = psutil.Process(self.process.pid)
        return [master, *master.children(recursive=True)]

    def worker_processes(self) -> list[psutil.Process]:
        """The processes serving requests: the master's children, minus helpers."""
        try:
            children = psutil.Process(self.process.pid).children()
        except psutil.NoSuchProcess:
            return []
        workers = []
        for child in children:
            try:
                # multiprocessing's resource tracker, which uvicorn's spawned workers
                # may start, and PetSage's health checker serve no requests.
                command = " ".join(child.cmdline())
                if "resource_tracker" not in command and CHECKER not in command:
                    workers.append(child)
            except psutil.NoSuchProcess:
                continue
        return workers

    def cpu_seconds(self) -> dict[int, float]:
        """User plus system CPU seconds of the master and each live descendant, by pid.

        Compare two readings with ``cpu_between``: by pid, so that a worker replaced
        in between is noticed instead of making the difference meaningless.
        """
        seconds = {}
        for process in self._tree():
            try:
                times = process.cpu_times()
            except psutil.NoSuchProcess:
                continue
            seconds[int(process.pid)] = float(times.user) + float(times.system)
        return seconds

    def rss_per_worker_mib(self) -> float:
        """Mean resident set size of the worker processes, in MiB."""
        sizes = []
        for worker in self.worker_processes():
            with contextlib.suppress(psutil.NoSuchProcess):
                sizes.append(float(worker.memory_info().rss))
        if not sizes:
            raise RuntimeError(f"{self.candidate.label} has no worker processes")
        return sum(sizes) / len(sizes) / (1024 * 1024)

    def stop(self) -> None:
        """Stop the server gracefully (SIGTERM), then kill whatever remains."""
        if self._stopped:
            return
        self._stopped = True
        try:
            descendants = psutil.Process(self.process.pid).children(recursive=True)
        except psutil.NoSuchProcess:
            descendants = []
        if self.process.poll() is None:
            # Only the master: it stops its workers itself; signalling them too could
            # make uvicorn's supervisor replace them while it shuts down.
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                # The master is still there, so its group id is still its own.
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(STOP_TIMEOUT_S)
        # A worker the master left behind (it died first, say) is killed too.
        for process in descendants:
            with contextlib.suppress(psutil.NoSuchProcess):
                if process.is_running():
                    process.kill()
