"""PetSage with a route that holds the GIL: a worker whose Python cannot run."""

import ctypes
import time

from petsage import create_app

HOLD_SECONDS = 4

app = create_app()
# The C library's functions, called without releasing the GIL (ctypes releases it
# for a CDLL, never for a PyDLL).
C_HOLDING_THE_GIL = ctypes.PyDLL(None)


@app.get("/hold-gil")
def hold_gil() -> dict[str, float]:
    """Hold the GIL for HOLD_SECONDS, as a C extension that never releases it."""
    started = time.monotonic()
    C_HOLDING_THE_GIL.sleep(HOLD_SECONDS)
    return {"held": time.monotonic() - started}
