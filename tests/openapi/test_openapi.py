"""GET /openapi.json: the contract OpenAPI consumers read."""

from typing import Any

import pytest
from flask.testing import FlaskClient
from openapi_spec_validator import validate

from tests.support.apps.resource import create_resource_app

SMOKE_TEST_DESCRIPTION = (
    "This endpoint verifies that the PetSage API is running and able to process"
    " requests. It serves as a basic health check and confirms the end-to-end pipeline"
    " is operational."
)


@pytest.fixture(params=["service", "with a resource"])
def document(request: pytest.FixtureRequest, client: FlaskClient) -> dict[str, Any]:
    """The OpenAPI document as the service serves it; and as it serves it with a
    resource beside (tests.support.apps.resource), which every check of every
    operation here must pass too."""
    if request.param == "with a resource":
        client = create_resource_app({"TESTING": True}).test_client()
    response = client.get("/openapi.json")
    assert response.status_code == 200
    assert response.mimetype == "application/json"
    assert isinstance(response.json, dict)
    return response.json


@pytest.fixture
def smoke_test_operation(document: dict[str, Any]) -> dict[str, Any]:
    """The smoke-test operation."""
    operation: dict[str, Any] = document["paths"]["/api/v1/smoke-test"]["get"]
    return operation


def test_document_passes_openapi_spec_validator(document: dict[str, Any]) -> None:
    validate(document)


def test_document_is_openapi_3_0_3(document: dict[str, Any]) -> None:
    assert document["openapi"] == "3.0.3"


def test_info_names_the_service(document: dict[str, Any]) -> None:
    info = document["info"]
    assert info["title"] == "PetSage Backend API"
    assert info["version"] == "1.0.0"
    assert info["description"] == "Intelligent assistance for modern pet care."


def test_smoke_test_path_has_its_summary_and_tag(
    smoke_test_operation: dict[str, Any],
) -> None:
    assert smoke_test_operation["summary"] == "Perform a system smoke test"
    assert smoke_test_operation["tags"] == ["System Health & Smoke Tests"]


def test_smoke_test_operation_has_the_specified_description(
    smoke_test_operation: dict[str, Any],
) -> None:
    assert smoke_test_operation["description"] == SMOKE_TEST_DESCRIPTION


def test_smoke_test_answers_the_smoke_test_response_schema(
    smoke_test_operation: dict[str, Any],
) -> None:
    content = smoke_test_operation["responses"]["200"]["content"]
    assert content == {
        "application/json": {
            "schema": {"$ref": "#/components/schemas/SmokeTestResponse"}
        }
    }


def test_smoke_test_response_schema_is_as_specified(document: dict[str, Any]) -> None:
    schema = document["components"]["schemas"]["SmokeTestResponse"]
    assert sorted(schema["required"]) == ["message", "status"]
    assert schema["properties"] == {
        "status": {
            "type": "string",
            "description": "The operational status of the service.",
            "example": "ok",
        },
        "message": {
            "type": "string",
            "description": "A confirmation message indicating the test passed.",
            "example": "PetSage smoke test successful!",
        },
    }


def operations(document: dict[str, Any]) -> list[dict[str, Any]]:
    """Every operation in the document."""
    methods = {"get", "put", "post", "delete", "options", "head", "patch", "trace"}
    return [
        operation
        for path in document["paths"].values()
        for method, operation in path.items()
        if method in methods
    ]


def test_every_tag_used_is_listed_with_a_description(document: dict[str, Any]) -> None:
    used = {tag for operation in operations(document) for tag in operation["tags"]}
    listed = {tag["name"]: tag["description"] for tag in document["tags"]}
    assert used == set(listed)
    assert all(listed.values())


def test_errors_are_documented_as_problem_json(document: dict[str, Any]) -> None:
    default_error = document["components"]["responses"]["DEFAULT_ERROR"]
    assert default_error["content"] == {
        "application/problem+json": {"schema": {"$ref": "#/components/schemas/Problem"}}
    }
    assert sorted(document["components"]["schemas"]["Problem"]["required"]) == [
        "detail",
        "status",
        "title",
        "type",
    ]


def test_every_operation_documents_its_errors(document: dict[str, Any]) -> None:
    for operation in operations(document):
        assert operation["responses"]["default"] == {
            "$ref": "#/components/responses/DEFAULT_ERROR"
        }


@pytest.mark.parametrize(
    "path", ["/livez", "/readyz", "/livez/{check}", "/readyz/{check}", "/health"]
)
def test_health_endpoints_document_pass_and_fail(
    document: dict[str, Any], path: str
) -> None:
    responses = document["paths"][path]["get"]["responses"]
    for status in ("200", "503"):
        assert "application/health+json" in responses[status]["content"]
    assert "Retry-After" in responses["503"]["headers"]


def test_probes_document_their_verbose_text(document: dict[str, Any]) -> None:
    for path in ("/livez", "/readyz"):
        content = document["paths"][path]["get"]["responses"]["200"]["content"]
        assert content["text/plain"]["example"].startswith("[+]")


def test_operation_ids_are_unique(document: dict[str, Any]) -> None:
    ids = [op["operationId"] for op in operations(document) if "operationId" in op]
    assert len(ids) == len(set(ids))


def test_info_names_a_license(document: dict[str, Any]) -> None:
    assert document["info"]["license"]["name"]


def test_the_health_token_is_a_bearer_security_scheme(document: dict[str, Any]) -> None:
    scheme = document["components"]["securitySchemes"]["healthToken"]
    assert (scheme["type"], scheme["scheme"]) == ("http", "bearer")
    assert "PETSAGE_HEALTH_TOKEN" in scheme["description"]


def test_every_operation_declares_its_security(document: dict[str, Any]) -> None:
    schemes = set(document["components"]["securitySchemes"])
    for operation in operations(document):
        assert "security" in operation, (
            f"operation {operation.get('operationId')} declares no security: give its"
            " view @bp.doc(security=[]) if it is public"
        )
        requirements = operation["security"]
        assert all(set(requirement) <= schemes for requirement in requirements)


def test_the_document_answers_304_to_its_etag(client: FlaskClient) -> None:
    # Served by PetSageApi._openapi_json, which replaces flask-smorest's view.
    first = client.get("/openapi.json")
    again = client.get(
        "/openapi.json", headers={"If-None-Match": first.headers["ETag"]}
    )
    assert (first.status_code, again.status_code) == (200, 304)
    assert first.headers["Cache-Control"] == "no-cache"
