"""The management listener's socket: opened once by the gunicorn master, inherited by
its workers.

gunicorn.conf.py opens it when the master loads its config, before any worker is
forked; every worker inherits it through fork and serves it
(petsage.serving.probe_listener). The kernel's queue of connections belongs to the
socket, not to a worker, so a worker that exits or is replaced drops nothing queued:
the others, or its successor, accept them. No ``SO_REUSEPORT``: a second instance on
the same address fails to start with one line, instead of silently sharing the port.

gunicorn executes the config file again, in the same master, on SIGHUP; the socket is
kept here, outside the config file's namespace, so a reload reuses it (or, when the
reload changed the address, opens the new one and closes the old). A SIGUSR2 upgrade
starts a new master by exec: ``pre_exec`` hands it the socket's descriptor in
``HANDOVER_VARIABLE``, as gunicorn hands over its own listeners in GUNICORN_FD, and the
new master adopts it instead of binding an address the old master still holds.
"""

import contextlib
import errno
import ipaddress
import os
import socket
from collections.abc import MutableMapping

# gunicorn's own default backlog: connections the kernel queues for the workers.
BACKLOG = 2048
# The descriptor number a re-executing master hands to its successor.
HANDOVER_VARIABLE = "PETSAGE_MANAGEMENT_FD"
SETTING = "PETSAGE_MANAGEMENT_BIND"
# Why an address is in use, as far as PetSage can tell; the public port's check says
# the same (petsage.serving.server).
IN_USE = "another PetSage instance, or another program, listens there"

# This master's socket, by the address it was opened for; inherited by its workers.
_opened: dict[str, socket.socket] = {}


class ManagementSocketError(RuntimeError):
    """The management address cannot be listened on; its message is one line."""


def host_and_port(bind: str) -> tuple[str, int]:
    """``HOST:PORT`` or ``[V6]:PORT`` as a host for getaddrinfo and a port."""
    host, _, port = bind.rpartition(":")
    return host.removeprefix("[").removesuffix("]"), int(port)


def addresses_of(bind: str) -> list[tuple[socket.AddressFamily, tuple[str, int]]]:
    """The families and socket addresses ``bind`` resolves to, IPv4 and IPv6 alike."""
    host, port = host_and_port(bind)
    try:
        found = socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )
    except socket.gaierror as error:
        raise ManagementSocketError(
            f"{SETTING}={bind!r} cannot be resolved: {error.strerror}"
        ) from None
    return [
        (family, (str(address[0]), int(address[1])))
        for family, _, _, _, address in found
    ]


def listening_socket(bind: str) -> socket.socket | None:
    """This master's listening socket for ``bind`` (HOST:PORT), or None when empty.

    The one it already has (a reload), the one the master before a SIGUSR2 upgrade
    handed over, or a new one; any other it held is closed (the address changed).
    Raises ``ManagementSocketError`` when the address is in use or cannot be
    listened on.
    """
    held = list(_opened.values())
    handed = handed_over()
    if handed is not None:
        held.append(handed)
    wanted = {address for _, address in addresses_of(bind)} if bind else set()
    kept = next((sock for sock in held if listens_on(sock, wanted)), None)
    for sock in held:
        if sock is not kept:
            sock.close()
    _opened.clear()
    if bind:
        _opened[bind] = kept or opened(bind)
    return _opened.get(bind)


def listening_sockets() -> list[socket.socket]:
    """The sockets this master opened, which its workers inherited."""
    return list(_opened.values())


def listening_url() -> str | None:
    """The URL of the socket this master holds (``http://HOST:PORT``, IPv6 in
    brackets), as the kernel bound it; None when it holds none."""
    for sock in _opened.values():
        host, port = sock.getsockname()[:2]
        return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"
    return None


def overlaps(address: tuple[str, int]) -> bool:
    """Whether ``address`` (HOST, PORT: an address gunicorn is about to bind) names
    this master's management socket's address: the same port, and the same IP
    address or a wildcard that covers the other (``0.0.0.0`` every IPv4 address,
    ``::`` every address of either family)."""
    host, port = address
    for sock in _opened.values():
        held_host, held_port = sock.getsockname()[:2]
        if port != held_port:
            continue
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        try:
            found = socket.getaddrinfo(host, port, family, socket.SOCK_STREAM)
        except socket.gaierror:
            continue  # gunicorn's bind will say so
        held = ipaddress.ip_address(held_host)
        if any(
            covers(held, other) or covers(other, held)
            for other in (ipaddress.ip_address(entry[4][0]) for entry in found)
        ):
            return True
    return False


def covers(
    first: ipaddress.IPv4Address | ipaddress.IPv6Address,
    second: ipaddress.IPv4Address | ipaddress.IPv6Address,
) -> bool:
    """Whether a socket bound to ``first`` takes ``second``'s address too."""
    if first == second:
        return True
    return first.is_unspecified and (first.version == 6 or second.version == 4)


def inherited(bind: str) -> socket.socket:
    """In a worker: the socket its master opened for ``bind``."""
    try:
        return _opened[bind]
    except KeyError:
        raise ManagementSocketError(
            f"{SETTING}={bind!r}: the gunicorn master opened no socket for it"
            " (gunicorn.conf.py opens it)"
        ) from None


def opened(bind: str) -> socket.socket:
    """A new listening socket on ``bind``: the first address it resolves to that
    can be bound, IPv4 or IPv6."""
    errors: list[OSError] = []
    for family, address in addresses_of(bind):
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            # Lets a restart bind while old connections sit in TIME_WAIT; unlike
            # SO_REUSEPORT, it never lets two listeners share the address.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind(address)
            sock.listen(BACKLOG)
        except OSError as error:
            sock.close()
            errors.append(error)
            continue
        # Workers wait for connections with poll and accept without blocking
        # (petsage.serving.probe_listener); the flag is shared by every process.
        sock.setblocking(False)
        return sock
    why = "; ".join(error.strerror or str(error) for error in errors)
    if any(error.errno == errno.EADDRINUSE for error in errors):
        why += f" ({IN_USE})"
    raise ManagementSocketError(f"{SETTING}={bind!r} cannot be listened on: {why}")


def listens_on(sock: socket.socket, addresses: set[tuple[str, int]]) -> bool:
    """Whether ``sock`` is a listening socket bound to one of ``addresses``."""
    try:
        listening = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN)
        return bool(listening) and sock.getsockname()[:2] in addresses
    except OSError:
        return False


def handed_over() -> socket.socket | None:
    """The socket a master upgraded with SIGUSR2 handed to this one, if any."""
    handed = os.environ.pop(HANDOVER_VARIABLE, "")
    if not handed.isdigit():
        return None
    try:
        sock = socket.socket(fileno=int(handed))
    except OSError:
        return None
    # Its workers are forked, never executed: nothing else should inherit it.
    sock.set_inheritable(False)
    sock.setblocking(False)
    return sock


def hand_over(environ: MutableMapping[str, str]) -> None:
    """Before a SIGUSR2 re-exec: let the new master inherit this master's socket.

    ``environ`` is the environment gunicorn gives the new master (``env_orig``).
    """
    environ.pop(HANDOVER_VARIABLE, None)
    for sock in _opened.values():
        with contextlib.suppress(OSError):
            os.set_inheritable(sock.fileno(), True)
            environ[HANDOVER_VARIABLE] = str(sock.fileno())
