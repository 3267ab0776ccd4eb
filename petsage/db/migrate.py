"""The schema's migrations run: ``upgrade``, ``downgrade``, ``current``.

Each runs over a connection of its own engine (disposed at its end, so that nothing
it opened outlives it, in the gunicorn master least of all), inside one transaction
that holds a lock for the whole run: PostgreSQL's ``pg_advisory_xact_lock``, SQLite's
write lock (``BEGIN IMMEDIATE``). A second instance upgrading at the same time waits
for the first, then finds the schema at its head and does nothing. Both databases
change their schema transactionally: a migration that fails leaves nothing half done.

On SQLite the run's connection enforces no foreign keys while it runs (a batch
migration drops and rebuilds a table, which would cascade), and checks them before it
commits, as SQLite's own procedure for schema changes says.
"""

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, text

from petsage.db.engine import create_database_engine, is_sqlite

MIGRATIONS = Path(__file__).resolve().parent / "migrations"
# The key of PetSage's PostgreSQL advisory lock: any 64-bit number no other
# application of the database uses ("PetSage" in ASCII).
LOCK_KEY = 0x50657453616765
# How long a run waits for another instance's run before it fails.
LOCK_WAIT_SECONDS = 600


class MigrationError(Exception):
    """A migration could not run; its message is one line, with no password."""


@dataclass(frozen=True)
class Revisions:
    """Where a database's schema stands: its revisions and the migrations' heads."""

    current: tuple[str, ...]
    heads: tuple[str, ...]

    @property
    def at_head(self) -> bool:
        """Whether every migration PetSage has is applied."""
        return set(self.current) == set(self.heads)

    def describe(self) -> str:
        """One line: the current revision, and whether it is the head."""
        shown = ", ".join(self.current) or "none (empty)"
        if self.at_head:
            return f"{shown} (head)"
        return f"{shown}; head is {', '.join(self.heads)}"


def alembic_config(connection: Connection | None = None) -> Config:
    """Alembic's configuration, with no alembic.ini: the migrations in the package,
    run over ``connection``."""
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    # A revision's file name must be a module name mypy and import-linter accept.
    config.set_main_option("file_template", "r%%(rev)s_%%(slug)s")
    config.attributes["connection"] = connection
    return config


def heads() -> tuple[str, ...]:
    """The heads of the migrations PetSage has (one, unless branched)."""
    return tuple(ScriptDirectory.from_config(alembic_config()).get_heads())


@contextmanager
def locked_connection(url: str) -> Iterator[Connection]:
    """A connection of an engine of its own to ``url``, in a transaction that holds
    the migration lock; committed at the end of the block, rolled back on error."""
    sqlite = is_sqlite(url)
    pragmas = (
        {"busy_timeout": LOCK_WAIT_SECONDS * 1000, "foreign_keys": "OFF"}
        if sqlite
        else None
    )
    engine = create_database_engine(url, pool_size=1, pragmas=pragmas)
    try:
        with engine.connect() as connection, connection.begin():
            if not sqlite:
                connection.execute(
                    text(f"SET LOCAL lock_timeout = '{LOCK_WAIT_SECONDS}s'")
                )
                connection.execute(
                    text("SELECT pg_advisory_xact_lock(:key)"), {"key": LOCK_KEY}
                )
            yield connection
            if sqlite:
                broken = connection.exec_driver_sql("PRAGMA foreign_key_check").all()
                if broken:
                    raise MigrationError(
                        f"the migration leaves {len(broken)} rows whose foreign key"
                        " refers to no row: rolled back"
                    )
    finally:
        engine.dispose()


def revisions_of(connection: Connection) -> Revisions:
    """Where the schema of ``connection``'s database stands."""
    current = MigrationContext.configure(connection).get_current_heads()
    return Revisions(tuple(current), heads())


def upgrade(url: str, revision: str = "heads") -> tuple[Revisions, Revisions]:
    """Apply the migrations up to ``revision``; the schema before and after."""
    with locked_connection(url) as connection:
        before = revisions_of(connection)
        command.upgrade(alembic_config(connection), revision)
        return before, revisions_of(connection)


def downgrade(url: str, revision: str) -> tuple[Revisions, Revisions]:
    """Undo the migrations down to ``revision`` (``base``: all of them, ``-1``: the
    last); the schema before and after."""
    with locked_connection(url) as connection:
        before = revisions_of(connection)
        command.downgrade(alembic_config(connection), revision)
        return before, revisions_of(connection)


def current(url: str) -> Revisions:
    """Where the schema of the database at ``url`` stands."""
    engine = create_database_engine(url, pool_size=1)
    try:
        with engine.connect() as connection:
            return revisions_of(connection)
    finally:
        engine.dispose()
