"""A PetSage instance with a management listener, and requests from a chosen address."""

import http.client
from collections.abc import Sequence

from tests.support.gunicorn_process import GunicornFactory, GunicornServer, HttpResult
from tests.support.ports import free_ports


def free_port() -> int:
    """A port on 127.0.0.1 that nothing listens on now (``tests.support.ports``)."""
    return free_ports(1)[0]


def get(
    port: int,
    path: str,
    headers: dict[str, str] | None = None,
    source: str = "127.0.0.1",
) -> HttpResult:
    """GET ``path`` from 127.0.0.1:``port`` on a new connection from ``source``."""
    connection = http.client.HTTPConnection(
        "127.0.0.1", port, timeout=5, source_address=(source, 0)
    )
    try:
        connection.request("GET", path, headers=headers or {})
        response = connection.getresponse()
        return HttpResult(response.status, response.headers, response.read())
    finally:
        connection.close()


class Instance:
    """A gunicorn running PetSage with a management listener on a port of its own."""

    def __init__(
        self,
        start_gunicorn: GunicornFactory,
        environ: dict[str, str] | None = None,
        args: Sequence[str] = (),
        **settings: str,
    ) -> None:
        """Start it with ``environ`` and ``settings`` (``HEALTH_TOKEN="t"`` for
        ``PETSAGE_HEALTH_TOKEN=t``), and gunicorn's options ``args``."""
        self.management_port = free_port()
        self.server: GunicornServer = start_gunicorn(
            {
                "PETSAGE_MANAGEMENT_BIND": f"127.0.0.1:{self.management_port}",
                **(environ or {}),
                **{f"PETSAGE_{key}": value for key, value in settings.items()},
            },
            args=args,
        )
        self.port = self.server.port

    def public(self, path: str, headers: dict[str, str] | None = None) -> HttpResult:
        """GET on the public port (PETSAGE_BIND)."""
        return get(self.port, path, headers)

    def management(
        self,
        path: str,
        headers: dict[str, str] | None = None,
        source: str = "127.0.0.1",
    ) -> HttpResult:
        """GET on the management listener (PETSAGE_MANAGEMENT_BIND), from ``source``."""
        return get(self.management_port, path, headers, source)
