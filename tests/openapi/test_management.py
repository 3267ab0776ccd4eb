"""The management listener's document is complete and true, checked by schemathesis.

The management listener serves a document of its own at /openapi.json: the health
endpoints and /metrics, all that listener answers. schemathesis runs every check it
has against it, undeclared methods included, with and without the health token, and
the linters that hold the public port's document find nothing in it either.
"""

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from werkzeug.test import Client

from petsage import PROBE_APP, create_app
from tests.support.openapi_tools import TOOLS, require_npm_packages, run_tool

if TYPE_CHECKING:
    from _typeshed.wsgi import WSGIApplication

TOKEN = "management-token"
MANAGEMENT = create_app({"HEALTH_TOKEN": TOKEN, "CHECK_PERIOD": 60}).extensions[
    PROBE_APP
]
SCHEMA = schemathesis.openapi.from_wsgi("/openapi.json", MANAGEMENT)
HEALTH_PATHS = {"/livez", "/readyz", "/livez/{check}", "/readyz/{check}", "/health"}


@SCHEMA.parametrize()
@settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))
def test_every_response_conforms_to_the_document(case: schemathesis.Case[Any]) -> None:
    case.call_and_validate(headers={"Authorization": f"Bearer {TOKEN}"})


@SCHEMA.parametrize()
@settings(max_examples=20, deadline=None, suppress_health_check=list(HealthCheck))
def test_every_response_without_the_token_conforms_to_the_document(
    case: schemathesis.Case[Any],
) -> None:
    case.call_and_validate()


def document_of(management: "WSGIApplication") -> dict[str, Any]:
    """The document a management app serves."""
    answer = Client(management).get("/openapi.json")
    assert answer.status_code == 200
    document = answer.json
    assert isinstance(document, dict)
    return document


@pytest.mark.parametrize(
    ("config", "paths"),
    [({}, HEALTH_PATHS | {"/metrics"}), ({"METRICS": False}, HEALTH_PATHS)],
    ids=["defaults", "no metrics"],
)
def test_the_document_lists_what_the_listener_serves(
    config: dict[str, Any], paths: set[str]
) -> None:
    document = document_of(create_app(config).extensions[PROBE_APP])
    assert set(document["paths"]) == paths


def test_the_document_is_the_public_ones_title_and_version_for_this_listener() -> None:
    document = document_of(MANAGEMENT)
    public: Any = create_app().test_client().get("/openapi.json").json
    assert document["info"]["version"] == public["info"]["version"]
    assert (
        document["info"]["title"] == f"{public['info']['title']}, management listener"
    )
    assert document["servers"] == [
        {"url": "/", "description": "This PetSage instance's management listener"}
    ]


def test_the_document_answers_304_to_its_etag() -> None:
    client = Client(MANAGEMENT)
    first = client.get("/openapi.json")
    again = client.get(
        "/openapi.json", headers={"If-None-Match": first.headers["ETag"]}
    )
    assert (first.status_code, again.status_code) == (200, 304)
    assert first.headers["Cache-Control"] == "no-cache"


@pytest.mark.slow
def test_the_document_passes_redocly_and_spectral_without_a_warning(
    tmp_path: Path,
) -> None:
    require_npm_packages()
    document = tmp_path / "management.json"
    document.write_text(json.dumps(document_of(MANAGEMENT), indent=2))
    result = run_tool([TOOLS / "lint", document])
    assert result.returncode == 0, result.stdout
    assert "Your API description is valid" in result.stdout
    assert "No results with a severity of 'warn' or higher found!" in result.stdout
