"""PetSage with a database and two routes over it: ``POST /records`` writes a row,
``GET /records/<id>`` reads one; each answer names the worker that served it.

The table is the test's own (``create_records_table``), made before gunicorn starts,
not a migration of PetSage's.
"""

import os

from flask import abort
from sqlalchemy import Integer, MetaData, String, select
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from petsage import create_app
from petsage.db.engine import create_database_engine
from petsage.db.sessions import current_session, init_database


class RecordsBase(DeclarativeBase):
    """The base of this app's table, apart from PetSage's own."""

    metadata = MetaData()


class Record(RecordsBase):
    """One row a request wrote."""

    __tablename__ = "test_records"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    written_by: Mapped[int] = mapped_column(Integer)
    text: Mapped[str] = mapped_column(String(200))


def create_records_table(url: str) -> None:
    """Make this app's table in the database at ``url``."""
    engine = create_database_engine(url, pool_size=1)
    try:
        RecordsBase.metadata.create_all(engine)
    finally:
        engine.dispose()


app = create_app()
init_database(app)


@app.post("/records")
def write() -> tuple[dict[str, int], int]:
    """Write a row; answer its id and the worker's pid."""
    session = current_session()
    record = Record(written_by=os.getpid(), text="written")
    session.add(record)
    session.commit()
    return {"id": record.id, "worker": os.getpid()}, 201


@app.get("/records/<int:record_id>")
def read(record_id: int) -> dict[str, int | str]:
    """Read a row; answer what it holds and the worker's pid."""
    record = current_session().scalar(select(Record).where(Record.id == record_id))
    if record is None:
        abort(404)
    return {"text": record.text, "writtenBy": record.written_by, "worker": os.getpid()}
