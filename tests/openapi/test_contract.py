"""The OpenAPI document is complete and true, checked by schemathesis and by routes.

Which routes, methods and statuses: the URL map's and the document's
(tests.support.route_checks); an operation's success may be 200, 201 or 204.

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
from tests.support.route_checks import (
    document_of,
    incomplete_operations,
    operations,
    undocumented_operations,
)

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
HEALTH_PATHS = {"/livez", "/readyz", "/livez/{check}", "/readyz/{check}", "/health"}


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
    """The paths of the document that have an operation."""
    return {path for path, _, _ in operations(document_of(app))}


def test_every_flask_route_is_documented() -> None:
    assert undocumented_operations(APP, document_of(APP)) == []


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
    assert incomplete_operations(document_of(APP)) == []


def test_committed_document_matches_the_served_one() -> None:
    committed = json.loads((REPO_ROOT / "openapi.json").read_text())
    served: Any = create_app().test_client().get("/openapi.json").json
    assert committed == served, (
        "openapi.json is out of date: run `petsage openapi write openapi.json`"
    )
