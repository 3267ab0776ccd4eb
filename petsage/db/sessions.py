"""An app's database: a session per request, removed when the request ends, and the
database's health check.

A feature that keeps records gives the app its database from its blueprint
(``bp.record_once(lambda state: init_database(state.app))``); an app none of whose
features keeps records has no database check and opens no connection. Nothing is
connected when the app is made: the engine, this process's (``petsage.db.engine``),
is made at the first request that uses a session.
"""

from flask import Flask, current_app
from sqlalchemy import Engine
from sqlalchemy.orm import Session, scoped_session, sessionmaker

from petsage.db.engine import engine_for
from petsage.health import register_check
from petsage.health.dependencies import database_check

EXTENSION = "petsage.db"


class Database:
    """The database at ``url``, as one app uses it: sessions, one per thread (a
    gthread worker serves one request per thread), over this process's engine."""

    def __init__(self, url: str, pool_size: int) -> None:
        self.url = url
        self.pool_size = pool_size
        self._sessions = scoped_session(sessionmaker())

    @property
    def engine(self) -> Engine:
        """This process's engine for the database, made when first asked for."""
        return engine_for(self.url, self.pool_size)

    def session(self) -> Session:
        """The session of the request this thread serves, begun when first asked."""
        if self._sessions.registry.has():
            return self._sessions()
        return self._sessions(bind=self.engine)

    def remove(self, _error: BaseException | None = None) -> None:
        """End this thread's session, if any: rolled back unless committed, and its
        connection back in the pool."""
        self._sessions.remove()


def init_database(app: Flask) -> Database:
    """Give ``app`` its database (``PETSAGE_DATABASE_URL``) and the database's check,
    once however often it is asked."""
    database: Database | None = app.extensions.get(EXTENSION)
    if database is not None:
        return database
    config = app.config
    # One connection per thread: a worker's threads never wait for one another's.
    database = Database(config["DATABASE_URL"], config["THREADS"])
    app.extensions[EXTENSION] = database
    app.teardown_appcontext(database.remove)
    check = database_check(
        config["DATABASE_URL"], config["DATABASE_CRITICAL"], config["CHECK_TIMEOUT"]
    )
    register_check(app, check)
    return database


def database_of(app: Flask) -> Database:
    """The database ``init_database`` gave ``app``."""
    database: Database = app.extensions[EXTENSION]
    return database


def current_session() -> Session:
    """The session of the request being served, in the current app's database."""
    return database_of(current_app).session()
