"""``Base``: the declarative base of every table PetSage keeps.

Constraints are named by convention, so that a migration can name the one it alters
or drops, on SQLite (whose batch migrations rebuild a table) as on PostgreSQL.
"""

from sqlalchemy import MetaData
from sqlalchemy.orm import DeclarativeBase

NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    """The base of every feature's tables; their schema comes from migrations."""

    metadata = MetaData(naming_convention=NAMING_CONVENTION)
