"""Real PostgreSQL and Redis servers for the datastore checks' tests.

Each runs unprivileged (as the system user ``petsage-test`` when the tests run as
root: PostgreSQL refuses root), in a private temporary directory, on a free loopback
port and a unix socket there; it is stopped, and its directory removed, at the end.
Where the server is not installed, or cannot start, the tests that need it skip
saying why. Nothing stands in for either server.
"""

import contextlib
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from petsage.health.dependencies.datastores import CLIENT_NAME
from tests.support.management import free_port

# Who runs the servers when the tests run as root.
SERVER_USER = "petsage-test"
# Bounds on what must happen: far longer than it takes on a busy machine.
START_TIMEOUT = 60.0
STOP_TIMEOUT = 30.0
# The PetSage role and database, and the password the tests give PetSage.
PETSAGE_USER = "petsage"
# A test server's, on loopback; with the characters a URL must percent-encode.
PETSAGE_PASSWORD = "s3cret/pw#1,x"
ADMIN_USER = "admin"
ADMIN_PASSWORD = "admin-pw"


def server_user() -> dict[str, Any]:
    """Popen's options to run a server unprivileged: as SERVER_USER when root."""
    if os.geteuid() != 0:
        return {}
    try:
        entry = pwd.getpwnam(SERVER_USER)
    except KeyError:
        # Two test processes may race to create it: the loser finds it made.
        subprocess.run(
            [
                *("useradd", "--system", "--no-create-home", "--user-group"),
                *("--shell", "/usr/sbin/nologin", SERVER_USER),
            ],
            capture_output=True,
            check=False,
        )
        try:
            entry = pwd.getpwnam(SERVER_USER)
        except KeyError:
            pytest.skip(f"cannot create the system user {SERVER_USER} (useradd)")
    return {"user": entry.pw_uid, "group": entry.pw_gid, "extra_groups": []}


def private_directory(prefix: str, owner: dict[str, Any]) -> Path:
    """A new directory of /tmp that only the server's user may enter."""
    directory = Path(tempfile.mkdtemp(prefix=prefix))
    if owner:
        os.chown(directory, owner["user"], owner["group"])
    return directory


def wait_for(condition: Any, timeout: float, what: str) -> None:
    """Poll ``condition`` until it is true; fail naming ``what`` after ``timeout``."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout} s: {what}")
        time.sleep(0.05)


class ServerProcess:
    """A server run in its own session (its process group is its pid), as the
    unprivileged user, with its output in a log file of its directory."""

    name = "server"

    def __init__(self, directory: Path, owner: dict[str, Any]) -> None:
        self.directory = directory
        self.owner = owner
        self.log_path = directory / "server.log"
        self.process: subprocess.Popen[bytes] | None = None

    def command(self) -> list[str]:
        """The server's command line."""
        raise NotImplementedError

    def ready(self) -> bool:
        """Whether the server answers."""
        raise NotImplementedError

    def start(self) -> None:
        """Start the server and wait until it answers."""
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                self.command(),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                cwd=self.directory,
                **self.owner,
            )
        deadline = time.monotonic() + START_TIMEOUT
        while not self.ready():
            if self.process.poll() is not None or time.monotonic() > deadline:
                log_text = self.log_path.read_text(errors="replace")[-2000:]
                self.stop()
                raise AssertionError(f"{self.name} did not start: {log_text}")
            time.sleep(0.05)

    def stop(self) -> None:
        """Stop the server (thawed first if frozen), and wait until it exited."""
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        self.process = process
        self.thaw()
        self.process = None
        with contextlib.suppress(ProcessLookupError):
            process.send_signal(signal.SIGINT)
        try:
            process.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(STOP_TIMEOUT)

    def restart(self) -> None:
        """Stop the server and start it again, on the same port and socket."""
        self.stop()
        self.start()

    def pids(self) -> list[int]:
        """The server's process and its descendants (PostgreSQL's backends each call
        setsid, so its process group is not all of it)."""
        assert self.process is not None
        found, pending = [], [self.process.pid]
        while pending:
            pid = pending.pop()
            found.append(pid)
            with contextlib.suppress(OSError):
                children = Path(f"/proc/{pid}/task/{pid}/children").read_text()
                pending.extend(int(child) for child in children.split())
        return found

    def signal_all(self, number: signal.Signals) -> None:
        """Send ``number`` to every process of the server."""
        for pid in self.pids():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, number)

    def freeze(self) -> None:
        """SIGSTOP every process of the server: its kernel still accepts and
        acknowledges for it, so clients wait for replies that do not come."""
        self.signal_all(signal.SIGSTOP)

    def thaw(self) -> None:
        """SIGCONT every process of the server."""
        self.signal_all(signal.SIGCONT)

    def ensure_running(self) -> None:
        """Thawed and started, whatever a test left it as."""
        if self.process is not None and self.process.poll() is None:
            self.thaw()
        else:
            self.start()

    def remove(self) -> None:
        """Stop the server and remove its directory."""
        self.stop()
        shutil.rmtree(self.directory, ignore_errors=True)


def postgresql_binaries() -> Path | None:
    """The newest Debian PostgreSQL's bin directory, if one is installed."""
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"))
    return found[-1].parent if found else None


class PostgresServer(ServerProcess):
    """A PostgreSQL cluster made with initdb: the superuser ``admin`` (trust over
    its unix socket) and the role ``petsage`` (a password over TCP) owning the
    database ``petsage``."""

    name = "postgres"
    max_connections = 20

    def __init__(self, directory: Path, owner: dict[str, Any], binaries: Path):
        super().__init__(directory, owner)
        self.binaries = binaries
        self.port = free_port()
        self.data = directory / "data"
        self.socket_directory = directory / "socket"

    def initialize(self) -> None:
        """Make the cluster, the role and the database, then leave it running."""
        password_file = self.directory / "admin-password"
        password_file.write_text(ADMIN_PASSWORD)
        self.socket_directory.mkdir()
        for path in (password_file, self.socket_directory):
            if self.owner:
                os.chown(path, self.owner["user"], self.owner["group"])
        subprocess.run(
            [
                str(self.binaries / "initdb"),
                "-D",
                str(self.data),
                "-U",
                ADMIN_USER,
                f"--pwfile={password_file}",
                "--auth-local=trust",
                "--auth-host=scram-sha-256",
                "--no-sync",
                "--no-instructions",
                "-E",
                "UTF8",
            ],
            check=True,
            capture_output=True,
            timeout=START_TIMEOUT,
            cwd=self.directory,
            **self.owner,
        )
        self.start()
        with self.admin() as connection:
            connection.execute(
                f"CREATE ROLE {PETSAGE_USER} LOGIN PASSWORD '{PETSAGE_PASSWORD}'"
            )
            connection.execute(f"CREATE DATABASE petsage OWNER {PETSAGE_USER}")
            connection.execute("CREATE ROLE other LOGIN")

    def command(self) -> list[str]:
        return [
            str(self.binaries / "postgres"),
            "-D",
            str(self.data),
            "-p",
            str(self.port),
            "-c",
            "listen_addresses=127.0.0.1",
            "-c",
            f"unix_socket_directories={self.socket_directory}",
            "-c",
            f"max_connections={self.max_connections}",
            "-c",
            "fsync=off",
            "-c",
            "shared_buffers=16MB",
        ]

    def ready(self) -> bool:
        try:
            with self.admin():
                return True
        except Exception:
            return False

    def admin(self, user: str = ADMIN_USER, database: str = "postgres") -> Any:
        """A new connection over the unix socket (trust), autocommit."""
        import psycopg

        return psycopg.connect(
            host=str(self.socket_directory),
            port=self.port,
            user=user,
            dbname=database,
            autocommit=True,
            connect_timeout=5,
            application_name="tests",
        )

    def query(self, sql: str) -> list[tuple[Any, ...]]:
        """``sql``'s rows, as the superuser."""
        with self.admin() as connection:
            rows: list[tuple[Any, ...]] = connection.execute(sql).fetchall()
            return rows

    def petsage_backends(self) -> list[int]:
        """The pids of the server's backends for PetSage's connections."""
        rows = self.query(
            f"SELECT pid FROM pg_stat_activity WHERE application_name = '{CLIENT_NAME}'"
        )
        return sorted(row[0] for row in rows)

    def logins(self) -> int:
        """Sessions begun on the database ``petsage`` since the cluster was made
        (pg_stat_database counts a session once its login succeeded)."""
        rows = self.query(
            "SELECT sessions FROM pg_stat_database WHERE datname = 'petsage'"
        )
        return int(rows[0][0])

    def counting_connections(self) -> "ListedConnections":
        """A block during which PetSage's connections are counted as listed."""
        return ListedConnections(self)

    def stop_postmaster(self) -> None:
        """SIGSTOP the postmaster alone: new connections wait in its listen queue
        unanswered, while the backends of established ones keep answering
        (``thaw`` resumes it)."""
        assert self.process is not None
        os.kill(self.process.pid, signal.SIGSTOP)

    def change_password(self, password: str) -> None:
        """Give the role ``petsage`` a new password, as an operator rotating it does."""
        from psycopg import sql

        statement = sql.SQL("ALTER ROLE {} PASSWORD {}").format(
            sql.Identifier(PETSAGE_USER), sql.Literal(password)
        )
        with self.admin() as connection:
            connection.execute(statement)

    @contextlib.contextmanager
    def every_slot_taken(self) -> Iterator[list[Any]]:
        """Every connection slot but the superuser's reserved ones held by the role
        ``other`` for the block, a slot taken again as soon as it frees (as a pool
        that grows to its limit does): a new login of any other role is refused with
        "remaining connection slots are reserved". Yields the held connections."""
        import psycopg

        held: list[Any] = []
        done = threading.Event()

        def take() -> None:
            while not done.is_set():
                try:
                    held.append(self.admin(user="other"))
                except psycopg.OperationalError:
                    done.wait(0.02)

        taker = threading.Thread(target=take, daemon=True)
        taker.start()
        try:
            wait_for(self.refuses, START_TIMEOUT, "every slot taken")
            yield held
        finally:
            done.set()
            taker.join(STOP_TIMEOUT)
            for connection in held:
                connection.close()

    def refuses(self) -> bool:
        """Whether a new login of the role ``other`` is refused: no slot left but
        the superuser's reserved ones."""
        import psycopg

        try:
            self.admin(user="other").close()
        except psycopg.OperationalError as error:
            return "remaining connection slots are reserved" in str(error)
        return False

    def petsage_connections(self) -> list[int]:
        """PetSage's connections as the server lists them (backend pids)."""
        return self.petsage_backends()

    def url(self, password: str | None = PETSAGE_PASSWORD, **query: str) -> str:
        """PetSage's URL of this server over TCP, the password percent-encoded."""
        from urllib.parse import quote, urlencode

        credentials = PETSAGE_USER + (
            f":{quote(password, safe='')}" if password is not None else ""
        )
        suffix = f"?{urlencode(query)}" if query else ""
        return f"postgresql://{credentials}@127.0.0.1:{self.port}/petsage{suffix}"


class ListedConnections:
    """The most PetSage connections a PostgreSQL server listed at once while the
    block ran (pg_stat_activity by application_name), read over one connection of
    the tests' own, again and again, by a thread."""

    def __init__(self, server: PostgresServer) -> None:
        self.server = server
        self.most = 0
        self.samples = 0
        self.error: Exception | None = None
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._count, daemon=True)

    def _count(self) -> None:
        try:
            with self.server.admin() as connection:
                while not self._done.is_set():
                    [(listed,)] = connection.execute(
                        "SELECT count(*) FROM pg_stat_activity"
                        " WHERE application_name = %s",
                        [CLIENT_NAME],
                    ).fetchall()
                    self.most = max(self.most, listed)
                    self.samples += 1
                    self._done.wait(0.005)
        except Exception as error:  # reported by __exit__, in the test's thread
            self.error = error

    def __enter__(self) -> "ListedConnections":
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._done.set()
        self._thread.join(STOP_TIMEOUT)
        if self.error is not None:
            raise AssertionError(f"counting connections failed: {self.error}")


@contextlib.contextmanager
def running_postgres() -> Iterator[PostgresServer]:
    """A fresh PostgreSQL cluster, running; skips when PostgreSQL is not installed."""
    binaries = postgresql_binaries()
    if binaries is None:
        pytest.skip("PostgreSQL is not installed: apt-get install postgresql")
    owner = server_user()
    server = PostgresServer(private_directory("petsage-pg-", owner), owner, binaries)
    try:
        server.initialize()
        yield server
    finally:
        server.remove()


class RedisServer(ServerProcess):
    """A redis-server without persistence: the default user has ``requirepass``
    (PETSAGE_PASSWORD), the ACL user ``petsage`` the same password, and ``admin``
    every right."""

    name = "redis-server"

    def __init__(self, directory: Path, owner: dict[str, Any], binary: str):
        super().__init__(directory, owner)
        self.binary = binary
        self.port = free_port()
        self.socket_path = directory / "redis.sock"

    def command(self) -> list[str]:
        return [
            self.binary,
            "--port",
            str(self.port),
            "--bind",
            "127.0.0.1",
            "--unixsocket",
            str(self.socket_path),
            "--unixsocketperm",
            "777",
            "--dir",
            str(self.directory),
            "--save",
            "",
            "--appendonly",
            "no",
            "--daemonize",
            "no",
            "--requirepass",
            PETSAGE_PASSWORD,
            # One argument a word: redis-server joins them up to the next --.
            *("--user", ADMIN_USER, "on", f">{ADMIN_PASSWORD}", "~*", "&*", "+@all"),
            *("--user", PETSAGE_USER, "on", f">{PETSAGE_PASSWORD}", "~*", "+@all"),
        ]

    def ready(self) -> bool:
        try:
            return bool(self.admin().ping())
        except Exception:
            return False

    def admin(self) -> Any:
        """A client logged in as ``admin`` over TCP."""
        import redis

        return redis.Redis(
            host="127.0.0.1",
            port=self.port,
            username=ADMIN_USER,
            password=ADMIN_PASSWORD,
            socket_timeout=5,
            socket_connect_timeout=5,
            single_connection_client=True,
        )

    def petsage_clients(self) -> list[int]:
        """The ids of the clients named as PetSage names its own (CLIENT SETNAME)."""
        with self.admin() as client:
            return sorted(
                int(entry["id"])
                for entry in client.client_list()
                if entry.get("name") == CLIENT_NAME
            )

    def petsage_connections(self) -> list[int]:
        """PetSage's connections as the server lists them (client ids)."""
        return self.petsage_clients()

    def pings(self) -> int:
        """PINGs the server answered since it started (INFO commandstats)."""
        with self.admin() as client:
            stats = client.info("commandstats").get("cmdstat_ping", {})
            return int(stats.get("calls", 0))

    def url(self, password: str | None = PETSAGE_PASSWORD, user: str = "") -> str:
        """PetSage's redis:// URL over TCP, the password percent-encoded."""
        from urllib.parse import quote

        credentials = (
            f"{user}:{quote(password, safe='')}@" if password is not None else ""
        )
        return f"redis://{credentials}127.0.0.1:{self.port}/0"


@contextlib.contextmanager
def running_redis() -> Iterator[RedisServer]:
    """A redis-server, running; skips when redis-server is not installed."""
    binary = shutil.which("redis-server") or (
        "/usr/bin/redis-server" if os.path.exists("/usr/bin/redis-server") else None
    )
    if binary is None:
        pytest.skip("redis-server is not installed: apt-get install redis-server")
    owner = server_user()
    server = RedisServer(private_directory("petsage-redis-", owner), owner, binary)
    try:
        server.start()
        yield server
    finally:
        server.remove()
