"""What a real gunicorn serving PetSage logged: its access records, its messages at
a level, and a wait for a line."""

import json
import time
from typing import Any

from tests.support.gunicorn_process import GunicornServer


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
