"""What a real gunicorn serving PetSage logged: its access records, and a wait for a
line."""

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
