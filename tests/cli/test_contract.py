"""Checking responses against an OpenAPI document, as ``petsage smoke`` does
(``petsage.cli.contract``): every keyword OpenAPI 3.0 gives a schema, not only its
types and shape."""

import json
import sys
from typing import Any

import pytest

from petsage.cli.commands import USAGE_ERROR, main
from petsage.cli.contract import response_errors, schema_errors
from tests.support.gunicorn_process import REPO_ROOT

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


COMPONENTS: dict[str, Any] = {
    "components": {
        "schemas": {
            "Visit": {
                "type": "object",
                "required": ["at", "vet"],
                "properties": {
                    "at": {"type": "string", "format": "date-time"},
                    "vet": {"$ref": "#/components/schemas/Vet"},
                    "note": {"type": "string", "nullable": True, "minLength": 1},
                    "weight": {"type": "number", "minimum": 0.1},
                    "tags": {
                        "type": "array",
                        "maxItems": 2,
                        "items": {"type": "string"},
                    },
                },
                "additionalProperties": False,
            },
            "Vet": {
                "type": "object",
                "required": ["code"],
                "properties": {"code": {"type": "string", "pattern": "^V[0-9]{3}$"}},
            },
        }
    }
}
VISIT = {"$ref": "#/components/schemas/Visit"}
GOOD = {
    "at": "2026-12-07T11:46:05Z",
    "vet": {"code": "V123"},
    "note": None,
    "weight": 4.5,
    "tags": ["cat", "senior"],
}
# Per keyword: a good value and a bad one for GOOD's field, and the problem reported.
KEYWORDS: dict[str, tuple[dict[str, Any], dict[str, Any], str]] = {
    "format": (
        {"at": "2026-12-07T12:46:05+01:00"},
        {"at": "yesterday"},
        "body.at: 'yesterday' is not a 'date-time'",
    ),
    "pattern": (
        {"vet": {"code": "V007"}},
        {"vet": {"code": "X123"}},
        "body.vet.code: 'X123' does not match '^V[0-9]{3}$'",
    ),
    "minLength": (
        {"note": "a"},
        {"note": ""},
        "body.note: '' should be non-empty",
    ),
    "minimum": (
        {"weight": 0.1},
        {"weight": 0},
        "body.weight: 0 is less than the minimum of 0.1",
    ),
    "maxItems": (
        {"tags": []},
        {"tags": ["a", "b", "c"]},
        "body.tags: ['a', 'b', 'c'] is too long",
    ),
}


def test_a_conforming_body_has_no_problem() -> None:
    assert schema_errors(COMPONENTS, VISIT, GOOD) == []


@pytest.mark.parametrize("keyword", sorted(KEYWORDS))
def test_each_keyword_accepts_a_good_value(keyword: str) -> None:
    good, _, _ = KEYWORDS[keyword]
    assert schema_errors(COMPONENTS, VISIT, {**GOOD, **good}) == []


@pytest.mark.parametrize("keyword", sorted(KEYWORDS))
def test_each_keyword_rejects_a_bad_value_naming_where(keyword: str) -> None:
    _, bad, problem = KEYWORDS[keyword]
    assert schema_errors(COMPONENTS, VISIT, {**GOOD, **bad}) == [problem]


def test_nullable_admits_null_where_it_is_set_and_only_there() -> None:
    assert schema_errors(COMPONENTS, VISIT, {**GOOD, "note": None}) == []
    assert schema_errors(COMPONENTS, VISIT, {**GOOD, "at": None}) == [
        "body.at: None for not nullable",
        "body.at: None is not of type 'string'",
    ]


def test_references_to_components_are_followed_within_components() -> None:
    assert schema_errors(COMPONENTS, VISIT, {**GOOD, "vet": {}}) == [
        "body.vet: 'code' is a required property"
    ]


def test_a_reference_to_nothing_is_a_problem_not_a_crash() -> None:
    [problem] = schema_errors(COMPONENTS, {"$ref": "#/components/schemas/Nope"}, {})
    assert problem.startswith("body: the documented schema cannot be used:")
    assert "/components/schemas/Nope" in problem


def test_a_response_is_checked_against_its_whole_schema() -> None:
    document = {
        "paths": {
            "/visits/latest": {
                "get": {"responses": {"200": {"$ref": "#/components/responses/Ok"}}}
            }
        },
        "components": {
            **COMPONENTS["components"],
            "responses": {
                "Ok": {
                    "description": "The latest visit.",
                    "content": {"application/json": {"schema": VISIT}},
                }
            },
        },
    }
    body = json.dumps({**GOOD, "at": "yesterday"}).encode()
    assert response_errors(
        document, "/visits/latest", 200, "application/json", body
    ) == ["body.at: 'yesterday' is not a 'date-time'"]


def test_smoke_without_its_extra_refuses_in_one_line_naming_it(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # What importing it gives where the smoke extra is not installed: ImportError.
    monkeypatch.setitem(sys.modules, "openapi_schema_validator", None)
    monkeypatch.setattr(sys, "argv", ["petsage", "smoke", "http://127.0.0.1:1"])
    with pytest.raises(SystemExit) as stopped:
        main()
    assert stopped.value.code == USAGE_ERROR
    [line] = capsys.readouterr().err.splitlines()
    assert line.startswith("Error: petsage smoke checks responses with")
    assert line.endswith("pip install 'petsage-backend[smoke]'")
