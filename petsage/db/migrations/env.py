"""Alembic's environment: run the migrations over the connection ``petsage.db.migrate``
gives, inside its transaction and under its lock.

Never run on its own (there is no alembic.ini): ``petsage db upgrade`` runs it.
"""

from alembic import context
from sqlalchemy import Connection

from petsage.db.model import Base


def run_migrations(connection: Connection) -> None:
    """Run what the command asked for over ``connection``, already in a transaction."""
    context.configure(
        connection=connection,
        target_metadata=Base.metadata,
        # SQLite alters little in place: a batch migration rebuilds the table.
        render_as_batch=connection.dialect.name == "sqlite",
    )
    with context.begin_transaction():
        context.run_migrations()


run_migrations(context.config.attributes["connection"])
