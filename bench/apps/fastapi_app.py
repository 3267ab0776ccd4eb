"""The smoke test as a FastAPI user would write it: a pydantic response model.

Served by uvicorn with as many worker processes as gunicorn gets, once with uvicorn's
defaults (access log on) and once with ``--no-access-log``.
"""

from fastapi import FastAPI, Response
from pydantic import BaseModel, Field

from bench.apps import SMOKE_TEST_PATH


class SmokeTestResponse(BaseModel):
    """The body of a successful smoke test."""

    status: str = Field(description="The operational status of the service.")
    message: str = Field(
        description="A confirmation message indicating the test passed."
    )


app = FastAPI(title="PetSage Backend API (FastAPI baseline)")

PASSED = SmokeTestResponse(status="ok", message="PetSage smoke test successful!")


@app.get(SMOKE_TEST_PATH)
async def smoke_test(response: Response) -> SmokeTestResponse:
    """Perform a system smoke test."""
    response.headers["Cache-Control"] = "no-store"
    return PASSED
