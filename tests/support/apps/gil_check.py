"""PetSage with a check that holds the GIL for HOLD_SECONDS each run, as a C call
that never releases it would: non-critical, or critical when CRITICAL_VARIABLE is
``1``. Registered as a feature registers a check (``register_check``)."""

import ctypes
import os

from petsage import create_app
from petsage.health import Check, Observation, register_check

HOLD_SECONDS = 8
CRITICAL_VARIABLE = "GIL_CHECK_CRITICAL"

app = create_app()
# The C library's functions, called without releasing the GIL (ctypes releases it
# for a CDLL, never for a PyDLL).
C_HOLDING_THE_GIL = ctypes.PyDLL(None)


def hold_gil() -> Observation:
    """Hold the GIL for HOLD_SECONDS, then pass (too late: it has timed out)."""
    C_HOLDING_THE_GIL.sleep(HOLD_SECONDS)
    return Observation(HOLD_SECONDS, "s")


register_check(
    app,
    Check(
        "gil",
        hold_gil,
        component="gil",
        measurement="held",
        critical=os.environ.get(CRITICAL_VARIABLE) == "1",
    ),
)
