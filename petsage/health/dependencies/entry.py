"""One dependency: a name and the URL where it is checked, and that URL as it is shown.

Its own module, importing no other of the package: the registry of schemes, the probes
and the settings' parser all build on it.
"""

from dataclasses import dataclass, field
from urllib.parse import parse_qs, urlsplit, urlunsplit

from petsage.config import PASSWORD_FILE


@dataclass(frozen=True)
class Dependency:
    """Another system PetSage needs, checked at ``url``: tcp://HOST:PORT, http(s),
    or a datastore (postgresql, redis) in its own protocol."""

    name: str
    # It may hold a password: never in a repr.
    url: str = field(repr=False)

    @property
    def scheme(self) -> str:
        """The URL's scheme, which says how the dependency is checked."""
        return urlsplit(self.url).scheme

    @property
    def password_file(self) -> str | None:
        """The file holding the password, when the URL names one."""
        values = parse_qs(urlsplit(self.url).query).get(PASSWORD_FILE)
        return values[-1] if values else None

    @property
    def driver_url(self) -> str:
        """The URL the driver is given: PetSage's own query parameter removed."""
        # Split by hand: urlunsplit would turn unix:///path into unix:/path.
        base, _, query = self.url.partition("?")
        kept = [
            parameter
            for parameter in query.split("&")
            if parameter and parameter.partition("=")[0] != PASSWORD_FILE
        ]
        return f"{base}?{'&'.join(kept)}" if kept else base


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
