"""PetSage with a route held until the test releases it: a request in flight for as
long as a test needs, whatever the machine's load."""

import time
from pathlib import Path

from flask import request

from petsage import create_app

# The longest a request waits to be released: longer than any test waits for it.
HOLD_LIMIT = 120.0

app = create_app()


@app.get("/held")
def held() -> dict[str, str]:
    """Create the file ``?started=``, then answer once the file ``?until=`` exists
    (HOLD_LIMIT seconds at most)."""
    Path(request.args["started"]).touch()
    release = Path(request.args["until"])
    deadline = time.monotonic() + HOLD_LIMIT
    while not release.exists() and time.monotonic() < deadline:
        time.sleep(0.02)
    return {"status": "released" if release.exists() else "not released"}
