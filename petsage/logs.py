"""One logging setup for PetSage and gunicorn: JSON lines on stdout, or text.

gunicorn applies it (``logconfig_dict`` in ``gunicorn.conf.py``) in the master, and its
workers inherit it, so Flask's, PetSage's and gunicorn's records all come out alike.
"""

import logging
from typing import Any

from flask import has_request_context, request
from pythonjsonlogger.json import JsonFormatter

from petsage.request_ids import ENVIRON_KEY, HEADER

ACCESS_LOGGER = "gunicorn.access"
# gunicorn's access line, as text; JSON lines carry the same facts as fields too.
ACCESS_LOG_FORMAT = '%(h)s "%(r)s" %(s)s %(B)s %(M)sms id=%({x-request-id}o)s "%(a)s"'
RESPONSE_ID_ATOM = "{" + HEADER.lower() + "}o"


class RequestContextFilter(logging.Filter):
    """Adds the request id, method and path to records logged inside a request."""

    def filter(self, record: logging.LogRecord) -> bool:
        """Add the fields; keep every record."""
        if has_request_context():
            environ = request.environ
            record.request_id = environ.get(ENVIRON_KEY)
            record.method = environ.get("REQUEST_METHOD")
            record.path = environ.get("PATH_INFO")
        return True


class AccessFieldsFilter(logging.Filter):
    """Lifts gunicorn's access-log atoms into fields of the record."""

    def filter(self, record: logging.LogRecord) -> bool:
        """Add the fields to access records; keep every record."""
        atoms = record.args
        if record.name == ACCESS_LOGGER and isinstance(atoms, dict):
            microseconds = atoms.get("D")
            status = str(atoms.get("s"))
            record.request_id = atoms.get(RESPONSE_ID_ATOM)
            record.method = atoms.get("m")
            record.path = atoms.get("U")
            record.query = atoms.get("q") or None
            record.status = int(status) if status.isdigit() else status
            record.duration_ms = (
                microseconds / 1000 if isinstance(microseconds, int) else None
            )
            record.remote_addr = atoms.get("h")
            record.user_agent = atoms.get("a")
            record.response_bytes = atoms.get("B")
        return True


def json_formatter() -> logging.Formatter:
    """JSON lines: timestamp, level, logger, message, then the record's fields."""
    return JsonFormatter(
        "%(levelname)s %(name)s %(message)s",
        rename_fields={"levelname": "level", "name": "logger"},
        timestamp=True,
    )


def logging_config(log_format: str, level: str) -> dict[str, Any]:
    """The ``logging.config.dictConfig`` for PetSage and gunicorn."""
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "filters": {
            "request": {"()": RequestContextFilter},
            "access": {"()": AccessFieldsFilter},
        },
        "formatters": {
            "json": {"()": json_formatter},
            "text": {"format": "%(asctime)s %(levelname)s %(name)s: %(message)s"},
        },
        "handlers": {
            "stdout": {
                "class": "logging.StreamHandler",
                "stream": "ext://sys.stdout",
                "formatter": log_format,
                "filters": ["request", "access"],
            }
        },
        "loggers": {
            "petsage": {"level": level, "handlers": ["stdout"], "propagate": False},
            "gunicorn.error": {
                "level": level,
                "handlers": ["stdout"],
                "propagate": False,
            },
            ACCESS_LOGGER: {
                "level": "INFO",
                "handlers": ["stdout"],
                "propagate": False,
            },
        },
        "root": {"level": "WARNING", "handlers": ["stdout"]},
    }
