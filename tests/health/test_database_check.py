"""The database's check: an SQLite file opened and read, or PostgreSQL's own check (a
new login each run); optional for readiness unless PETSAGE_DATABASE_CRITICAL says."""

from pathlib import Path

import pytest

from petsage import create_app
from petsage.config import Refused
from petsage.db import migrate
from petsage.db.sessions import init_database
from petsage.health import CheckFailed, health_of
from petsage.health.dependencies import DATABASE, database_check, parse_dependencies
from tests.support.databases import postgresql_url, sqlite_url
from tests.support.datastores import PostgresServer

TIMEOUT = 10.0


def test_an_upgraded_sqlite_file_passes(tmp_path: Path) -> None:
    url = sqlite_url(tmp_path)
    migrate.upgrade(url)
    observation = database_check(url, critical=False, timeout=TIMEOUT).run()
    assert observation.status == "pass" and observation.unit == "ms"
    assert observation.output.startswith("SQLite 3.")


def test_a_missing_sqlite_file_fails_and_is_not_made(tmp_path: Path) -> None:
    check = database_check(sqlite_url(tmp_path), critical=False, timeout=TIMEOUT)
    with pytest.raises(CheckFailed, match="unable to open database file"):
        check.run()
    assert list(tmp_path.iterdir()) == []


def test_a_file_that_is_no_database_fails(tmp_path: Path) -> None:
    (tmp_path / "petsage.sqlite3").write_bytes(b"not a database" * 100)
    check = database_check(sqlite_url(tmp_path), critical=False, timeout=TIMEOUT)
    with pytest.raises(CheckFailed, match="file is not a database"):
        check.run()


def test_the_check_is_an_optional_datastore_unless_critical(tmp_path: Path) -> None:
    url = sqlite_url(tmp_path)
    check = database_check(url, critical=False, timeout=TIMEOUT)
    assert (check.name, check.component_type, check.critical) == (
        DATABASE,
        "datastore",
        False,
    )
    assert check.target == f"sqlite:///{tmp_path}/petsage.sqlite3"
    app = create_app({"DATABASE_URL": url, "DATABASE_CRITICAL": True})
    init_database(app)
    init_database(app)
    [critical] = [c for c in health_of(app).checks if c.name == DATABASE]
    assert critical.critical
    health_of(app).refresher.stop()


def test_an_app_without_a_database_has_no_database_check(
    without_features: None,
) -> None:
    app = create_app({"TESTING": True})
    assert DATABASE not in {check.name for check in health_of(app).checks}
    health_of(app).refresher.stop()


def test_no_dependency_may_take_the_databases_name() -> None:
    with pytest.raises(Refused, match="PetSage's own health items"):
        parse_dependencies("database=tcp://db:5432")


@pytest.mark.slow
def test_postgresql_logs_in_anew_each_run_and_keeps_no_connection(
    postgres: PostgresServer,
) -> None:
    check = database_check(postgresql_url(postgres), critical=False, timeout=TIMEOUT)
    assert check.target == f"postgresql://127.0.0.1:{postgres.port}/petsage"
    before = postgres.logins()
    for _ in range(3):
        assert check.run().output.endswith(", primary")
        assert postgres.petsage_backends() == []
    assert postgres.logins() - before == 3


@pytest.mark.slow
def test_postgresql_failing_names_no_password(postgres: PostgresServer) -> None:
    url = postgresql_url(postgres).replace("s3cret", "wrong")
    with pytest.raises(CheckFailed, match="password authentication failed") as error:
        database_check(url, critical=False, timeout=TIMEOUT).run()
    assert "wrong" not in str(error.value)
