"""One logging setup for PetSage and gunicorn: JSON lines on stdout, or text.

gunicorn applies it (``logconfig_dict`` in ``gunicorn.conf.py``) in the master, and its
workers inherit it, so Flask's, PetSage's and gunicorn's records all come out alike,
through one handler whose stream never blocks (petsage.serving.log_output).
"""

import datetime
import logging
import os
import re
from collections.abc import Iterable
from typing import Any

import orjson
from flask import has_request_context, request
from pythonjsonlogger.orjson import OrjsonFormatter, orjson_default

from petsage.middleware.request_ids import ENVIRON_KEY, HEADER
from petsage.serving.log_output import output_to

ACCESS_LOGGER = "gunicorn.access"
STDOUT, STDERR = 1, 2
# gunicorn's access line, as text; JSON lines carry the same facts as fields too.
ACCESS_LOG_FORMAT = '%(h)s "%(r)s" %(s)s %(B)s %(M)sms id=%({x-request-id}o)s "%(a)s"'
RESPONSE_ID_ATOM = "{" + HEADER.lower() + "}o"
# The atoms AccessFieldsFilter lifts into fields, whatever the access line's format.
FIELD_ATOMS = frozenset({"D", "s", RESPONSE_ID_ATOM, "m", "U", "q", "h", "a", "B"})
# The atoms made for every record.
BASIC_ATOMS = frozenset({"h", "s", "m", "U", "q", "a", "B", "D", "M"})
FORMAT_ATOM = re.compile(r"%\(([^)]+)\)")


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


def access_fields(atoms: dict[str, Any]) -> dict[str, Any]:
    """The fields of an access record, lifted from gunicorn's atoms, in log order."""
    microseconds = atoms.get("D")
    status = str(atoms.get("s"))
    return {
        "request_id": atoms.get(RESPONSE_ID_ATOM),
        "method": atoms.get("m"),
        "path": atoms.get("U"),
        "query": atoms.get("q") or None,
        "status": int(status) if status.isdigit() else status,
        "duration_ms": microseconds / 1000 if isinstance(microseconds, int) else None,
        "remote_addr": atoms.get("h"),
        "user_agent": atoms.get("a"),
        "response_bytes": atoms.get("B"),
    }


class AccessFieldsFilter(logging.Filter):
    """Lifts gunicorn's access-log atoms into fields of the record."""

    def filter(self, record: logging.LogRecord) -> bool:
        """Add the fields to access records; keep every record."""
        atoms = record.args
        if record.name == ACCESS_LOGGER and isinstance(atoms, dict):
            record.__dict__.update(access_fields(atoms))
        return True


class Atoms(dict[str, Any]):
    """Access-log atoms as gunicorn's SafeAtoms give them: ``-`` for a missing one.

    The values are escaped when stored, as SafeAtoms does, and looked up by dict's
    own code, without a Python call per atom.
    """

    def __missing__(self, key: str) -> str:
        return "-"


class AccessAtoms:
    """gunicorn's access-log atoms (``Logger.atoms``), only those a record uses.

    gunicorn makes every atom for every request, one per request header, response
    header and environ entry among them (some 40), then copies them all to escape
    quotes: most of an access line's cost, for the dozen PetSage's record uses. These
    are the atoms of the access line's format and those AccessFieldsFilter lifts into
    fields, with gunicorn's own values.
    """

    def __init__(self, access_log_format: str) -> None:
        self.log_format = access_log_format
        self.needed = FIELD_ATOMS | frozenset(FORMAT_ATOM.findall(access_log_format))
        # Header and environ atoms by kind and lower-case name (gunicorn's), and the
        # spellings the format uses for each, which SafeAtoms would find
        # case-insensitively.
        self.headers: dict[str, dict[str, list[str]]] = {"i": {}, "o": {}, "e": {}}
        for atom in self.needed:
            if atom.startswith("{") and atom[-2:-1] == "}" and atom[-1] in "ioe":
                name = atom[1:-2].lower()
                self.headers[atom[-1]].setdefault(name, []).append(atom)
        self.with_request_line = "r" in self.needed
        # The rest, made only when the format asks for them.
        self.rest = sorted(
            self.needed
            - BASIC_ATOMS
            - {"r"}
            - {atom for atom in self.needed if atom.startswith("{")}
        )

    def __call__(
        self,
        resp: Any,
        req: Any,
        environ: dict[str, Any],
        request_time: Any,
        logger: Any,
    ) -> Atoms:
        """The atoms of one request; ``logger`` is gunicorn's (``t`` and ``u``)."""
        seconds, micros = request_time.seconds, request_time.microseconds
        status = resp.status
        if isinstance(status, str):
            status = status.split(None, 1)[0]
        method = environ.get("REQUEST_METHOD")
        sent = getattr(resp, "sent", None)
        atoms = Atoms(
            h=environ.get("REMOTE_ADDR", "-"),
            s=status,
            m=method,
            U=environ.get("PATH_INFO"),
            q=environ.get("QUERY_STRING"),
            a=environ.get("HTTP_USER_AGENT", "-"),
            B=sent,
            D=seconds * 1000000 + micros,
            M=seconds * 1000 + int(micros / 1000),
        )
        if self.with_request_line:
            atoms["r"] = f"{method} {environ['RAW_URI']} {environ['SERVER_PROTOCOL']}"
        for atom in self.rest:
            if atom == "l":
                atoms["l"] = "-"
            elif atom == "u":
                atoms["u"] = logger._get_user(environ) or "-"
            elif atom == "t":
                atoms["t"] = logger.now()
            elif atom == "H":
                atoms["H"] = environ.get("SERVER_PROTOCOL")
            elif atom == "b":
                atoms["b"] = "-" if sent is None else str(sent)
            elif atom == "f":
                atoms["f"] = environ.get("HTTP_REFERER", "-")
            elif atom == "T":
                atoms["T"] = seconds
            elif atom == "L":
                atoms["L"] = f"{seconds}.{micros:06d}"
            elif atom == "p":
                atoms["p"] = f"<{os.getpid()}>"
        sources: tuple[tuple[str, Any], ...] = (
            ("i", getattr(req, "headers", req)),
            ("o", resp.headers),
            ("e", environ),
        )
        for kind, headers in sources:
            wanted = self.headers[kind]
            if not wanted:
                continue
            items: Iterable[tuple[str, Any]] = (
                headers.items() if hasattr(headers, "items") else headers
            )
            for name, value in items:
                spellings = wanted.get(name.lower())
                if spellings is not None:
                    for atom in spellings:
                        atoms[atom] = value
        for atom, value in atoms.items():
            if isinstance(value, str) and '"' in value:
                atoms[atom] = value.replace('"', '\\"')
        return atoms


class JsonFormatter(OrjsonFormatter):
    """JSON lines: timestamp, level, logger, message, then the record's fields.

    python-json-logger's formatter with orjson: the same fields, encoded in a
    fraction of the standard library's time.
    """

    def __init__(self) -> None:
        super().__init__(
            "%(levelname)s %(name)s %(message)s",
            rename_fields={"levelname": "level", "name": "logger"},
            timestamp=True,
        )


def json_formatter() -> logging.Formatter:
    """PetSage's JSON formatter (``logging.config`` calls this)."""
    return JsonFormatter()


class JsonAccessLines:
    """Writes access records as JSON lines straight to the access logger's stream.

    Every request but a successful probe writes one. Made through ``logging``, each
    costs a LogRecord, two filters and python-json-logger's walk over the record's
    attributes: two thirds of the line's cost. Where the access logger is set up as
    PetSage sets it up (one stream handler with JsonFormatter and PetSage's filters,
    nothing else), this writes the very line that path would (same fields in the same
    order, same encoder, same lock, same stream, which only queues it: see
    petsage.serving.log_output); set up any other way, records take the ``logging``
    path.
    """

    def __init__(self) -> None:
        self._checked: tuple[logging.Handler, logging.Formatter | None] | None = None
        self._handler: logging.StreamHandler[Any] | None = None

    def handler(self, logger: logging.Logger) -> "logging.StreamHandler[Any] | None":
        """The handler to write to directly, or None where ``logging`` must be used."""
        handlers = logger.handlers
        if len(handlers) != 1 or logger.filters or logger.propagate:
            return None
        handler = handlers[0]
        if self._checked != (handler, handler.formatter):
            self._checked = (handler, handler.formatter)
            plain = (
                type(handler) is logging.StreamHandler
                and type(handler.formatter) is JsonFormatter
                and handler.level <= logging.INFO
                and all(
                    type(each) in (RequestContextFilter, AccessFieldsFilter)
                    for each in handler.filters
                )
            )
            self._handler = None
            if plain and isinstance(handler, logging.StreamHandler):
                self._handler = handler
        return self._handler

    @staticmethod
    def write(
        handler: "logging.StreamHandler[Any]", message: str, atoms: dict[str, Any]
    ) -> None:
        """Write one access record's line, as JsonFormatter would format it."""
        # Outside a request context (gunicorn logs after the response), so
        # RequestContextFilter would add nothing.
        fields: dict[str, Any] = {
            "level": "INFO",
            "logger": ACCESS_LOGGER,
            "message": message,
        }
        fields.update(access_fields(atoms))
        fields["timestamp"] = datetime.datetime.now(datetime.UTC)
        line = orjson.dumps(
            fields, default=orjson_default, option=orjson.OPT_NON_STR_KEYS
        ).decode()
        handler.acquire()
        try:
            handler.stream.write(line + handler.terminator)
            handler.flush()
        finally:
            handler.release()


def stdout_handler(buffer_lines: int) -> "logging.StreamHandler[Any]":
    """logging's own StreamHandler, writing to stdout through the process's log
    output, which holds ``buffer_lines`` lines while stdout is not read
    (``logging.config`` calls this)."""
    output = output_to(STDOUT, STDERR, buffer_lines)
    handler = logging.StreamHandler(output)
    # The dropped-lines line is formatted as this handler's records are.
    output.report_format = handler.format
    return handler


def logging_config(log_format: str, level: str, buffer_lines: int) -> dict[str, Any]:
    """The ``logging.config.dictConfig`` for PetSage and gunicorn; each process holds
    ``buffer_lines`` lines while its stdout is not read, and drops the rest."""
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
                "()": stdout_handler,
                "buffer_lines": buffer_lines,
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
