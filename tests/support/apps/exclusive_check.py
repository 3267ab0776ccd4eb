"""PetSage with a critical check that notes whether another run of it is under way
anywhere on the host: each run takes an exclusive, non-blocking ``flock`` on the file
EXCLUSIVE_LOCK_VARIABLE names and holds it RUN_SECONDS, and appends ``run`` to
``<lock>.runs`` or, when another run holds the lock, ``overlap``. A dependency check
that keeps a connection would hold two connections at an overlap."""

import fcntl
import os
import time

from petsage import create_app
from petsage.health import Check, Observation, register_check

RUN_SECONDS = 1.0
EXCLUSIVE_LOCK_VARIABLE = "EXCLUSIVE_CHECK_LOCK"
RUN, OVERLAP = "run", "overlap"

app = create_app()


def note(word: str) -> None:
    """Append ``word`` to the runs file, a line in one write."""
    path = os.environ[EXCLUSIVE_LOCK_VARIABLE] + ".runs"
    descriptor = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        os.write(descriptor, f"{word}\n".encode())
    finally:
        os.close(descriptor)


def exclusive() -> Observation:
    """Hold the lock RUN_SECONDS; note an overlap when another run holds it."""
    with open(os.environ[EXCLUSIVE_LOCK_VARIABLE], "a") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            note(OVERLAP)
            return Observation(0, "runs")
        note(RUN)
        time.sleep(RUN_SECONDS)
    return Observation(1, "runs")


register_check(
    app,
    Check("exclusive", exclusive, component="exclusive", measurement="runs"),
)
