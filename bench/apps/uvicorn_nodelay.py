"""uvicorn's command line, with the listening socket it shares marked as TCP.

With ``--workers N`` uvicorn binds the socket itself with ``proto`` 0, so asyncio never
sets ``TCP_NODELAY`` on the connections its workers accept, and every keep-alive
response after the first waits about 40 ms for the client's delayed ACK
(Kludex/uvicorn#3149, open in uvicorn 0.54.0; the fix proposed in #3154 and #3155 is
this one). Measuring that stall would say nothing about FastAPI's cost per request, so
the FastAPI baselines run with the fix; the unpatched command is measured beside them.

Usage, as ``uvicorn``'s: ``python -m bench.apps.uvicorn_nodelay APP [OPTIONS]``.
"""

import socket

import uvicorn.config
from uvicorn.main import main

_bind_socket = uvicorn.config.Config.bind_socket


def bind_socket(self: uvicorn.config.Config) -> socket.socket:
    """uvicorn's socket, re-wrapped with ``proto`` ``IPPROTO_TCP`` when it is TCP."""
    sock = _bind_socket(self)
    if sock.family in (socket.AF_INET, socket.AF_INET6) and sock.proto == 0:
        # Same descriptor, bound and inheritable; only Python's idea of it changes,
        # and with it what the workers' accepted sockets report to asyncio.
        sock = socket.socket(
            sock.family, sock.type, socket.IPPROTO_TCP, fileno=sock.detach()
        )
        sock.set_inheritable(True)
    return sock


if __name__ == "__main__":
    uvicorn.config.Config.bind_socket = bind_socket  # type: ignore[method-assign]
    main()
