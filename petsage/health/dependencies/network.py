"""The probes that need no driver: a TCP connect, and an HTTP GET expecting 2xx."""

import base64
import http.client
import socket
import ssl
import time
from collections.abc import Callable
from urllib.parse import unquote, urlsplit

from petsage.health.checks import CheckFailed, Observation, describe_error
from petsage.health.dependencies.entry import Dependency


def tcp_probe(dependency: Dependency, timeout: float) -> Callable[[], Observation]:
    """Connect to the URL's host and port and close; observe the connect time in ms."""
    parts = urlsplit(dependency.url)
    host, port = parts.hostname or "", parts.port or 0

    def observe() -> Observation:
        started = time.perf_counter()
        try:
            with socket.create_connection((host, port), timeout=timeout):
                pass
        except OSError as error:
            raise CheckFailed(describe_error(error)) from error
        return Observation(round((time.perf_counter() - started) * 1000, 3), "ms")

    return observe


def http_probe(dependency: Dependency, timeout: float) -> Callable[[], Observation]:
    """GET the URL and expect 2xx; observe the response time in ms."""
    parts = urlsplit(dependency.url)
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
