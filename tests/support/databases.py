"""The database's tests: its URLs, the schema's migrations run by the ``petsage db``
command, and a command held up by the migration lock."""

import os
import subprocess
from pathlib import Path

from tests.support.datastores import PostgresServer
from tests.support.instances import PETSAGE


def sqlite_url(directory: Path) -> str:
    """A database file of the test's own, in ``directory``."""
    return f"sqlite:///{directory}/petsage.sqlite3"


def postgresql_url(server: PostgresServer) -> str:
    """PetSage's database on ``server``, as PETSAGE_DATABASE_URL names it."""
    return server.url().replace("postgresql://", "postgresql+psycopg://", 1)


def start_command(url: str, *args: str) -> subprocess.Popen[str]:
    """``petsage db ARGS`` started against the database at ``url``."""
    return subprocess.Popen(
        [str(PETSAGE), "db", *args],
        env={**os.environ, "PETSAGE_DATABASE_URL": url},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def open_files(pid: int) -> set[str]:
    """The paths of the files process ``pid`` holds open."""
    found: set[str] = set()
    try:
        descriptors = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return found
    for descriptor in descriptors:
        try:
            found.add(os.readlink(f"/proc/{pid}/fd/{descriptor}"))
        except OSError:
            continue
    return found


def reading(pid: int, path: Path) -> bool:
    """Whether process ``pid`` has the SQLite database ``path`` open in WAL mode (the
    file and its -shm index): it has connected and set it up."""
    return {str(path), f"{path}-shm"} <= open_files(pid)


def waiting_for_advisory_lock(server: PostgresServer) -> bool:
    """Whether a session of ``server`` waits for an advisory lock."""
    rows = server.query(
        "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted"
    )
    return int(rows[0][0]) > 0


def upgraded_sqlite_url(directory: Path) -> str:
    """A database file in ``directory`` with the schema at its head: what an app
    made in a test reads and writes when the test gives it no database of its own."""
    from petsage.db import migrate

    url = sqlite_url(directory)
    migrate.upgrade(url)
    return url
