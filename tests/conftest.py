"""Fixtures: the app, its test client and CLI runner, real gunicorn on 127.0.0.1."""

import os
import shutil
import tempfile
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient, FlaskCliRunner

import petsage.app
from petsage import create_app
from petsage.db import migrate
from petsage.db.engine import dispose_engines
from petsage.db.sessions import EXTENSION as DATABASE_EXTENSION
from petsage.health import health_of
from tests.containers.figures import FIGURES, figure_lines
from tests.support.databases import sqlite_url, upgraded_sqlite_url
from tests.support.datastores import (
    PETSAGE_PASSWORD,
    PostgresServer,
    RedisServer,
    running_postgres,
    running_redis,
)
from tests.support.fault_record import FaultRecorder as FaultRecorder
from tests.support.fault_record import FaultRow, record_fault
from tests.support.gunicorn_process import GunicornFactory, GunicornServer

DATABASE_VARIABLE = "PETSAGE_DATABASE_URL"
TEST_DATABASE = pytest.StashKey[tuple[Path, str | None]]()


def pytest_configure(config: pytest.Config) -> None:
    """Give every app a test makes a database of this test process's own, its
    schema at the head (a fixture's app gets one of its own test's): never the
    installation's file, which the developer's instance and other runs share."""
    directory = Path(tempfile.mkdtemp(prefix="petsage-test-database-"))
    config.stash[TEST_DATABASE] = (directory, os.environ.get(DATABASE_VARIABLE))
    os.environ[DATABASE_VARIABLE] = upgraded_sqlite_url(directory)


def pytest_unconfigure(config: pytest.Config) -> None:
    """Put the environment back and remove the process's database."""
    directory, before = config.stash.get(TEST_DATABASE, (None, None))
    if directory is None:
        return
    dispose_engines()
    if before is None:
        os.environ.pop(DATABASE_VARIABLE, None)
    else:
        os.environ[DATABASE_VARIABLE] = before
    shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture
def app(tmp_path: Path) -> Iterator[Flask]:
    """A PetSage app configured for tests, with a database of its own (an SQLite file
    upgraded to the head when a feature keeps records); its health refresher stops and
    its connections close after."""
    url = sqlite_url(tmp_path)
    app = create_app(
        {"TESTING": True, "DRAIN_FILE": str(tmp_path / "drain"), "DATABASE_URL": url}
    )
    keeps_records = DATABASE_EXTENSION in app.extensions
    if keeps_records:
        migrate.upgrade(url)
    yield app
    health_of(app).refresher.stop()
    if keeps_records:
        dispose_engines()


@pytest.fixture
def without_features(monkeypatch: pytest.MonkeyPatch) -> None:
    """Apps the test makes serve none of petsage/features: for tests of what the
    service itself answers (its health items), which a feature's own check (a
    resource's database) would join."""
    monkeypatch.setattr(petsage.app, "FEATURES", ())


@pytest.fixture
def client(app: Flask) -> FlaskClient:
    """A test client for the app."""
    return app.test_client()


@pytest.fixture
def runner(app: Flask) -> FlaskCliRunner:
    """A runner for the app's CLI commands."""
    return app.test_cli_runner()


@pytest.fixture
def start_gunicorn() -> Iterator[GunicornFactory]:
    """Start real gunicorn servers with the project's config; all are stopped after."""
    servers: list[GunicornServer] = []

    def start(
        env: dict[str, str] | None = None,
        app: str | None = None,
        args: Sequence[str] = (),
        preexec_fn: Callable[[], object] | None = None,
        output: int | None = None,
    ) -> GunicornServer:
        server = GunicornServer.start(env or {}, app, args, preexec_fn, output)
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()
        server.log_path.unlink(missing_ok=True)
        for suffix in (".sqlite3", ".sqlite3-wal", ".sqlite3-shm"):
            Path(f"{server.log_path}{suffix}").unlink(missing_ok=True)


@pytest.fixture
def gunicorn(start_gunicorn: GunicornFactory) -> GunicornServer:
    """One real gunicorn serving PetSage on a free 127.0.0.1 port."""
    return start_gunicorn()


@pytest.fixture(scope="module")
def postgres_server() -> Iterator[PostgresServer]:
    """A PostgreSQL of the test module's own (tests/support/datastores.py)."""
    with running_postgres() as server:
        yield server


@pytest.fixture(scope="module")
def redis_server() -> Iterator[RedisServer]:
    """A Redis of the test module's own (tests/support/datastores.py)."""
    with running_redis() as server:
        yield server


@pytest.fixture
def postgres(postgres_server: PostgresServer) -> Iterator[PostgresServer]:
    """The module's PostgreSQL, running and answering however a test left it, with
    PetSage's own password."""
    postgres_server.ensure_running()
    yield postgres_server
    postgres_server.ensure_running()
    postgres_server.change_password(PETSAGE_PASSWORD)


@pytest.fixture
def redis(redis_server: RedisServer) -> Iterator[RedisServer]:
    """The module's Redis, running, with its own password, however a test left it."""
    redis_server.ensure_running()
    yield redis_server
    redis_server.ensure_running()
    with redis_server.admin() as client:
        client.config_set("requirepass", PETSAGE_PASSWORD)


@pytest.fixture
def fault_record(request: pytest.FixtureRequest) -> FaultRecorder:
    """Record a row of the fault record for this test (``tests.support.fault_record``).

    Call it with the fields of ``FaultRow`` but ``test``, which it fills in.
    """

    def record(**fields: object) -> None:
        record_fault(FaultRow(test=request.node.nodeid, **fields))  # type: ignore[arg-type]

    return record


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Start the tests marked ``long`` first: pytest-xdist hands tests out in order,
    and one that takes minutes, handed out last, would keep the whole run waiting."""
    items.sort(key=lambda item: item.get_closest_marker("long") is None)


def pytest_sessionfinish(session: pytest.Session) -> None:
    """In a pytest-xdist worker, hand the container figures to the controller."""
    workeroutput = getattr(session.config, "workeroutput", None)
    if workeroutput is not None:
        workeroutput["container_figures"] = dict(FIGURES)


@pytest.hookimpl(optionalhook=True)
def pytest_testnodedown(node: Any, error: object) -> None:
    """In the pytest-xdist controller, keep the figures a worker measured."""
    FIGURES.update(getattr(node, "workeroutput", {}).get("container_figures", {}))


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """Print the figures the container tests measured (tests/containers/figures.py)."""
    lines = figure_lines()
    if lines:
        terminalreporter.write_sep("-", "container figures")
        for line in lines:
            terminalreporter.write_line(line)
