"""The database under a real gunicorn with 3 workers: what one worker writes, every
worker reads; writers in every worker at once all commit; the master upgrades the
schema before it forks when PETSAGE_DATABASE_UPGRADE=start, and keeps no connection."""

import http.client
import json
import threading
from pathlib import Path

import pytest

from petsage.db import migrate
from tests.support.apps.records import create_records_table
from tests.support.databases import open_files, postgresql_url, sqlite_url
from tests.support.datastores import PostgresServer
from tests.support.gunicorn_process import GunicornFactory, GunicornServer
from tests.support.processes import wait_for_workers, wait_until

pytestmark = pytest.mark.slow  # real gunicorn

APP = "tests.support.apps.records:app"
WORKERS = 3
BOUND = 30.0


def request_on_new_connection(
    server: GunicornServer, method: str, path: str
) -> tuple[int, dict[str, object]]:
    """One request on a connection of its own: any worker may take it."""
    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=BOUND)
    try:
        connection.request(method, path)
        response = connection.getresponse()
        return response.status, json.loads(response.read() or b"{}")
    finally:
        connection.close()


def start(start_gunicorn: GunicornFactory, url: str) -> GunicornServer:
    """The records app in 3 workers over ``url``, upgraded by its master at start."""
    create_records_table(url)
    env = {
        "PETSAGE_DATABASE_URL": url,
        "PETSAGE_DATABASE_UPGRADE": "start",
        "PETSAGE_WORKERS": str(WORKERS),
    }
    server = start_gunicorn(env, app=APP)
    wait_for_workers(server, WORKERS)
    return server


@pytest.fixture(params=["sqlite", "postgresql"])
def database(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """An empty SQLite file, or the module's PostgreSQL."""
    if request.param == "sqlite":
        return sqlite_url(tmp_path)
    server: PostgresServer = request.getfixturevalue("postgres")
    url = postgresql_url(server)
    # The features' tables too, which an earlier test's upgrade made.
    migrate.downgrade(url, "base")
    with server.admin(database="petsage") as connection:
        connection.execute("DROP TABLE IF EXISTS alembic_version, test_records")
    return url


def test_what_one_worker_writes_every_worker_reads(
    start_gunicorn: GunicornFactory, database: str
) -> None:
    server = start(start_gunicorn, database)
    status, written = request_on_new_connection(server, "POST", "/records")
    assert status == 201
    readers: set[object] = set()

    def every_worker_read_it() -> bool:
        status, read = request_on_new_connection(
            server, "GET", f"/records/{written['id']}"
        )
        assert (status, read["writtenBy"]) == (200, written["worker"]), read
        readers.add(read["worker"])
        return len(readers) == WORKERS

    wait_until(every_worker_read_it, BOUND, f"all {WORKERS} workers reading the row")


def test_writers_in_every_worker_at_once_all_commit(
    start_gunicorn: GunicornFactory, database: str
) -> None:
    server = start(start_gunicorn, database)
    statuses: list[int] = []
    writers: set[object] = set()

    def write(count: int) -> None:
        for _ in range(count):
            status, written = request_on_new_connection(server, "POST", "/records")
            statuses.append(status)
            writers.add(written.get("worker"))

    threads = [threading.Thread(target=write, args=(10,)) for _ in range(12)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(BOUND * 4)
    assert statuses == [201] * 120
    # Several workers wrote at once (how the kernel spreads 120 connections
    # over 3 workers is its own affair).
    assert len(writers) >= 2


def test_the_master_upgrades_before_forking_and_keeps_no_connection(
    start_gunicorn: GunicornFactory, tmp_path: Path
) -> None:
    url = sqlite_url(tmp_path)
    server = start(start_gunicorn, url)
    assert migrate.current(url).at_head
    (head,) = migrate.heads()
    assert f"Database schema at {head} (head)" in server.log()
    request_on_new_connection(server, "POST", "/records")  # the workers connect
    database = str(tmp_path / "petsage.sqlite3")
    held = [path for path in open_files(server.process.pid) if database in path]
    assert held == []
