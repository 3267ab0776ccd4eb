"""One engine per process, made when first used; SQLite set up for several writers."""

import os
import threading
from pathlib import Path

import pytest
from sqlalchemy import Engine, text

from petsage import create_app
from petsage.db.engine import (
    ENGINES,
    SQLITE_BUSY_TIMEOUT_MS,
    create_database_engine,
    engine_for,
)


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    """A database file of the test's own, in a directory not made yet."""
    return f"sqlite:///{tmp_path}/data/petsage.sqlite3"


def pragma(engine: Engine, name: str) -> object:
    """The value of SQLite's ``PRAGMA name`` on a connection of ``engine``."""
    with engine.connect() as connection:
        return connection.exec_driver_sql(f"PRAGMA {name}").scalar()


def test_sqlite_connections_use_wal_a_busy_timeout_and_foreign_keys(
    sqlite_url: str,
) -> None:
    engine = create_database_engine(sqlite_url, pool_size=2)
    assert pragma(engine, "journal_mode") == "wal"
    assert pragma(engine, "busy_timeout") == SQLITE_BUSY_TIMEOUT_MS
    assert pragma(engine, "foreign_keys") == 1
    engine.dispose()


def test_the_file_and_its_directory_are_made_when_first_connected(
    sqlite_url: str, tmp_path: Path
) -> None:
    engine = create_database_engine(sqlite_url, pool_size=1)
    assert not (tmp_path / "data" / "petsage.sqlite3").exists()
    with engine.connect():
        assert (tmp_path / "data" / "petsage.sqlite3").is_file()
    engine.dispose()


def test_a_transaction_takes_the_write_lock_when_it_begins(sqlite_url: str) -> None:
    # BEGIN IMMEDIATE: a second transaction waits at its start, so one that reads
    # first and writes later never fails at once with "database is locked".
    engine = create_database_engine(sqlite_url, pool_size=2)
    other = create_database_engine(sqlite_url, pool_size=1, pragmas={"busy_timeout": 0})
    with engine.begin() as connection:
        connection.execute(text("SELECT 1"))
        with pytest.raises(Exception, match="database is locked"):
            other.connect().begin()
    other.dispose()
    engine.dispose()


def test_writers_on_many_threads_all_commit(sqlite_url: str) -> None:
    engine = create_database_engine(sqlite_url, pool_size=8)
    with engine.begin() as connection:
        connection.execute(text("CREATE TABLE counts (n INTEGER)"))
    errors: list[Exception] = []

    def write() -> None:
        try:
            for _ in range(20):
                with engine.begin() as connection:
                    before = connection.execute(text("SELECT count(*) FROM counts"))
                    connection.execute(
                        text("INSERT INTO counts VALUES (:n)"), {"n": before.scalar()}
                    )
        except Exception as error:
            errors.append(error)

    threads = [threading.Thread(target=write) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    with engine.connect() as connection:
        rows = connection.execute(text("SELECT count(DISTINCT n) FROM counts"))
        assert (errors, rows.scalar()) == ([], 160)
    engine.dispose()


def test_a_process_has_one_engine_per_database(sqlite_url: str) -> None:
    engine = engine_for(sqlite_url, 2)
    assert engine_for(sqlite_url, 2) is engine
    ENGINES.dispose()
    assert engine_for(sqlite_url, 2) is not engine
    ENGINES.dispose()


def test_a_forked_child_never_uses_its_parents_engine(sqlite_url: str) -> None:
    parent = engine_for(sqlite_url, 1)
    with parent.connect() as connection:
        connection.execute(text("SELECT 1"))
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: answers whether it got an engine of its own
        os.write(write, b"own" if engine_for(sqlite_url, 1) is not parent else b"x")
        os._exit(0)
    os.waitpid(pid, 0)
    assert os.read(read, 3) == b"own"
    assert engine_for(sqlite_url, 1) is parent
    ENGINES.dispose()


def test_making_the_app_connects_to_nothing(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/never/petsage.sqlite3"
    app = create_app({"TESTING": True, "DATABASE_URL": url})
    assert not (tmp_path / "never").exists()
    assert app.config["DATABASE_URL"] == url
