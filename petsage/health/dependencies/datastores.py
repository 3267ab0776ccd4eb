"""Dependency checks in a datastore's own protocol: PostgreSQL ``SELECT 1``, Redis PING,
and an SQLite file opened and read.

A TCP connect proves a port is open; these prove a login works and the server answers.
The PostgreSQL check logs in over a new connection at each run and closes it before
the run ends, since what refuses new logins (a stopped postmaster, a changed
password, every connection slot taken) leaves an established session answering. The
Redis check keeps one connection, opened at its first run, reused by every later run
and replaced after a failure, and sends AUTH at each run. Each check runs in a runner
process of its own, under the instance's one checker process
(``petsage.health.runners``), one run at a time (a runner still in a run is not asked
again), so the server sees at most one PetSage connection per dependency per
instance, across reloads too (a reload's new checker runs no check until the old one
has finished its cycle and exited, petsage.serving.supervisor): a runner that ends
takes its connection with it (the kernel closes the socket), and the next opens its
own.

The drivers (psycopg 3, redis-py) are the package's ``postgresql`` and ``redis``
extras, imported only by a check that needs one (SQLite's, the standard library's
sqlite3, always there);
``petsage.health.dependencies.settings`` refuses at start a dependency whose driver is
missing.
"""

import contextlib
import importlib
import os
import socket
import sqlite3
import threading
import time
from collections.abc import Callable
from types import ModuleType
from typing import Any, Generic, TypeVar
from urllib.parse import quote, unquote, urlsplit

from petsage.health.checks import CheckFailed, Observation, describe_error
from petsage.health.dependencies.entry import Dependency

# The server lists the connection under this name (pg_stat_activity.application_name,
# Redis CLIENT LIST), so an operator can tell PetSage's checks from the application.
CLIENT_NAME = "petsage-health"

Connection = TypeVar("Connection")


def read_password(path: str) -> str:
    """The password a file holds (a mounted Secret), one trailing newline dropped."""
    try:
        with open(path, encoding="utf-8") as source:
            content = source.read()
    except OSError as error:
        raise CheckFailed(f"password file: {describe_error(error)}") from None
    return content.removesuffix("\n").removesuffix("\r")


def elapsed_ms(started: float) -> float:
    """Milliseconds since ``started`` (perf_counter), to the microsecond."""
    return round((time.perf_counter() - started) * 1000, 3)


class HeldConnection(Generic[Connection]):
    """One connection to a datastore, opened when first needed and reused.

    ``use`` runs ``work`` over the held connection; when that fails on a connection
    opened by an earlier run (the server restarted, an idle timeout closed it), the
    connection is closed and the work tried once more over a new one, so a restarted
    server passes again at the next cycle. Any failure closes the connection: the next
    run opens a new one. A process that inherited the connection through a fork
    forgets it without closing it, since the socket is its parent's.
    """

    def __init__(
        self,
        connect: Callable[[], Connection],
        close: Callable[[Connection], None],
    ) -> None:
        self._connect = connect
        self._close = close
        self._connection: Connection | None = None
        self._owner = os.getpid()

    def use(
        self, work: Callable[[Connection, float], Observation], timeout: float
    ) -> Observation:
        """``work`` over the connection, given the run's deadline (monotonic clock);
        over a new connection once more if a reused one fails before the deadline."""
        deadline = time.monotonic() + timeout
        if self._owner != os.getpid():
            self._connection, self._owner = None, os.getpid()
        if self._connection is not None:
            try:
                return work(self._connection, deadline)
            except Exception:
                self.discard()
                if time.monotonic() >= deadline:
                    raise
        self._connection = self._connect()
        try:
            return work(self._connection, deadline)
        except Exception:
            self.discard()
            raise

    def discard(self) -> None:
        """Close the held connection, if any; the next run opens a new one."""
        connection, self._connection = self._connection, None
        if connection is not None:
            # A broken connection may fail to close: it is dropped all the same.
            with contextlib.suppress(Exception):
                self._close(connection)


class HeldProbe:
    """A check's ``run`` that holds a connection: call it to observe; ``close`` lets
    the connection go (the process's end does it too)."""

    def __init__(
        self, observe: Callable[[], Observation], held: HeldConnection[Any]
    ) -> None:
        self._observe = observe
        self._held = held

    def __call__(self) -> Observation:
        """Run the check once."""
        return self._observe()

    def close(self) -> None:
        """Close the held connection; the next run opens a new one."""
        self._held.discard()


def driver(module: str) -> ModuleType:
    """The driver's module; the settings' parser made sure at start that it
    imports."""
    return importlib.import_module(module)


def without_secret(text: str, password: str | None) -> str:
    """``text`` with ``password`` (as given, and percent-encoded) masked."""
    if password:
        for form in {password, quote(password, safe="")}:
            text = text.replace(form, "***")
    return text


def shutdown_at(descriptor: int, deadline: float) -> threading.Timer:
    """Shut socket ``descriptor`` down at ``deadline`` (monotonic) unless cancelled.

    libpq waits for a reply without a deadline of its own, and a frozen server's
    kernel still accepts and acknowledges: shutting the socket down wakes the waiting
    driver with an error. shutdown(2) leaves the descriptor open, so it cannot close
    a descriptor number reused meanwhile.
    """

    def shut() -> None:
        try:
            with socket.socket(fileno=os.dup(descriptor)) as duplicate:
                duplicate.shutdown(socket.SHUT_RDWR)
        except OSError:  # nosec B110: already closed, nothing to stop
            pass

    timer = threading.Timer(max(0.0, deadline - time.monotonic()), shut)
    timer.daemon = True
    timer.start()
    return timer


def postgresql_probe(
    dependency: Dependency, timeout: float
) -> Callable[[], Observation]:
    """Log in over a new connection, run ``SELECT 1``, close: each run proves that a
    new login works; observe the query's round trip in ms."""
    psycopg = driver("psycopg")
    conninfo = dependency.driver_url
    password_file = dependency.password_file
    url_password = urlsplit(dependency.url).password
    # libpq's unit is whole seconds, at least 2; the refresher reports the check timed
    # out at its own timeout whatever the driver does.
    connect_timeout = max(2, int(timeout + 0.999))

    def connect(password: str | None) -> Any:
        options: dict[str, Any] = {
            "autocommit": True,
            "connect_timeout": connect_timeout,
            # The URL's application_name, if it gives one, wins.
            "fallback_application_name": CLIENT_NAME,
        }
        if password is not None:
            options["password"] = password
        return psycopg.connect(conninfo, **options)

    def query(connection: Any, deadline: float) -> Observation:
        # One statement that takes no lock, on a connection closed right after: the
        # socket's shutdown at the deadline is all the bound it needs.
        timer = shutdown_at(connection.pgconn.socket, deadline)
        try:
            started = time.perf_counter()
            row = connection.execute("SELECT 1, pg_is_in_recovery()").fetchone()
            round_trip = elapsed_ms(started)
        except psycopg.Error:
            if time.monotonic() >= deadline:
                raise CheckFailed("timed out") from None  # the socket was shut down
            raise
        finally:
            timer.cancel()
        standby = bool(row and row[1])
        version = connection.info.server_version
        role = "read-only standby" if standby else "primary"
        described = f"PostgreSQL {version // 10000}.{version % 10000}, {role}"
        return Observation(round_trip, "ms", output=described)

    def observe() -> Observation:
        deadline = time.monotonic() + timeout
        # Read at each run: a rotated Secret (the file rewritten) needs no restart.
        password = read_password(password_file) if password_file else None
        try:
            connection = connect(password)
            try:
                return query(connection, deadline)
            finally:
                close_and_wait(connection, deadline)
        except psycopg.Error as error:
            reason = describe_postgresql_error(psycopg, error)
            for secret in (password, url_password and unquote(url_password)):
                reason = without_secret(reason, secret)
            raise CheckFailed(reason) from None

    return observe


def close_and_wait(connection: Any, deadline: float) -> None:
    """Close a psycopg connection, then wait, until ``deadline`` (monotonic) at the
    latest, for the server to close its end.

    libpq sends Terminate and closes its descriptor at once, while the server's
    backend still holds its connection slot until it has exited; it closes its socket
    last. Waiting on a duplicate of the descriptor for that end of file means the
    next run's connection is never a second one the server counts.
    """
    try:
        descriptor: int | None = os.dup(connection.pgconn.socket)
    except Exception:  # the driver's "connection lost": no socket left to wait on
        descriptor = None
    connection.close()
    if descriptor is None:
        return
    with socket.socket(fileno=descriptor) as duplicate:
        try:
            duplicate.settimeout(max(0.0, deadline - time.monotonic()))
            while duplicate.recv(4096):  # a TLS close_notify, then the end
                pass
        except OSError:  # nosec B110: timed out or reset: the wait is over
            pass


def describe_postgresql_error(psycopg: ModuleType, error: Exception) -> str:
    """The kind of a psycopg error and the server's (or libpq's) reason, no host.

    libpq says ``connection to server at "HOST", port N failed: REASON``; only the
    reason is kept.
    """
    if isinstance(error, psycopg.errors.ConnectionTimeout):
        return "timed out"
    diagnostic = getattr(error, "diag", None)
    primary = diagnostic.message_primary if diagnostic is not None else None
    message = primary or str(error)
    reason = message.rpartition(" failed: ")[2] if " failed: " in message else message
    reason = " ".join(reason.strip().splitlines()[0].split()) if reason.strip() else ""
    return f"{type(error).__name__}: {reason}" if reason else type(error).__name__


def sqlite_probe(path: str, timeout: float) -> Callable[[], Observation]:
    """Open the SQLite file at ``path`` (never making it), read its schema, close:
    each run proves that the file is there, readable and a database; observe how
    long that took in ms."""
    # A URI, so that a file that is not there is a failure, not a new database.
    uri = "file:" + quote(path) + "?mode=rw"

    def observe() -> Observation:
        started = time.perf_counter()
        try:
            connection = sqlite3.connect(uri, uri=True, timeout=timeout)
            try:
                connection.execute("SELECT count(*) FROM sqlite_schema").fetchone()
            finally:
                connection.close()
        except sqlite3.Error as error:
            reason = " ".join(str(error).split())
            raise CheckFailed(f"{type(error).__name__}: {reason}") from None
        return Observation(
            elapsed_ms(started), "ms", output=f"SQLite {sqlite3.sqlite_version}"
        )

    return observe


def redis_probe(dependency: Dependency, timeout: float) -> HeldProbe:
    """AUTH when credentials are given, PING, INFO: over one held connection."""
    redis = driver("redis")
    retry_module = importlib.import_module("redis.retry")
    backoff_module = importlib.import_module("redis.backoff")
    url = dependency.driver_url
    parts = urlsplit(dependency.url)
    username = unquote(parts.username) if parts.username else None
    url_password = unquote(parts.password) if parts.password else None
    password_file = dependency.password_file

    def password() -> str | None:
        return read_password(password_file) if password_file else url_password

    def connect() -> Any:
        options: dict[str, Any] = {
            "single_connection_client": True,
            "socket_timeout": timeout,
            "socket_connect_timeout": timeout,
            "client_name": CLIENT_NAME,
            # Never retried inside a run: HeldConnection retries once, and only a
            # connection reused from an earlier run.
            "retry": retry_module.Retry(backoff_module.NoBackoff(), 0),
            "health_check_interval": 0,
        }
        if password_file is not None:
            options["password"] = read_password(password_file)
        return redis.Redis.from_url(url, **options)

    def ping(client: Any, deadline: float) -> Observation:
        del deadline  # redis-py's socket timeout bounds each command
        secret = password()
        if secret is not None:
            # Every run, not only at connect: a password changed on the server
            # (requirepass, ACL) leaves connections logged in already logged in, and
            # the check must see that the configured one no longer works.
            client.execute_command("AUTH", *filter(None, (username, secret)))
        started = time.perf_counter()
        if client.ping() is not True:
            raise CheckFailed("PING: unexpected reply")
        round_trip = elapsed_ms(started)
        role = client.info("replication").get("role", "unknown")
        version = client.info("server").get("redis_version", "unknown")
        return Observation(round_trip, "ms", output=f"Redis {version}, role {role}")

    held: HeldConnection[Any] = HeldConnection(connect, lambda c: c.close())

    def observe() -> Observation:
        try:
            return held.use(ping, timeout)
        except redis.RedisError as error:
            reason = describe_redis_error(redis, error)
            raise CheckFailed(without_secret(reason, password_or_none())) from None

    def password_or_none() -> str | None:
        try:
            return password()
        except CheckFailed:
            return url_password

    return HeldProbe(observe, held)


def describe_redis_error(redis: ModuleType, error: Exception) -> str:
    """The kind of a redis-py error and the server's or the OS's reason, no host."""
    if isinstance(error, redis.TimeoutError):
        return "timed out"
    cause = error.__cause__ or error.__context__
    if isinstance(error, redis.ConnectionError) and isinstance(cause, OSError):
        return describe_error(cause)
    if isinstance(error, redis.ConnectionError) and str(error).startswith("Error "):
        return type(error).__name__  # "Error N connecting to HOST:PORT. ..."
    reason = " ".join(str(error).split())
    return f"{type(error).__name__}: {reason}" if reason else type(error).__name__
