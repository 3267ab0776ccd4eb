"""The ``smoke_test`` blueprint: ``GET /api/v1/smoke-test``."""

from flask_smorest import Blueprint

from petsage.features.smoke_test.schemas import SmokeTestResponseSchema
from petsage.features.smoke_test.service import SmokeTestResult, run_smoke_test

TAG = {
    "name": "System Health & Smoke Tests",
    "description": "Endpoints that tell deploy pipelines and probes the service works.",
}

DESCRIPTION = (
    "This endpoint verifies that the PetSage API is running and able to process"
    " requests. It serves as a basic health check and confirms the end-to-end pipeline"
    " is operational."
)

NO_STORE = {
    "description": "Always no-store: a cached answer would hide an instance that"
    " stopped answering.",
    "schema": {"type": "string", "example": "no-store"},
}

bp = Blueprint("smoke_test", __name__, description=TAG["description"])


@bp.route("/smoke-test", methods=["GET"], tags=[TAG["name"]])
@bp.response(
    200,
    SmokeTestResponseSchema,
    description="The service is running and processed the request end to end.",
    headers={"Cache-Control": NO_STORE},
)
# Public: deploy pipelines call it with no credentials.
@bp.doc(operationId="runSmokeTest", description=DESCRIPTION, security=[])
def smoke_test() -> tuple[SmokeTestResult, dict[str, str]]:
    """Perform a system smoke test"""
    return run_smoke_test(), {"Cache-Control": "no-store"}
