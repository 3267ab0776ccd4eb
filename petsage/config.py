"""Every PetSage setting in one place: its default, what it accepts, what it means.

Each setting is read from the environment variable ``PETSAGE_<KEY>``; the Flask app
sees it as ``app.config[KEY]`` and ``gunicorn.conf.py`` reads the server settings from
the same table, so the service and its server never disagree about a value.

Importing this module reads nothing of the host: a default that depends on it (the
worker count, the state directory) is worked out when read. The two dependency
settings are kept here as text, described in the table with every other setting, and
turned into dependencies by ``petsage.health.dependencies``, which knows their kinds.
"""

import difflib
import ipaddress
import logging
import os
import sys
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from petsage.cpu_quota import usable_cpus

ENV_PREFIX = "PETSAGE_"
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")

logger = logging.getLogger(__name__)


class ConfigError(ValueError):
    """A setting has a value PetSage cannot use; its message is one line."""


class Refused(ValueError):
    """A parser's refusal with a reason fit to show: it names no secret."""


@dataclass(frozen=True)
class Setting:
    """One setting: its key, default, parser, accepted values and meaning."""

    key: str
    # The value when the variable is unset; or a function of no arguments that works
    # it out when read, for a default that depends on the host.
    default: Any
    parse: Callable[[str], Any]
    accepts: str
    meaning: str
    # A secret's value, which may hold credentials, never appears in a message.
    secret: bool = False

    @property
    def env_var(self) -> str:
        """The environment variable that sets it."""
        return ENV_PREFIX + self.key

    def default_value(self) -> Any:
        """The default, worked out now when it depends on the host."""
        return self.default() if callable(self.default) else self.default

    def read(self, environ: Mapping[str, str]) -> Any:
        """The value from ``environ``, or the default when the variable is unset."""
        raw = environ.get(self.env_var)
        if raw is None:
            return self.default_value()
        try:
            return self.parse(raw.strip())
        except Refused as reason:
            raise self.invalid(str(reason)) from None
        except ValueError:
            shown = self.env_var if self.secret else f"{self.env_var}={raw!r}"
            raise ConfigError(
                f"{shown} is not valid: expected {self.accepts}"
            ) from None

    def invalid(self, reason: str) -> ConfigError:
        """The error refusing this setting's value for ``reason``, which must name no
        secret."""
        return ConfigError(f"{self.env_var} is not valid: {reason}")


def parse_log_level(raw: str) -> str:
    """A logging level name, case-insensitive."""
    level = raw.upper()
    if level not in LOG_LEVELS:
        raise ValueError(raw)
    return level


def whole_number(low: int, high: int) -> Callable[[str], int]:
    """A parser for whole numbers from ``low`` to ``high`` inclusive."""

    def parse(raw: str) -> int:
        value = int(raw)
        if not low <= value <= high:
            raise ValueError(raw)
        return value

    return parse


def parse_bind(raw: str) -> str:
    """``HOST:PORT`` with a port from 0 to 65535, or ``unix:PATH``."""
    if raw.startswith("unix:") and len(raw) > len("unix:"):
        return raw
    host, separator, port = raw.rpartition(":")
    if not separator or not host or not 0 <= int(port) <= 65535:
        raise ValueError(raw)
    return raw


def seconds(low: float, high: float) -> Callable[[str], float]:
    """A parser for a number of seconds from ``low`` to ``high`` inclusive."""

    def parse(raw: str) -> float:
        value = float(raw)
        if not low <= value <= high:
            raise ValueError(raw)
        return value

    return parse


def boolean(raw: str) -> bool:
    """true/false, yes/no, on/off or 1/0, case-insensitive."""
    value = raw.lower()
    if value in ("true", "yes", "on", "1"):
        return True
    if value in ("false", "no", "off", "0"):
        return False
    raise ValueError(raw)


def parse_log_format(raw: str) -> str:
    """json or text, case-insensitive."""
    value = raw.lower()
    if value not in ("json", "text"):
        raise ValueError(raw)
    return value


def parse_networks(
    raw: str,
) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
    """Comma-separated addresses or CIDR networks."""
    return tuple(
        ipaddress.ip_network(part.strip(), strict=False)
        for part in raw.split(",")
        if part.strip()
    )


def text(raw: str) -> str:
    """Any text, surrounding blanks removed."""
    return raw


def parse_probe_bind(raw: str) -> str:
    """Empty (no management listener), or HOST:PORT with a port from 1 to 65535; an
    IPv6 host in brackets, e.g. [::1]:8001."""
    if not raw:
        return raw
    host, _, port = raw.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        ipaddress.IPv6Address(host[1:-1])  # ValueError unless an IPv6 address
    elif not host or ":" in host or "/" in host:
        raise ValueError(raw)
    if not port.isdigit() or not 1 <= int(port) <= 65535:
        raise ValueError(raw)
    return raw


def file_path(raw: str) -> str:
    """A path naming a file (not empty, not ending in a slash).

    Whether its directory exists is checked when an instance starts
    (petsage.instance.directory), not here: a worker booting later must not fail
    on it.
    """
    if not raw or raw.endswith("/"):
        raise ValueError(raw)
    return raw


def directory_path(raw: str) -> str:
    """A directory's path (not empty); whether it exists is checked at start."""
    if not raw:
        raise ValueError(raw)
    return raw


def default_state_directory() -> str:
    """Shared memory where the host has it (fast, gone at reboot), else the temp dir."""
    shared = "/dev/shm"  # nosec B108: each instance's directory inside is private
    return shared if os.path.isdir(shared) else tempfile.gettempdir()


# The embedded database's file, in a directory of the installation's prefix (a
# virtualenv's own, for the README's commands): outside every instance's state
# directory, kept across restarts, and the same file for every worker and for the
# ``petsage db`` command run from the same installation.
DATABASE_FILE = os.path.join("var", "petsage", "petsage.sqlite3")
# The SQLAlchemy driver PetSage speaks PostgreSQL with: psycopg 3, the ``postgresql``
# extra. SQLAlchemy's bare postgresql:// would mean psycopg2, which PetSage lacks.
POSTGRESQL_DRIVER = "postgresql+psycopg"


def default_database_url() -> str:
    """An SQLite file beside the installation: ``<sys.prefix>/var/petsage/...``."""
    return "sqlite:///" + os.path.join(os.path.abspath(sys.prefix), DATABASE_FILE)


def parse_database_url(raw: str) -> str:
    """sqlite:///PATH (a file), or a PostgreSQL URL, made postgresql+psycopg://."""
    scheme, separator, rest = raw.partition("://")
    if not separator:
        raise Refused("expected sqlite:///PATH or postgresql://...")
    scheme = scheme.lower()
    if scheme in ("sqlite", "sqlite+pysqlite"):
        path = rest.removeprefix("/").partition("?")[0]
        if not rest.startswith("/") or path in ("", ":memory:"):
            # Each connection would open a database of its own: nothing is shared.
            raise Refused(
                "an SQLite database must be a file, sqlite:///PATH"
                " (sqlite:////ABSOLUTE/PATH)"
            )
        return "sqlite:///" + rest.removeprefix("/")
    if scheme in ("postgresql", "postgres", POSTGRESQL_DRIVER):
        return f"{POSTGRESQL_DRIVER}://{rest}"
    # The scheme is shown: it stands before "://", where no secret goes.
    raise Refused(
        f"{scheme}:// is not a database PetSage uses: expected sqlite:///PATH or"
        " postgresql://..."
    )


def parse_database_upgrade(raw: str) -> str:
    """deploy or start, case-insensitive."""
    value = raw.lower()
    if value not in ("deploy", "start"):
        raise ValueError(raw)
    return value


def default_worker_count() -> tuple[int, str]:
    """gunicorn's rule of thumb, two workers per usable CPU plus one, and its reason.

    Usable CPUs: the CPU affinity, capped by a cgroup CPU quota (a container's CPU
    limit) rounded up to whole CPUs.
    """
    cpus, source = usable_cpus()
    return 2 * cpus + 1, f"2 x {cpus} CPU{'' if cpus == 1 else 's'} ({source}) + 1"


def default_workers() -> int:
    """The default number of gunicorn workers (see ``default_worker_count``)."""
    return default_worker_count()[0]


def worker_count(
    environ: Mapping[str, str], running: int | None = None
) -> tuple[int, str]:
    """How many gunicorn workers run, and a line saying where that number came from.

    For example ``(3, "3 workers: 2 x 1 CPU (cgroup v2 cpu.max ...) + 1")``.
    ``running`` is the count gunicorn ended up with, when known: it differs from
    PetSage's when gunicorn's own ``--workers`` (command line or GUNICORN_CMD_ARGS)
    overrode the config.
    """
    workers, reason = default_worker_count()
    variable = ENV_PREFIX + "WORKERS"
    if variable in environ:
        workers, reason = int(environ[variable]), f"set by {variable}"
    if running is not None and running != workers:
        workers, reason = running, "set by gunicorn's --workers option"
    return workers, f"{workers} worker{'' if workers == 1 else 's'}: {reason}"


# The query parameter of a datastore dependency's URL naming a file that holds the
# password (a mounted Kubernetes Secret), read at each connect, so that a rotated
# Secret needs no restart.
PASSWORD_FILE = "password_file"  # nosec B105: a query parameter's name

DEPENDENCY_URLS = (
    "comma-separated name=URL entries, URL tcp://HOST:PORT, http(s)://...,"
    " postgresql://... (libpq URI; postgres://), redis://, rediss:// or unix://...,"
    " credentials percent-encoded (a comma as %2C)"
)
DEPENDENCY_MEANING = (
    # (bandit reads "SELECT" in this f-string as a query: it is a description.)
    " tcp connects, http(s) expects 2xx; postgresql logs in over a new connection"  # nosec B608
    " each cycle, runs SELECT 1 and closes it; redis sends AUTH and PING over one"
    " connection it keeps: at most one connection per dependency per instance"
    " (drivers: the petsage-backend[postgresql] and [redis] extras). A password may"
    " come from a file instead of the URL (a mounted Kubernetes Secret): the URL's"
    f" query parameter {PASSWORD_FILE}=PATH, read at each connect (PostgreSQL: each"
    " cycle); one trailing newline is dropped."
)

SETTINGS = (
    Setting(
        "LOG_LEVEL",
        "INFO",
        parse_log_level,
        "one of " + ", ".join(LOG_LEVELS),
        "Least severe level logged, by PetSage and by gunicorn.",
    ),
    Setting(
        "LOG_FORMAT",
        "json",
        parse_log_format,
        "json or text",
        "json: one JSON object per line on stdout, for log aggregation; text: lines"
        " for people, for local use.",
    ),
    Setting(
        "LOG_BUFFER_LINES",
        10000,
        whole_number(1, 1000000),
        "a whole number from 1 to 1000000",
        "Log lines each gunicorn process holds while its stdout is not read (a log"
        " shipper that stalls); further lines are dropped and counted in"
        " petsage_log_lines_dropped_total, so that logging never holds up a request.",
    ),
    Setting(
        "BIND",
        "127.0.0.1:8000",
        parse_bind,
        "HOST:PORT (port 0 to 65535) or unix:PATH",
        "Address gunicorn listens on; use 0.0.0.0:8000 in a container. gunicorn's"
        " -b/--bind overrides it.",
    ),
    Setting(
        "MANAGEMENT_BIND",
        "",
        parse_probe_bind,
        "empty, or HOST:PORT (port 1 to 65535), e.g. 0.0.0.0:8001 or [::1]:8001",
        "The management listener: a second address, opened once by the gunicorn"
        " master, where every worker answers the health endpoints and /metrics from"
        " threads of its own, so probes are answered while every worker thread is"
        " busy; keep it off the internet.",
    ),
    Setting(
        "PROBE_BIND",
        "",
        parse_probe_bind,
        "as PETSAGE_MANAGEMENT_BIND",
        "The old name of PETSAGE_MANAGEMENT_BIND, still read; setting both to"
        " different addresses stops start-up.",
    ),
    Setting(
        "WORKERS",
        default_workers,
        whole_number(1, 256),
        "a whole number from 1 to 256",
        "gunicorn worker processes; default 2 x usable CPUs + 1, where usable CPUs"
        " are the CPU affinity capped by a cgroup CPU quota, rounded up.",
    ),
    Setting(
        "THREADS",
        4,
        whole_number(1, 256),
        "a whole number from 1 to 256",
        "Threads per worker (gthread): requests one worker serves at once.",
    ),
    Setting(
        "TIMEOUT",
        30,
        whole_number(1, 3600),
        "a whole number of seconds from 1 to 3600",
        "Seconds a silent worker may stay silent before gunicorn replaces it.",
    ),
    Setting(
        "GRACEFUL_TIMEOUT",
        30,
        whole_number(1, 3600),
        "a whole number of seconds from 1 to 3600",
        "Seconds in-flight requests get to finish after a stop or reload.",
    ),
    Setting(
        "KEEPALIVE",
        75,
        whole_number(0, 3600),
        "a whole number of seconds from 0 to 3600",
        "Seconds an idle keep-alive connection stays open; longer than a load"
        " balancer's idle timeout (AWS ALB: 60 s) so the server never closes first.",
    ),
    Setting(
        "MAX_BODY_BYTES",
        1048576,
        whole_number(1, 1073741824),
        "a whole number of bytes from 1 to 1073741824",
        "The largest request body any route accepts: a longer one is answered 413,"
        " before it is read when its Content-Length says so, once the limit is passed"
        " when it comes in chunks. Default 1 MiB.",
    ),
    Setting(
        "DOCS",
        True,
        boolean,
        "true or false (also yes/no, on/off, 1/0)",
        "Serve Swagger UI at /docs, entirely from PetSage (no CDN).",
    ),
    Setting(
        "METRICS",
        True,
        boolean,
        "true or false (also yes/no, on/off, 1/0)",
        "Record request and health metrics and serve them at /metrics on the"
        " management listener.",
    ),
    Setting(
        "PUBLIC_METRICS",
        False,
        boolean,
        "true or false (also yes/no, on/off, 1/0)",
        "Also serve /metrics on the public port (PETSAGE_BIND), to the token's"
        " holders when PETSAGE_HEALTH_TOKEN is set, else to everybody; off: 404.",
    ),
    Setting(
        "TRUSTED_NETWORKS",
        (),
        parse_networks,
        "comma-separated addresses or CIDR networks, e.g. 10.20.30.16/28",
        "Callers whose own connection comes from these addresses (the monitoring"
        " hosts, e.g. a /28) see /metrics and health check details on the management"
        " listener without the token; never on the public port, and never for a"
        " forwarded address. Name no shared network (a cluster's pod network): anyone"
        " in it would be trusted.",
    ),
    Setting(
        "TRUSTED_PROXIES",
        (),
        parse_networks,
        "comma-separated addresses or CIDR networks, e.g. 10.20.0.5",
        "The proxies in front of the public port whose X-Forwarded-For (its last"
        " entry) names the caller in the access log; it grants nothing, and the"
        " management listener reads no forwarded address. Name only proxies that"
        " always send it.",
    ),
    Setting(
        "RELEASE_ID",
        "1.0.0",
        text,
        "any text, e.g. a git commit or image tag",
        "The release this instance runs, reported as releaseId by /health.",
    ),
    Setting(
        "HEALTH_TOKEN",
        "",
        text,
        "any text; empty means no token",
        "Bearer token that reveals check details on the health endpoints;"
        " without one, details stay hidden from everybody.",
        secret=True,
    ),
    Setting(
        "API_TOKEN",
        "",
        text,
        "any text; empty means no token",
        "Bearer token that every write of the API (POST, PATCH, DELETE of a"
        " feature's records) requires; reads stay public. Unset, writes are off:"
        " every write is a 401 that says so. Never the health"
        " token's value: PetSage refuses to start when the two are the same.",
        secret=True,
    ),
    Setting(
        "SHUTDOWN_DELAY",
        15.0,
        seconds(0, 3600),
        "a number of seconds from 0 to 3600",
        "Seconds PetSage keeps serving, with readiness 503, after SIGTERM and"
        " before gunicorn's graceful shutdown, so load balancers take it out first.",
    ),
    Setting(
        "DRAIN_FILE",
        None,
        file_path,
        "a file path in an existing directory",
        "A file that makes every worker's readiness 503 while it exists, beside"
        " petsage drain and SIGTERM, which need no file.",
    ),
    Setting(
        "STATE_DIR",
        default_state_directory,
        directory_path,
        "the path of an existing directory",
        "Where each running instance (gunicorn master) keeps a private directory"
        " petsage-<pid>-<pid namespace>-<start time>: its lock, its addresses and"
        " its metrics files; default /dev/shm (or the temporary directory).",
    ),
    Setting(
        "CHECK_PERIOD",
        10.0,
        seconds(0.05, 3600),
        "a number of seconds from 0.05 to 3600",
        "Seconds between background check cycles (half that after a failure).",
    ),
    Setting(
        "CHECK_TIMEOUT",
        2.0,
        seconds(0.01, 600),
        "a number of seconds from 0.01 to 600",
        "How long a dependency check may take before it counts as failed.",
    ),
    Setting(
        "DATABASE_URL",
        default_database_url,
        parse_database_url,
        "sqlite:///PATH (relative), sqlite:////PATH (absolute), or"
        " postgresql://USER:PASSWORD@HOST:PORT/DATABASE (postgres://,"
        " postgresql+psycopg://), credentials percent-encoded",
        "The database features keep their records in. Default: the SQLite file"
        " var/petsage/petsage.sqlite3 under the installation's prefix (the"
        " virtualenv), its directory made when first used; WAL and a busy timeout let"
        " every worker write. In production, PostgreSQL through psycopg 3 (the"
        " petsage-backend[postgresql] extra): each worker keeps a pool of"
        " PETSAGE_THREADS connections.",
        secret=True,
    ),
    Setting(
        "DATABASE_UPGRADE",
        "deploy",
        parse_database_upgrade,
        "deploy or start",
        "Who applies the schema's migrations. deploy: petsage db upgrade, run as a"
        " deploy step; the service never changes the schema. start: the gunicorn"
        " master runs the upgrade before it forks its workers (safe with several"
        " instances at once: the upgrade holds a lock).",
    ),
    Setting(
        "DATABASE_CRITICAL",
        False,
        boolean,
        "true or false (also yes/no, on/off, 1/0)",
        "Whether readiness requires the database: its check (a new connection each"
        " cycle, SELECT 1) then fails /readyz. Off, a failing database only makes"
        " health warn, as for a primary every replica shares.",
    ),
    Setting(
        "CRITICAL_DEPENDENCIES",
        "",
        # Text here: petsage.health.dependencies reads the entries.
        text,
        DEPENDENCY_URLS,
        "Dependencies that readiness requires: a failing one makes /readyz 503."
        + DEPENDENCY_MEANING,
        secret=True,
    ),
    Setting(
        "OPTIONAL_DEPENDENCIES",
        "",
        # Text here: petsage.health.dependencies reads the entries.
        text,
        DEPENDENCY_URLS,
        "Dependencies whose failure only makes health warn (still 200)."
        + DEPENDENCY_MEANING,
        secret=True,
    ),
)


def setting_named(key: str) -> Setting:
    """The setting whose key is ``key``."""
    (setting,) = (setting for setting in SETTINGS if setting.key == key)
    return setting


def read_setting(key: str, environ: Mapping[str, str]) -> Any:
    """One setting's value, for a command that needs no other setting."""
    return setting_named(key).read(environ)


_warned_about: set[str] = set()


def warn_about_unknown_settings(environ: Mapping[str, str]) -> None:
    """Warn once per process tree about each ``PETSAGE_*`` variable PetSage ignores,
    naming the setting it most likely meant.

    An unknown variable is only warned about, so that rolling back to a release that
    lacks a newer setting still starts. gunicorn's workers are forked from the master,
    which warns first, in the log format in use; they inherit what it warned about.
    """
    known = {setting.env_var for setting in SETTINGS}
    for name in sorted(environ):
        if name.startswith(ENV_PREFIX) and name not in known | _warned_about:
            _warned_about.add(name)
            meant = closest_setting(name)
            hint = f"; did you mean {meant}?" if meant else ""
            logger.warning("%s is not a PetSage setting and is ignored%s", name, hint)


def leave_warnings_to_the_master(environ: Mapping[str, str]) -> None:
    """Warn about none of ``environ``'s unknown variables in this process: its
    gunicorn master warned about each already, and it was started with exec (the
    instance's checker, petsage.serving.checker), so it did not inherit what the
    master warned about as a forked worker does."""
    _warned_about.update(name for name in environ if name.startswith(ENV_PREFIX))


def closest_setting(name: str) -> str | None:
    """The setting a misspelt variable most likely meant (``PETSAGE_WORKER``:
    ``PETSAGE_WORKERS``), or None when no setting is close.

    The prefix every name shares is left out of the comparison, or it would make
    every name look close to some setting.
    """
    typed = name.removeprefix(ENV_PREFIX).upper()
    keys = [setting.key for setting in SETTINGS]
    matches = difflib.get_close_matches(typed, keys, n=1)
    return ENV_PREFIX + matches[0] if matches else None


def load_settings(
    environ: Mapping[str, str], warn_unknown: bool = True
) -> dict[str, Any]:
    """Every setting's value: the default, or the environment's when it is set.

    Raises ``ConfigError`` naming the first variable with a value PetSage cannot use.
    ``warn_unknown=False`` leaves the warning about unknown variables for later, when
    logging is set up. The dependency settings stay text: see
    ``petsage.health.dependencies.dependencies_from``.
    """
    if warn_unknown:
        warn_about_unknown_settings(environ)
    settings = {setting.key: setting.read(environ) for setting in SETTINGS}
    management, probe = settings["MANAGEMENT_BIND"], settings["PROBE_BIND"]
    if management and probe and management != probe:
        raise ConfigError(
            "PETSAGE_MANAGEMENT_BIND and PETSAGE_PROBE_BIND (its old name) name"
            " different addresses: expected only PETSAGE_MANAGEMENT_BIND"
        )
    check_tokens_differ(settings)
    # Both keys hold the management listener's address, so code reading either agrees.
    settings["MANAGEMENT_BIND"] = settings["PROBE_BIND"] = management or probe
    return settings


def check_tokens_differ(settings: Mapping[str, Any]) -> None:
    """Refuse one secret for two purposes: the API token writes records, the health
    token only reads check details, and holders of the one must not get the other."""
    if settings["API_TOKEN"] and settings["API_TOKEN"] == settings["HEALTH_TOKEN"]:
        raise ConfigError(
            "PETSAGE_API_TOKEN and PETSAGE_HEALTH_TOKEN are the same secret:"
            " give writes a token of their own"
        )
