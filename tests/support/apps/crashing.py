"""PetSage with one more route, which raises: how errors look from outside."""

import logging

from petsage import create_app

app = create_app()
logger = logging.getLogger("petsage.tests")


@app.get("/crash")
def crash() -> str:
    """Log inside the request, then fail as a bug would."""
    logger.warning("about to fail")
    raise RuntimeError("secret detail: password=hunter2")
