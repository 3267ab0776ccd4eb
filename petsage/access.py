"""Who may see operational details: the health token, or a trusted network."""

import hmac
import ipaddress
from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from _typeshed.wsgi import WSGIEnvironment

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


class Access:
    """Grants details to callers with the bearer token or from a trusted network."""

    def __init__(self, token: str, networks: Sequence[Network] = ()) -> None:
        self._authorization = f"Bearer {token}".encode() if token else None
        self.networks = tuple(networks)

    @property
    def restricted(self) -> bool:
        """Whether a token or a network is configured at all."""
        return self._authorization is not None or bool(self.networks)

    @property
    def has_token(self) -> bool:
        """Whether a token is configured."""
        return self._authorization is not None

    def allows(self, environ: "WSGIEnvironment") -> bool:
        """Whether the caller sent the token (constant-time) or calls from a network."""
        if self._authorization is not None:
            sent = environ.get("HTTP_AUTHORIZATION", "").encode("latin-1", "replace")
            if hmac.compare_digest(sent, self._authorization):
                return True
        if self.networks:
            try:
                address = ipaddress.ip_address(environ.get("REMOTE_ADDR", ""))
            except ValueError:
                return False
            return any(address in network for network in self.networks)
        return False
