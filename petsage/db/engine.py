"""One SQLAlchemy engine per process and database, made when first asked for.

A process forked from one that had an engine (a gunicorn worker from its master)
never uses the parent's connections: the engine it inherited is dropped without
closing them (they are the parent's) and a new one made. The master also disposes of
its engines before it forks (``gunicorn.conf.py``'s ``pre_fork``).

SQLite is set up so that several processes write one file safely: WAL (readers never
wait for the writer), a busy timeout (a writer waits for the lock instead of failing
at once), foreign keys enforced, and every transaction begun ``BEGIN IMMEDIATE``, as
Django and Rails do, so that a transaction takes the write lock at its start and
waits for it there: one that read first and wrote later could fail at once with
SQLITE_BUSY, whatever the timeout. PostgreSQL's pool is pinged before use, so a
restarted server costs no request.
"""

import os
import threading
from collections.abc import Mapping
from typing import Any

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import URL, make_url

# How long an SQLite writer waits for another's transaction before failing.
SQLITE_BUSY_TIMEOUT_MS = 5000


def is_sqlite(url: str | URL) -> bool:
    """Whether ``url`` names an SQLite database."""
    return make_url(url).get_backend_name() == "sqlite"


def shown_url(url: str | URL) -> str:
    """``url`` fit to show: its password hidden."""
    return make_url(url).render_as_string(hide_password=True)


def describe_failure(url: str | URL, error: Exception) -> str:
    """A database error in one line, naming the database without its password."""
    reason = " ".join(str(error).split()) or type(error).__name__
    # SQLAlchemy ends its messages with a link to its documentation.
    reason = reason.partition(" (Background on this error at:")[0]
    return f"{shown_url(url)}: {reason}"


def create_database_engine(
    url: str, pool_size: int, pragmas: Mapping[str, Any] | None = None
) -> Engine:
    """An engine for ``url`` with at most ``pool_size`` connections; for SQLite,
    ``pragmas`` set on each new connection after PetSage's own."""
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite":
        return create_engine(
            parsed, pool_size=pool_size, max_overflow=0, pool_pre_ping=True
        )
    if parsed.database:
        directory = os.path.dirname(os.path.abspath(parsed.database))
        os.makedirs(directory, mode=0o700, exist_ok=True)
    engine = create_engine(parsed, pool_size=pool_size, max_overflow=0)
    settings = {
        "journal_mode": "WAL",
        "busy_timeout": SQLITE_BUSY_TIMEOUT_MS,
        "foreign_keys": "ON",
        # Safe with WAL: a power loss may lose the last commits, never the file.
        "synchronous": "NORMAL",
        **(pragmas or {}),
    }

    @event.listens_for(engine, "connect")
    def set_up(dbapi_connection: Any, _record: Any) -> None:
        # The driver's own transaction handling off: the "begin" event below
        # begins every transaction itself.
        dbapi_connection.isolation_level = None
        for name, value in settings.items():
            dbapi_connection.execute(f"PRAGMA {name} = {value}")

    @event.listens_for(engine, "begin")
    def begin_immediate(connection: Any) -> None:
        connection.exec_driver_sql("BEGIN IMMEDIATE")

    return engine


class ProcessEngines:
    """The engines of this process, one per database URL and pool size."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._engines: dict[tuple[str, int], Engine] = {}
        self._owner = os.getpid()

    def get(self, url: str, pool_size: int) -> Engine:
        """This process's engine for ``url``, made now if it has none."""
        with self._lock:
            if self._owner != os.getpid():
                # Forked: the inherited connections are the parent's to close.
                for inherited in self._engines.values():
                    inherited.dispose(close=False)
                self._engines, self._owner = {}, os.getpid()
            key = (url, pool_size)
            if key not in self._engines:
                self._engines[key] = create_database_engine(url, pool_size)
            return self._engines[key]

    def dispose(self) -> None:
        """Close every pooled connection and forget the engines (before a fork)."""
        with self._lock:
            engines, self._engines = self._engines, {}
            if self._owner == os.getpid():
                for engine in engines.values():
                    engine.dispose()


ENGINES = ProcessEngines()


def engine_for(url: str, pool_size: int) -> Engine:
    """This process's engine for the database at ``url``."""
    return ENGINES.get(url, pool_size)


def dispose_engines() -> None:
    """Close this process's database connections; the next use opens new ones."""
    ENGINES.dispose()
