"""Idle and slowloris connections held open against a port, and the kubelet-like
probes that measure what the server still answers meanwhile."""

import contextlib
import socket
import threading
import time
from dataclasses import dataclass

from tests.support.load import Tally
from tests.support.processes import answers

# A request head that never ends: after these bytes, one "a" a second, forever.
SLOWLORIS_HEAD = b"GET /livez HTTP/1.1\r\nHost: petsage\r\nX-Slowloris: "
PROBE_INTERVAL = 0.2
PROBE_TIMEOUT = 1.0  # kubelet's default timeoutSeconds


@dataclass
class HeldConnection:
    """One attacking connection, and how much of its head it has sent."""

    sock: socket.socket
    slow: bool
    sent: int = 0

    def closed_by_server(self) -> bool:
        """Whether the server closed, reset or answered (e.g. 408) this connection."""
        try:
            # Returns at once: b"" once closed, or the first byte of an answer.
            self.sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT)
        except BlockingIOError:
            return False  # open, and nothing to read: still held
        except OSError:
            pass  # reset
        return True

    def trickle(self) -> None:
        """Send the next byte of the endless head."""
        byte = SLOWLORIS_HEAD[self.sent : self.sent + 1] or b"a"
        with contextlib.suppress(OSError):  # noticed as closed at the next tick
            self.sock.send(byte)
            self.sent += 1


class SlowClients:
    """``idle`` silent connections and ``slow`` slowloris connections to a port.

    Every second each slowloris connection sends one more byte of a head that never
    ends. A connection the server closes (nginx times them out) is opened again at the
    next tick, as an attacker would, so about ``idle`` + ``slow`` stay open throughout.
    """

    def __init__(self, port: int, idle: int, slow: int) -> None:
        self.port = port
        self.idle = idle
        self.slow = slow
        self.reopened = 0
        self.not_opened = 0
        self.connections: list[HeldConnection] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _open(self, slow: bool) -> HeldConnection | None:
        try:
            sock = socket.create_connection(("127.0.0.1", self.port), timeout=2)
        except OSError:
            self.not_opened += 1
            return None
        # Non-blocking: a socket with a timeout would wait out the timeout in recv
        # instead of answering MSG_DONTWAIT at once.
        sock.setblocking(False)
        return HeldConnection(sock, slow)

    def _tick(self) -> None:
        kept = []
        for connection in self.connections:
            if connection.closed_by_server():
                connection.sock.close()
                self.reopened += 1
                replacement = self._open(connection.slow)
                if replacement is None:
                    continue
                connection = replacement
            if connection.slow:
                connection.trickle()
            kept.append(connection)
        self.connections = kept

    def _run(self) -> None:
        while not self._stop.wait(1.0):
            self._tick()

    def __enter__(self) -> "SlowClients":
        opened = [self._open(slow=n >= self.idle) for n in range(self.idle + self.slow)]
        self.connections = [c for c in opened if c is not None]
        for connection in self.connections:
            if connection.slow:
                connection.trickle()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=10)
        for connection in self.connections:
            connection.sock.close()


def probe_for(port: int, path: str, seconds: float) -> Tally:
    """Probe ``path`` every PROBE_INTERVAL for ``seconds``, as a kubelet would."""
    tally = Tally()
    deadline = time.monotonic() + seconds
    while (started := time.monotonic()) < deadline:
        status = answers(port, path, timeout=PROBE_TIMEOUT)
        tally.sent += 1
        if status == 200:
            tally.latencies.append(time.monotonic() - started)
        else:
            at = seconds - (deadline - started)
            tally.failed.append(f"+{at:.1f} s: {status or 'no answer in 1 s'}")
            tally.lost += status is None
        time.sleep(max(0.0, started + PROBE_INTERVAL - time.monotonic()))
    return tally
