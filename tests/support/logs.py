"""What a real gunicorn serving PetSage logged: its access records, its messages at
a level, a wait for a line, and a pipe for its output that the test stops reading."""

import fcntl
import json
import os
import threading
import time
from typing import Any

from tests.support.gunicorn_process import GunicornServer, complete_lines


def access_records(server: GunicornServer, path: str) -> list[dict[str, Any]]:
    """The access-log records of requests to ``path``."""
    return [
        record
        for record in server.log_records()
        if record["logger"] == "gunicorn.access" and record["path"] == path
    ]


def wait_for_log(server: GunicornServer, text: str, timeout: float = 30.0) -> None:
    """Wait until the server has logged ``text`` in a whole line (it logs after
    replying)."""
    deadline = time.monotonic() + timeout
    while (
        not any(text in line for line in server.log_lines())
        and time.monotonic() < deadline
    ):
        time.sleep(0.02)


def messages_at(server: GunicornServer, level: str, text: str = "") -> list[str]:
    """The messages logged at ``level`` that contain ``text``, in order, from JSON
    lines and text lines (``ASCTIME LEVEL LOGGER: MESSAGE``) alike."""
    found = []
    for line in server.log_lines():
        if line.startswith("{"):
            record = json.loads(line)
            logged, message = record.get("level"), str(record.get("message", ""))
        else:
            head, _, message = line.partition(": ")
            logged = head.split()[2] if len(head.split()) > 2 else None
        if logged == level and text in message:
            found.append(message)
    return found


class LogPipe:
    """A pipe for a server's stdout and stderr, one page large, that a thread of the
    test reads until ``stall`` and again from ``resume``.

    Its read end stays open while stalled, as a log shipper's does when it backs up:
    a writer finds the pipe full, never closed.
    """

    def __init__(self) -> None:
        self.read_end, self.write_end = os.pipe()
        # The smallest pipe the kernel makes (a page): a few lines fill it.
        fcntl.fcntl(self.write_end, fcntl.F_SETPIPE_SZ, 4096)
        self.reading = threading.Event()
        self.reading.set()
        self.chunks: list[bytes] = []
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        while self.reading.wait():
            try:
                chunk = os.read(self.read_end, 65536)
            except OSError:
                return
            if not chunk:
                return
            self.chunks.append(chunk)

    def stall(self) -> None:
        """Stop reading, after the read under way if any."""
        self.reading.clear()

    def resume(self) -> None:
        """Read again, all that waits and what comes."""
        self.reading.set()

    def lines(self) -> list[str]:
        """The whole lines read so far."""
        return complete_lines(b"".join(self.chunks).decode(errors="replace"))

    def records(self) -> list[dict[str, Any]]:
        """The JSON records among them."""
        return [json.loads(line) for line in self.lines() if line.startswith("{")]

    def close(self) -> None:
        """Close both ends once the server is gone: the read end only after the
        reader has read the end of the pipe, so it never reads a descriptor the
        number goes to next."""
        os.close(self.write_end)
        self.resume()
        self.reader.join(timeout=10)
        if not self.reader.is_alive():
            os.close(self.read_end)
