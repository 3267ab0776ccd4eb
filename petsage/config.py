"""Every PetSage setting in one place: its default, what it accepts, what it means.

Each setting is read from the environment variable ``PETSAGE_<KEY>``; the Flask app
sees it as ``app.config[KEY]`` and ``gunicorn.conf.py`` reads the server settings from
the same table, so the service and its server never disagree about a value.
"""

import ipaddress
import logging
import os
import re
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

ENV_PREFIX = "PETSAGE_"
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")

logger = logging.getLogger(__name__)


class ConfigError(ValueError):
    """A setting has a value PetSage cannot use; its message is one line."""


@dataclass(frozen=True)
class Setting:
    """One setting: its key, default, parser, accepted values and meaning."""

    key: str
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

    def read(self, environ: Mapping[str, str]) -> Any:
        """The value from ``environ``, or the default when the variable is unset."""
        raw = environ.get(self.env_var)
        if raw is None:
            return self.default
        try:
            return self.parse(raw.strip())
        except ValueError:
            shown = self.env_var if self.secret else f"{self.env_var}={raw!r}"
            raise ConfigError(
                f"{shown} is not valid: expected {self.accepts}"
            ) from None


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


CHECK_NAME = re.compile(r"[a-z0-9][a-z0-9_-]{0,62}")


@dataclass(frozen=True)
class Dependency:
    """Another system PetSage needs: checked at ``url``, tcp://HOST:PORT or http(s)."""

    name: str
    url: str


def parse_dependencies(raw: str) -> tuple[Dependency, ...]:
    """``name=URL`` entries, comma-separated; unique names, tcp or http(s) URLs."""
    dependencies: list[Dependency] = []
    for entry in filter(None, (part.strip() for part in raw.split(","))):
        name, separator, url = entry.partition("=")
        name, url = name.strip(), url.strip()
        if not separator or not CHECK_NAME.fullmatch(name):
            raise ValueError(entry)
        if name in {dependency.name for dependency in dependencies}:
            raise ValueError(entry)
        parts = urlsplit(url)
        if parts.scheme not in ("tcp", "http", "https") or not parts.hostname:
            raise ValueError(entry)
        if parts.scheme == "tcp" and parts.port is None:
            raise ValueError(entry)
        dependencies.append(Dependency(name, url))
    return tuple(dependencies)


def parse_probe_bind(raw: str) -> str:
    """Empty (no probe listener), or HOST:PORT."""
    if raw and (raw.startswith("unix:") or parse_bind(raw) != raw):
        raise ValueError(raw)
    return raw


def default_drain_file(bind: str) -> str:
    """The drain marker's default path: one per listening address, in shared memory."""
    # A predictable path on purpose: `petsage drain` must find it. It holds no data;
    # on a host shared with other users, point PETSAGE_DRAIN_FILE at a private place.
    shared = "/dev/shm"  # nosec B108
    directory = shared if os.path.isdir(shared) else tempfile.gettempdir()
    return os.path.join(
        directory, "petsage-" + re.sub(r"[^A-Za-z0-9.-]", "_", bind) + ".drain"
    )


def default_workers() -> int:
    """gunicorn's rule of thumb: two workers per usable CPU core, plus one."""
    return 2 * len(os.sched_getaffinity(0)) + 1


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
        "BIND",
        "127.0.0.1:8000",
        parse_bind,
        "HOST:PORT (port 0 to 65535) or unix:PATH",
        "Address gunicorn listens on; use 0.0.0.0:8000 in a container.",
    ),
    Setting(
        "PROBE_BIND",
        "",
        parse_probe_bind,
        "empty, or HOST:PORT (port 1 to 65535), e.g. 0.0.0.0:8001",
        "A second address where each worker answers the health endpoints from a"
        " thread of its own, so probes are answered while every worker thread is busy.",
    ),
    Setting(
        "WORKERS",
        default_workers(),
        whole_number(1, 256),
        "a whole number from 1 to 256",
        "gunicorn worker processes; default 2 x usable CPU cores + 1.",
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
        "Record request and health metrics and serve them at /metrics.",
    ),
    Setting(
        "TRUSTED_NETWORKS",
        (),
        parse_networks,
        "comma-separated addresses or CIDR networks, e.g. 10.0.0.0/8",
        "Callers from these networks see /metrics and health check details without"
        " the token.",
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
        text,
        "a file path",
        "Marker file that makes every worker's readiness 503 while it exists;"
        " default petsage-<BIND> in /dev/shm (or the temporary directory).",
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
        "CRITICAL_DEPENDENCIES",
        (),
        parse_dependencies,
        "comma-separated name=URL entries, URL tcp://HOST:PORT or http(s)://...",
        "Dependencies that readiness requires: a failing one makes /readyz 503.",
        secret=True,
    ),
    Setting(
        "OPTIONAL_DEPENDENCIES",
        (),
        parse_dependencies,
        "comma-separated name=URL entries, URL tcp://HOST:PORT or http(s)://...",
        "Dependencies whose failure only makes health warn (still 200).",
        secret=True,
    ),
)


def load_settings(environ: Mapping[str, str]) -> dict[str, Any]:
    """Every setting's value: the default, or the environment's when it is set.

    Raises ``ConfigError`` naming the first variable with a value PetSage cannot use.
    An unknown ``PETSAGE_*`` variable is only warned about, so that rolling back to a
    release that lacks a newer setting still starts.
    """
    known = {setting.env_var for setting in SETTINGS}
    for name in sorted(environ):
        if name.startswith(ENV_PREFIX) and name not in known:
            logger.warning("%s is not a PetSage setting and is ignored", name)
    settings = {setting.key: setting.read(environ) for setting in SETTINGS}
    if settings["DRAIN_FILE"] is None:
        settings["DRAIN_FILE"] = default_drain_file(settings["BIND"])
    names = [
        dependency.name
        for dependency in (
            *settings["CRITICAL_DEPENDENCIES"],
            *settings["OPTIONAL_DEPENDENCIES"],
        )
    ]
    if len(names) != len(set(names)):
        raise ConfigError(
            "PETSAGE_CRITICAL_DEPENDENCIES and PETSAGE_OPTIONAL_DEPENDENCIES"
            " name the same dependency twice: expected unique names"
        )
    return settings
