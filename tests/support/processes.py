"""Processes and sockets on 127.0.0.1, read from /proc (Linux) so that no extra
package is needed: free ports, a master's workers, which process serves a
connection, whether a process is gone, and polling until a condition holds."""

import contextlib
import http.client
import os
import time
from collections.abc import Callable
from pathlib import Path

from tests.support.gunicorn_process import GunicornServer
from tests.support.ports import free_ports as free_ports

# What the command line of an instance's checker process holds.
CHECKER_MODULE = b"petsage.serving.checker"


def is_checker(pid: int) -> bool:
    """Whether ``pid`` is an instance's checker process (or one of its runners)."""
    try:
        return CHECKER_MODULE in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False


def children(pid: int) -> set[int]:
    """A gunicorn master's workers: the processes whose parent is ``pid``, but for
    its checker process (``checkers``)."""
    return {child for child in all_children(pid) if not is_checker(child)}


def checkers(pid: int) -> set[int]:
    """A gunicorn master's checker processes (one, two while a reload hands over)."""
    return {child for child in all_children(pid) if is_checker(child)}


def all_children(pid: int) -> set[int]:
    """The processes whose parent is ``pid``."""
    found = set()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue  # exited meanwhile
        # The command name, in parentheses, may hold spaces: the fields follow it.
        fields = stat[stat.rindex(")") + 2 :].split()
        if int(fields[1]) == pid:
            found.add(int(entry))
    return found


def tcp_connections(port: int) -> dict[int, int]:
    """Established IPv4 connections whose local port is ``port``: peer port -> inode."""
    found = {}
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        local, remote, state, inode = fields[1], fields[2], fields[3], fields[9]
        if state == "01" and int(local.split(":")[1], 16) == port:
            found[int(remote.split(":")[1], 16)] = int(inode)
    return found


def socket_inodes(pid: int) -> set[int]:
    """The inodes of the sockets ``pid`` holds open."""
    inodes = set()
    directory = f"/proc/{pid}/fd"
    for fd in os.listdir(directory):
        with contextlib.suppress(OSError):
            target = os.readlink(f"{directory}/{fd}")
            if target.startswith("socket:["):
                inodes.add(int(target[8:-1]))
    return inodes


def wait_until(condition: Callable[[], bool], timeout: float, what: str) -> float:
    """Poll ``condition`` until it holds; the seconds that took."""
    started = time.monotonic()
    while not condition():
        if time.monotonic() - started > timeout:
            raise AssertionError(f"not within {timeout} s: {what}")
        time.sleep(0.02)
    return time.monotonic() - started


def answers(port: int, path: str, timeout: float = 2.0) -> int | None:
    """The status ``path`` answers on a new connection, or None if it cannot."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    return status_on(connection, path)


def status_on(connection: http.client.HTTPConnection, path: str) -> int | None:
    """The status ``path`` answers on ``connection`` (closed after), or None when
    the connection fails or is closed instead."""
    try:
        connection.request("GET", path)
        response = connection.getresponse()
        response.read()
        return response.status
    except (OSError, http.client.HTTPException):
        return None
    finally:
        connection.close()


def served_by(pid: int, connection: http.client.HTTPConnection, port: int) -> bool:
    """Whether process ``pid`` holds the server end of ``connection`` (kept alive)."""
    assert connection.sock is not None
    client_port = connection.sock.getsockname()[1]
    inode = tcp_connections(port).get(client_port)
    return inode is not None and inode in socket_inodes(pid)


def wait_for_workers(server: GunicornServer, count: int = 2) -> list[int]:
    """The pids of the master's ``count`` workers, once each has answered a request.

    gunicorn reports it listens when its first worker boots; a test that measures how
    the workers share connections must not start before the last one accepts them.
    """
    return wait_for_workers_of(server.process.pid, server.port, count)


def wait_for_workers_of(
    master: int, port: int, count: int = 2, timeout: float = 90.0
) -> list[int]:
    """The pids of ``master``'s ``count`` workers, serving on ``port``, once each
    has answered a request (``wait_for_workers``, for a master the test did not
    start, such as a daemon's). ``timeout`` is only a bound against a hang: booting
    workers on a loaded host takes its time."""
    answered: set[int] = set()

    def all_answered() -> bool:
        workers = children(master)
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
        try:
            connection.request("GET", "/livez")
            response = connection.getresponse()
            response.read()
            answered.update(pid for pid in workers if served_by(pid, connection, port))
        except (OSError, http.client.HTTPException):
            pass
        finally:
            connection.close()
        return len(workers) == count and workers <= answered

    wait_until(all_answered, timeout, f"{count} workers answering")
    return sorted(children(master))


def gone(pid: int) -> bool:
    """Whether process ``pid`` has exited (and been reaped, or is a zombie)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return True
    return state == "Z"
