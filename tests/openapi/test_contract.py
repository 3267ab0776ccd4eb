"""The OpenAPI document is complete and true, checked by schemathesis and by routes.

It describes what the public port answers, and nothing else: schemathesis runs every
check it has against it, undeclared methods included, with /metrics served there and
in the default configuration, where it is not (the management listener's document is
tests/openapi/test_management.py's).
"""

import json
from typing import Any

import pytest
import schemathesis
from flask import Flask
from hypothesis import HealthCheck, settings

from petsage import create_app
from tests.support.gunicorn_process import REPO_ROOT

# The token makes ?verbose answer text/plain, so that media type is exercised too;
# /metrics, by default served on the management listener only, is served here too so
# that its operation is exercised as well.
APP = create_app(
    {"HEALTH_TOKEN": "contract-token", "CHECK_PERIOD": 60, "PUBLIC_METRICS": True}
)
SCHEMA = schemathesis.openapi.from_wsgi("/openapi.json", APP)
# The default configuration's public port, which does not serve /metrics.
DEFAULTS_SCHEMA = schemathesis.openapi.from_wsgi(
    "/openapi.json", create_app({"CHECK_PERIOD": 60})
)
HEALTH_PATHS = {"/livez", "/readyz", "/livez/<check>", "/readyz/<check>", "/health"}
METHODS = {"get", "put", "post", "delete", "options", "head", "patch", "trace"}
# Served, but not operations of the API: the document itself and the docs pages.
UNDOCUMENTED = {
    "/openapi.json",
    "/docs/",
    "/docs/<path:path>",
    "/static/<path:filename>",
}


@SCHEMA.parametrize()
@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=list(HealthCheck),
)
def test_every_response_conforms_to_the_document(case: schemathesis.Case[Any]) -> None:
    case.call_and_validate(headers={"Authorization": "Bearer contract-token"})


@SCHEMA.parametrize()
@settings(max_examples=20, deadline=None, suppress_health_check=list(HealthCheck))
def test_every_public_response_conforms_to_the_document(
    case: schemathesis.Case[Any],
) -> None:
    case.call_and_validate()


@DEFAULTS_SCHEMA.parametrize()
@settings(max_examples=20, deadline=None, suppress_health_check=list(HealthCheck))
def test_every_response_of_the_default_public_port_conforms_to_its_document(
    case: schemathesis.Case[Any],
) -> None:
    case.call_and_validate()


def documented_paths(app: Flask) -> set[str]:
    """The paths of the document, in Flask's rule syntax."""
    document = app.test_client().get("/openapi.json").json
    assert isinstance(document, dict)
    return {
        path.replace("{", "<").replace("}", ">")
        for path, item in document["paths"].items()
        if METHODS & set(item)
    }


def test_every_flask_route_is_documented() -> None:
    served = {rule.rule for rule in APP.url_map.iter_rules()} - UNDOCUMENTED
    assert served - documented_paths(APP) == set()


def test_every_health_endpoint_is_documented() -> None:
    assert documented_paths(APP) >= HEALTH_PATHS


@pytest.mark.parametrize(
    ("config", "listed"),
    [({}, False), ({"PUBLIC_METRICS": True}, True), ({"METRICS": False}, False)],
    ids=["defaults", "public metrics", "no metrics"],
)
def test_the_public_document_lists_metrics_only_where_the_port_serves_them(
    config: dict[str, Any], listed: bool
) -> None:
    app = create_app(config)
    assert ("/metrics" in documented_paths(app)) == listed
    served = app.test_client().get("/metrics").status_code == 200
    assert served == listed


def test_every_operation_is_complete() -> None:
    document = APP.test_client().get("/openapi.json").json
    assert isinstance(document, dict)
    for path, item in document["paths"].items():
        for method, operation in item.items():
            if method not in METHODS:
                continue
            where = f"{method.upper()} {path}"
            for member in ("operationId", "summary", "description", "tags"):
                assert operation.get(member), f"{where} lacks {member}"
            assert {"200", "405", "500"} <= set(operation["responses"]), where


def test_committed_document_matches_the_served_one() -> None:
    committed = json.loads((REPO_ROOT / "openapi.json").read_text())
    served: Any = create_app().test_client().get("/openapi.json").json
    assert committed == served, (
        "openapi.json is out of date: run `petsage openapi write openapi.json`"
    )
