"""The kinds of dependency PetSage checks, one per URL scheme: the one list of them.

Each scheme says how a dependency is checked (its probe), how the health document
shows it, what its URL must name, and, for a datastore checked in its own protocol,
the driver that speaks it: the driver's module, the package extra that installs it,
and the driver's own URL parser, which refuses at start what it would refuse later.
"""

from collections.abc import Callable
from dataclasses import dataclass
from types import ModuleType
from urllib.parse import unquote, urlsplit

from petsage.health.checks import Check, Observation
from petsage.health.dependencies.datastores import (
    postgresql_probe,
    redis_probe,
    sqlite_probe,
)
from petsage.health.dependencies.entry import Dependency, redact_url
from petsage.health.dependencies.network import http_probe, tcp_probe

# Makes a dependency's check run, given the check's timeout.
Probe = Callable[[Dependency, float], Callable[[], Observation]]


@dataclass(frozen=True)
class Driver:
    """A datastore's driver: the module, the package extra that installs it, and its
    URL parser, which raises ValueError (or the driver's Error) for a URL it refuses."""

    module: str
    extra: str
    parse_url: Callable[[ModuleType, str], object]


@dataclass(frozen=True)
class Scheme:
    """A kind of dependency: a URL scheme and how a dependency of it is checked."""

    name: str
    probe: Probe
    # The health document's componentType: what holds data, or a service.
    component_type: str
    driver: Driver | None = None
    needs_host: bool = True
    needs_port: bool = False


PSYCOPG = Driver(
    "psycopg", "postgresql", lambda psycopg, url: psycopg.conninfo.conninfo_to_dict(url)
)
REDIS = Driver("redis", "redis", lambda redis, url: redis.connection.parse_url(url))

SCHEMES = {
    scheme.name: scheme
    for scheme in (
        Scheme("tcp", tcp_probe, "datastore", needs_port=True),
        Scheme("http", http_probe, "component"),
        Scheme("https", http_probe, "component"),
        # libpq finds a server without a host too: a socket directory, a host= option.
        Scheme("postgresql", postgresql_probe, "datastore", PSYCOPG, needs_host=False),
        Scheme("postgres", postgresql_probe, "datastore", PSYCOPG, needs_host=False),
        Scheme("redis", redis_probe, "datastore", REDIS),
        Scheme("rediss", redis_probe, "datastore", REDIS),
        # A Unix socket's path, no host.
        Scheme("unix", redis_probe, "datastore", REDIS, needs_host=False),
    )
}


def dependency_check(dependency: Dependency, critical: bool, timeout: float) -> Check:
    """A check that ``dependency`` answers, as its scheme says: a TCP connect, an HTTP
    GET expecting 2xx, or a datastore's own protocol."""
    scheme = SCHEMES[dependency.scheme]
    return Check(
        name=dependency.name,
        run=scheme.probe(dependency, timeout),
        component=dependency.name,
        measurement="responseTime",
        component_type=scheme.component_type,
        critical=critical,
        timeout=timeout,
        target=redact_url(dependency.url),
    )


# The database's check's name in the health document, which no dependency may take.
DATABASE = "database"


def database_check(url: str, critical: bool, timeout: float) -> Check:
    """The check of the database features keep their records in (PETSAGE_DATABASE_URL,
    as ``petsage.config`` leaves it): an SQLite file opened and read, or PostgreSQL's
    own dependency check, a new login each run, apart from the workers' pools."""
    scheme, _, rest = url.partition("://")
    if scheme == "sqlite":
        path = unquote(urlsplit(url).path.removeprefix("/"))
        run, target = sqlite_probe(path, timeout), f"sqlite:///{path}"
    else:
        dependency = Dependency(DATABASE, f"postgresql://{rest}")
        run, target = postgresql_probe(dependency, timeout), redact_url(dependency.url)
    return Check(
        name=DATABASE,
        run=run,
        component=DATABASE,
        measurement="responseTime",
        component_type="datastore",
        critical=critical,
        timeout=timeout,
        target=target,
    )
