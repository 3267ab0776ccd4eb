"""Health checks: what a check is, what it observes, and the checks PetSage ships."""

import base64
import http.client
import socket
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal
from urllib.parse import unquote, urlsplit, urlunsplit

from petsage.config import Dependency

Status = Literal["pass", "warn", "fail"]

# Worst first: aggregation keeps the worst status it sees. (bandit reads a "pass"
# key as a password; it is a health status.)
SEVERITY: dict[Status, int] = {"pass": 0, "warn": 1, "fail": 2}  # nosec


def worst(statuses: "list[Status]") -> Status:
    """The worst of ``statuses``; pass when there are none."""
    return max(statuses, key=SEVERITY.__getitem__, default="pass")


class CheckFailed(Exception):
    """Raised by a check to fail with an ``output`` safe to show to token holders."""


@dataclass(frozen=True)
class Observation:
    """What one run of a check saw: a value with its unit, and a note when not pass."""

    value: float | int | str | None = None
    unit: str | None = None
    status: Status = "pass"
    output: str = ""


@dataclass(frozen=True)
class Check:
    """A named check, run in the background, never inside a request.

    ``run`` returns an Observation or raises; any exception fails the check. A failing
    critical check fails readiness; a failing non-critical one only makes it warn.
    """

    name: str
    run: Callable[[], Observation]
    component: str
    measurement: str
    component_type: str = "component"
    critical: bool = True
    timeout: float = 2.0
    # Where the check looks, credentials removed; shown only to token holders.
    target: str | None = field(default=None)

    @property
    def key(self) -> str:
        """The check's key in the health document: ``component:measurement``."""
        return f"{self.component}:{self.measurement}"


def process_uptime_check(started: float) -> Check:
    """Seconds since ``started`` in the process that runs the checks; always passes."""

    def observe() -> Observation:
        return Observation(round(time.monotonic() - started, 3), "s")

    return Check(
        name="uptime",
        run=observe,
        component="process",
        measurement="uptime",
        component_type="system",
        critical=False,
        timeout=1.0,
    )


def redact_url(url: str) -> str:
    """``url`` without credentials or query, fit to show to an operator."""
    parts = urlsplit(url)
    if parts.hostname is None or "%" in parts.netloc.rpartition("@")[2]:
        # No host (a unix socket's path), or a libpq socket directory written
        # percent-encoded as the host: kept as written, which lowercasing would alter.
        # By hand: urlunsplit would write unix:///path as unix:/path.
        return f"{parts.scheme}://{parts.netloc.rpartition('@')[2]}{parts.path}"
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    netloc = host if parts.port is None else f"{host}:{parts.port}"
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))


def dependency_check(dependency: Dependency, critical: bool, timeout: float) -> Check:
    """A check that ``dependency`` answers: TCP connect, HTTP GET expecting 2xx, or a
    datastore's protocol (petsage/health/datastores.py)."""
    # Imported here: datastores builds on this module's Observation and CheckFailed.
    from petsage.health.datastores import DATASTORE_PROBES

    parts = urlsplit(dependency.url)
    run: Callable[[], Observation]
    if parts.scheme in DATASTORE_PROBES:
        run = DATASTORE_PROBES[parts.scheme](dependency, timeout)
    elif parts.scheme == "tcp":
        run = tcp_probe(parts.hostname or "", parts.port or 0, timeout)
    else:
        run = http_probe(dependency.url, timeout)
    is_datastore = parts.scheme == "tcp" or parts.scheme in DATASTORE_PROBES
    return Check(
        name=dependency.name,
        run=run,
        component=dependency.name,
        measurement="responseTime",
        component_type="datastore" if is_datastore else "component",
        critical=critical,
        timeout=timeout,
        target=redact_url(dependency.url),
    )


def describe_error(error: BaseException) -> str:
    """An error's kind and OS reason, without the host or URL it may mention."""
    if isinstance(error, TimeoutError | socket.timeout):
        return "timed out"
    if isinstance(error, OSError) and error.strerror:
        return f"{type(error).__name__}: {error.strerror}"
    return type(error).__name__


def tcp_probe(host: str, port: int, timeout: float) -> Callable[[], Observation]:
    """Connect to ``host:port`` and close; observe the connect time in ms."""

    def observe() -> Observation:
        started = time.perf_counter()
        try:
            with socket.create_connection((host, port), timeout=timeout):
                pass
        except OSError as error:
            raise CheckFailed(describe_error(error)) from error
        return Observation(round((time.perf_counter() - started) * 1000, 3), "ms")

    return observe


def http_probe(url: str, timeout: float) -> Callable[[], Observation]:
    """GET ``url`` and expect 2xx; observe the response time in ms."""
    parts = urlsplit(url)
    path = parts.path or "/"
    if parts.query:
        path += "?" + parts.query
    headers = {"User-Agent": "petsage-health", "Connection": "close"}
    if parts.username is not None:
        # Written percent-encoded in the URL (a "/" or "#" could not appear there
        # otherwise); the server expects them as they are.
        username, password = unquote(parts.username), unquote(parts.password or "")
        credentials = f"{username}:{password}".encode()
        headers["Authorization"] = "Basic " + base64.b64encode(credentials).decode()

    def observe() -> Observation:
        connection: http.client.HTTPConnection
        if parts.scheme == "https":
            connection = http.client.HTTPSConnection(
                parts.hostname or "",
                parts.port,
                timeout=timeout,
                context=ssl.create_default_context(),
            )
        else:
            connection = http.client.HTTPConnection(
                parts.hostname or "", parts.port, timeout=timeout
            )
        started = time.perf_counter()
        try:
            connection.request("GET", path, headers=headers)
            response = connection.getresponse()
            response.read(65536)
        except (OSError, http.client.HTTPException) as error:
            raise CheckFailed(describe_error(error)) from error
        finally:
            connection.close()
        elapsed = round((time.perf_counter() - started) * 1000, 3)
        if not 200 <= response.status < 300:
            raise CheckFailed(f"HTTP {response.status}")
        return Observation(elapsed, "ms")

    return observe
