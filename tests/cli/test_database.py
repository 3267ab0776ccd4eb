"""``petsage db``: upgrade, current and downgrade, run as an operator runs them."""

from pathlib import Path

from petsage.db import migrate
from tests.support.databases import sqlite_url
from tests.support.instances import petsage


def test_upgrade_current_and_downgrade_say_where_the_schema_stands(
    tmp_path: Path,
) -> None:
    env = {"PETSAGE_DATABASE_URL": sqlite_url(tmp_path)}
    # The head: the base's revision, or the last a feature chained on it.
    (head,) = migrate.heads()
    steps = [
        (("current",), f"petsage: database at none (empty); head is {head}\n"),
        (("upgrade",), f"petsage: database upgraded to {head} (head)\n"),
        (("upgrade",), f"petsage: database at {head} (head): nothing to upgrade\n"),
        (
            ("downgrade", "base"),
            f"petsage: database downgraded from {head} (head)"
            f" to none (empty); head is {head}\n",
        ),
    ]
    for arguments, said in steps:
        result = petsage("db", *arguments, env=env)
        assert (result.returncode, result.stdout) == (0, said), result.stderr


def test_a_database_it_cannot_reach_fails_in_one_line_without_the_password() -> None:
    env = {"PETSAGE_DATABASE_URL": "postgresql://petsage:s3cret@127.0.0.1:9/petsage"}
    result = petsage("db", "upgrade", env=env)
    assert result.returncode == 1
    [line] = result.stderr.splitlines()
    assert line.startswith("Error: postgresql+psycopg://petsage:***@127.0.0.1:9/")
    assert "s3cret" not in result.stderr


def test_an_unknown_revision_fails_naming_it(tmp_path: Path) -> None:
    env = {"PETSAGE_DATABASE_URL": sqlite_url(tmp_path)}
    result = petsage("db", "downgrade", "nope", env=env)
    assert result.returncode == 1
    assert "Can't locate revision identified by 'nope'" in result.stderr
