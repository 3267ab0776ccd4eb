"""Ports of 127.0.0.1 the tests give servers by number, from outside the kernel's
ephemeral range.

A port found by binding port 0 and closing it comes from the ephemeral range
(``/proc/sys/net/ipv4/ip_local_port_range``), which is also where the kernel takes the
source port of every client connection the suite opens, thousands a minute under
load: between the test closing it and a server binding it, a connection may take it,
and the server's start fails with "Address already in use". These ports come from
below that range, where the kernel assigns nothing by itself; each pytest-xdist
worker takes them from a block of its own, starting at a place its pid chooses, so
that two processes of one run rarely try the same port, and a port still in use is
passed over.
"""

import itertools
import os
import socket
from collections.abc import Iterator
from pathlib import Path

# Six blocks of 2000 from 20000: below the default ephemeral range (32768 up).
FIRST_PORT = 20000
BLOCK = 2000
BLOCKS = 6


def ephemeral_low() -> int:
    """The first port of the kernel's ephemeral range."""
    try:
        return int(
            Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0]
        )
    except (OSError, ValueError, IndexError):
        return 32768


def candidates() -> Iterator[int]:
    """This process's ports to try, in its block, endlessly."""
    worker = os.environ.get("PYTEST_XDIST_WORKER", "gw0").removeprefix("gw")
    index = int(worker) % BLOCKS if worker.isdigit() else 0
    low = FIRST_PORT + index * BLOCK
    high = min(low + BLOCK, ephemeral_low())
    ports = range(low, high)
    start = os.getpid() % len(ports)
    return itertools.cycle([*ports[start:], *ports[:start]])


CANDIDATES = candidates()


def bindable(port: int) -> bool:
    """Whether nothing holds ``port`` of 127.0.0.1 now."""
    with socket.socket() as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_ports(count: int) -> list[int]:
    """``count`` distinct ports of 127.0.0.1 that nothing holds right now."""
    ports: list[int] = []
    while len(ports) < count:
        port = next(CANDIDATES)
        if port not in ports and bindable(port):
            ports.append(port)
    return ports
