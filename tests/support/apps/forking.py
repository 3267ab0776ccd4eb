"""PetSage with a check that forks without exec: a child that ignores SIGTERM and
sleeps, as a check's helper process that outlives its worker would.

Each child's pid is appended to the file ``CHILDREN_VARIABLE`` names, for the test to
find it (and kill it at its end).
"""

import os
import signal
import time

from petsage import create_app
from petsage.health import Check, Observation, register_check

CHILDREN_VARIABLE = "FORKING_CHECK_CHILDREN"
# Long enough to outlive any test; a test kills the children it made first.
CHILD_SECONDS = 300

app = create_app()
forked: list[int] = []


def fork_once() -> Observation:
    """Fork one child in this process, the first time the check runs here."""
    if not forked:
        child = os.fork()
        if child == 0:
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
            record = os.open(
                os.environ[CHILDREN_VARIABLE], os.O_WRONLY | os.O_APPEND | os.O_CREAT
            )
            os.write(record, f"{os.getpid()}\n".encode())
            os.close(record)
            time.sleep(CHILD_SECONDS)
            os._exit(0)
        forked.append(child)
    return Observation(len(forked), "children")


register_check(
    app,
    Check("forking", fork_once, component="forking", measurement="children"),
)
