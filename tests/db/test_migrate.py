"""The schema's migrations: upgrade, current and downgrade, and two upgrades at once,
on SQLite and on a real PostgreSQL (tests/support/datastores.py)."""

from collections.abc import Iterator
from pathlib import Path

import pytest
from alembic import command
from alembic.script import ScriptDirectory
from sqlalchemy import create_engine, inspect

from petsage.db import migrate
from petsage.db.migrate import alembic_config, locked_connection
from tests.support.databases import (
    postgresql_url,
    reading,
    sqlite_url,
    start_command,
    waiting_for_advisory_lock,
)
from tests.support.datastores import PostgresServer
from tests.support.processes import wait_until

# Far longer than an upgrade takes on a loaded machine: a bound, not a measurement.
BOUND = 60.0
BASE = "0001"


def head() -> str:
    """The migrations' one head: the base, or the last revision a feature chained."""
    (only,) = migrate.heads()
    return only


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.slow)])
def database(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """An empty database: an SQLite file, or PostgreSQL's (its schema reset after)."""
    if request.param == "sqlite":
        yield sqlite_url(tmp_path)
        return
    server: PostgresServer = request.getfixturevalue("postgres")
    url = postgresql_url(server)
    yield url
    migrate.downgrade(url, "base")
    with server.admin(database="petsage") as connection:
        connection.execute("DROP TABLE IF EXISTS alembic_version")


def table_names(url: str) -> set[str]:
    """The tables of the database at ``url``."""
    engine = create_engine(url)
    try:
        return set(inspect(engine).get_table_names())
    finally:
        engine.dispose()


def test_an_empty_database_is_upgraded_to_the_head(database: str) -> None:
    assert migrate.current(database).current == ()
    before, after = migrate.upgrade(database)
    assert (before.current, after.current) == ((), (head(),))
    assert after.at_head and after.describe() == f"{head()} (head)"
    assert "alembic_version" in table_names(database)


def test_an_upgrade_at_the_head_does_nothing(database: str) -> None:
    migrate.upgrade(database)
    before, after = migrate.upgrade(database)
    assert before == after and after.at_head


def test_a_downgrade_to_base_undoes_every_revision(database: str) -> None:
    migrate.upgrade(database)
    before, after = migrate.downgrade(database, "base")
    assert (before.current, after.current) == ((head(),), ())
    assert not after.at_head
    assert migrate.current(database).describe() == f"none (empty); head is {head()}"


def test_every_revision_chains_on_the_base_into_one_head() -> None:
    script = ScriptDirectory.from_config(alembic_config())
    assert len(migrate.heads()) == 1
    assert script.get_bases() == [BASE]


def test_an_upgrade_waits_for_one_under_way_then_finds_nothing_to_do(
    database: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    # The test's own upgrade holds the lock while the command starts: the command
    # must wait for it, then find the schema at its head, and neither may fail.
    with locked_connection(database) as connection:
        command.upgrade(alembic_config(connection), "heads")
        other = start_command(database, "upgrade")
        if database.startswith("sqlite"):
            held = tmp_path / "petsage.sqlite3"
            waiting = lambda: reading(other.pid, held)  # noqa: E731
        else:
            server = request.getfixturevalue("postgres")
            waiting = lambda: waiting_for_advisory_lock(server)  # noqa: E731
        wait_until(waiting, BOUND, "the command waiting for the migration lock")
        assert other.poll() is None
    output, _ = other.communicate(timeout=BOUND)
    assert other.returncode == 0, output
    assert output == f"petsage: database at {head()} (head): nothing to upgrade\n"


def test_two_upgrade_commands_at_once_both_succeed(database: str) -> None:
    commands = [start_command(database, "upgrade") for _ in range(2)]
    outputs = sorted(process.communicate(timeout=BOUND)[0] for process in commands)
    assert [process.returncode for process in commands] == [0, 0], outputs
    assert outputs == [
        f"petsage: database at {head()} (head): nothing to upgrade\n",
        f"petsage: database upgraded to {head()} (head)\n",
    ]
