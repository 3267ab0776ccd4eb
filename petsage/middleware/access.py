"""Who may see operational details, and who the caller is behind a proxy.

Details (``/metrics``, check results, ``?verbose``) go to callers with the bearer token,
or, on the management listener only, to callers whose connection comes from a trusted
network. On the public port a caller's address is the connection's, unless the
connection comes from a proxy the operator named: then it is the address that proxy put
last in ``X-Forwarded-For``, for the access log (it grants nothing there). On the
management listener it is always the connection's: no forwarding header is read.
"""

import hmac
import ipaddress
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING

from werkzeug.middleware.proxy_fix import ProxyFix

if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIApplication, WSGIEnvironment

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def address_in(address: str, networks: Sequence[Network]) -> bool:
    """Whether ``address`` (an IP address as text) lies in one of ``networks``."""
    try:
        parsed = ipaddress.ip_address(address)
    except ValueError:
        return False
    return any(parsed in network for network in networks)


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
        return address_in(environ.get("REMOTE_ADDR", ""), self.networks)


# The request headers that claim another address, host, scheme or prefix than the
# connection's: Werkzeug's ProxyFix reads the X-Forwarded-* ones, RFC 7239 defines
# Forwarded, and some proxies send X-Real-IP.
FORWARDING_HEADERS = (
    "HTTP_FORWARDED",
    "HTTP_X_FORWARDED_FOR",
    "HTTP_X_FORWARDED_HOST",
    "HTTP_X_FORWARDED_PORT",
    "HTTP_X_FORWARDED_PREFIX",
    "HTTP_X_FORWARDED_PROTO",
    "HTTP_X_REAL_IP",
)


class PeerOnly:
    """WSGI middleware for the management listener: the caller is the connection's
    peer, whatever the request claims.

    No proxy belongs in front of that listener, so a forwarding header there can only
    come from the caller itself; were it read, any caller could claim an address in
    PETSAGE_TRUSTED_NETWORKS. PETSAGE_TRUSTED_PROXIES is not consulted. The headers
    are removed from the environ, so that no later layer can read them either.
    """

    def __init__(self, app: "WSGIApplication") -> None:
        self.app = app

    def __call__(
        self, environ: "WSGIEnvironment", start_response: "StartResponse"
    ) -> Iterable[bytes]:
        for key in FORWARDING_HEADERS:
            environ.pop(key, None)
        return self.app(environ, start_response)


class ForwardedFor:
    """WSGI middleware for the public port: behind a named proxy, the caller's address
    is the one the proxy forwarded (Werkzeug's ``ProxyFix``, one hop of
    ``X-Forwarded-For``), for the access log.

    Anyone can send ``X-Forwarded-For``, so it is read only on connections from
    ``proxies``, and only its last entry, the one the proxy itself wrote (what a client
    sent stays before it). A named proxy must always send the header: a request it
    forwards without one keeps the proxy's address. The environ is rewritten in
    place, so gunicorn's access log, which reads the same environ after the request,
    records the forwarded address too.
    """

    def __init__(self, app: "WSGIApplication", proxies: Sequence[Network]) -> None:
        self.app = app
        self.proxies = tuple(proxies)
        self._forwarded = ProxyFix(app, x_for=1, x_proto=0, x_host=0)

    def __call__(
        self, environ: "WSGIEnvironment", start_response: "StartResponse"
    ) -> Iterable[bytes]:
        if self.proxies and address_in(environ.get("REMOTE_ADDR", ""), self.proxies):
            return self._forwarded(environ, start_response)
        return self.app(environ, start_response)
