"""Checking responses against an OpenAPI document, as ``petsage smoke`` does."""

import json
from typing import Any

import pytest

from petsage.cli.contract import response_errors, schema_errors
from tests.gunicorn_process import REPO_ROOT

DOCUMENT: dict[str, Any] = json.loads((REPO_ROOT / "openapi.json").read_text())
SCHEMAS: dict[str, Any] = {
    "components": {
        "schemas": {
            "Pet": {
                "type": "object",
                "required": ["name"],
                "properties": {
                    "name": {"type": "string"},
                    "age": {"type": "integer", "nullable": True},
                    "kind": {"type": "string", "enum": ["cat", "dog"]},
                    "tags": {"type": "array", "items": {"type": "string"}},
                },
                "additionalProperties": False,
            },
            "Scores": {"type": "object", "additionalProperties": {"type": "number"}},
        }
    }
}
PET = {"$ref": "#/components/schemas/Pet"}


@pytest.mark.parametrize(
    ("value", "errors"),
    [
        ({"name": "Rex", "age": None, "kind": "dog", "tags": ["a"]}, []),
        ({}, ["body: 'name' is a required property"]),
        ({"name": 1}, ["body.name: 1 is not of type 'string'"]),
        ({"name": "Rex", "age": True}, ["body.age: True is not of type 'integer'"]),
        (
            {"name": "Rex", "kind": "bird"},
            ["body.kind: 'bird' is not one of ['cat', 'dog']"],
        ),
        ({"name": "Rex", "tags": [1]}, ["body.tags[0]: 1 is not of type 'string'"]),
        (
            {"name": "Rex", "owner": "Ann"},
            ["body: Additional properties are not allowed ('owner' was unexpected)"],
        ),
        ([], ["body: [] is not of type 'object'"]),
        (
            None,
            ["body: None for not nullable", "body: None is not of type 'object'"],
        ),
    ],
)
def test_schema_errors(value: Any, errors: list[str]) -> None:
    assert schema_errors(SCHEMAS, PET, value) == errors


def test_additional_properties_schema_applies_to_every_member() -> None:
    scores = {"$ref": "#/components/schemas/Scores"}
    assert schema_errors(SCHEMAS, scores, {"a": 1.5, "b": "x"}) == [
        "body.b: 'x' is not of type 'number'"
    ]


def test_smoke_test_response_conforms() -> None:
    body = b'{"status":"ok","message":"PetSage smoke test successful!"}'
    assert (
        response_errors(DOCUMENT, "/api/v1/smoke-test", 200, "application/json", body)
        == []
    )


def test_problem_response_conforms_on_its_own_media_type() -> None:
    body = json.dumps(
        {
            "type": "about:blank",
            "title": "Method Not Allowed",
            "status": 405,
            "detail": "The method is not allowed for the requested URL.",
        }
    ).encode()
    errors = response_errors(
        DOCUMENT, "/api/v1/smoke-test", 405, "application/problem+json", body
    )
    assert errors == []


def test_an_undocumented_path_is_reported() -> None:
    assert response_errors(DOCUMENT, "/nope", 200, "application/json", b"{}") == [
        "GET /nope is not in the OpenAPI document"
    ]


def test_a_body_that_is_not_json_is_reported() -> None:
    errors = response_errors(DOCUMENT, "/livez", 200, "application/health+json", b"ok")
    assert errors == ["body is not JSON: b'ok'"]
