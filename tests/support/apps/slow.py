"""PetSage with a slow route, to keep every worker thread busy."""

import time

from petsage import create_app

SLOW_SECONDS = 2.0

app = create_app()


@app.get("/slow")
def slow() -> dict[str, str]:
    """Answer after SLOW_SECONDS, as a request waiting on a slow backend would."""
    time.sleep(SLOW_SECONDS)
    return {"status": "slow"}
