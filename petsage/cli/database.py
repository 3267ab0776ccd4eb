"""``petsage db``: the database's schema upgraded, shown, downgraded.

Run as a deploy step, before the release's instances start (or by the gunicorn master,
``PETSAGE_DATABASE_UPGRADE=start``), against the database ``PETSAGE_DATABASE_URL``
names. SQLAlchemy and Alembic load only when one of these commands runs.
"""

import os

import click

from petsage.config import read_setting


def database_url() -> str:
    """The database the settings name."""
    url: str = read_setting("DATABASE_URL", os.environ)
    return url


def failed(url: str, error: Exception) -> click.ClickException:
    """A failure in one line, naming the database without its password."""
    from petsage.db.engine import describe_failure

    return click.ClickException(describe_failure(url, error))


@click.group(name="db")
def database() -> None:
    """The database's schema: upgrade it, show where it stands, downgrade it."""


@database.command()
@click.argument("revision", default="heads")
def upgrade(revision: str) -> None:
    """Apply the migrations up to REVISION (default: all of them).

    Safe when several instances run it at once: each waits for the one before, then
    finds nothing left to do.
    """
    from petsage.db import migrate

    url = database_url()
    try:
        before, after = migrate.upgrade(url, revision)
    except Exception as error:
        raise failed(url, error) from None
    if before == after:
        click.echo(f"petsage: database at {after.describe()}: nothing to upgrade")
    else:
        click.echo(f"petsage: database upgraded to {after.describe()}")


@database.command()
def current() -> None:
    """Show the revision the database's schema is at, and whether it is the head."""
    from petsage.db import migrate

    url = database_url()
    try:
        revisions = migrate.current(url)
    except Exception as error:
        raise failed(url, error) from None
    click.echo(f"petsage: database at {revisions.describe()}")


# -1 is a revision here, not an option.
@database.command(context_settings={"ignore_unknown_options": True})
@click.argument("revision")
def downgrade(revision: str) -> None:
    """Undo migrations down to REVISION: a revision id, -1 for the last one, base
    for all of them (every feature's table is dropped, with its records)."""
    from petsage.db import migrate

    url = database_url()
    try:
        before, after = migrate.downgrade(url, revision)
    except Exception as error:
        raise failed(url, error) from None
    click.echo(
        f"petsage: database downgraded from {before.describe()} to {after.describe()}"
    )
