"""Writes need the API token (petsage.api.writes_need_the_api_token): 401 without it
or with another, and while none is configured (saying writes are off), documented as
the apiToken scheme; and PetSage refuses one secret for both tokens."""

from collections.abc import Iterator
from typing import Any

import pytest
from flask import Flask
from flask_smorest import Blueprint

from petsage import API_PREFIX, create_app
from petsage.api import API_TOKEN_SCHEME_NAME, writes_need_the_api_token
from petsage.config import ConfigError, load_settings
from petsage.health import health_of

TOKEN = "an-api-token"  # nosec B105: a test's own
PATH = f"{API_PREFIX}/notes"
PROBLEM = "application/problem+json"


def app_with_a_write(config: dict[str, Any]) -> Flask:
    """PetSage with one write, ``POST /api/v1/notes``, behind the API token."""
    bp = Blueprint("test_notes", __name__)
    writes = writes_need_the_api_token(bp)

    @bp.route("/notes", methods=["POST"], tags=["Test notes"])
    @writes
    @bp.response(201, description="Kept.")
    @bp.doc(operationId="createNote", description="Keeps a note.")
    def create_note() -> None:
        """Keep a note"""

    app = create_app({"TESTING": True, **config})
    app.extensions["flask-smorest"]["apis"][""]["ext_obj"].register_blueprint(
        bp, url_prefix=API_PREFIX
    )
    return app


@pytest.fixture(params=[TOKEN, ""], ids=["token set", "no token"])
def app(request: pytest.FixtureRequest) -> Iterator[Flask]:
    """The app, with the API token set or not."""
    app = app_with_a_write({"API_TOKEN": request.param})
    yield app
    health_of(app).refresher.stop()


@pytest.mark.parametrize(
    "authorization", [None, "Bearer wrong", f"Basic {TOKEN}", f"bearer {TOKEN}x"]
)
def test_a_write_without_the_token_is_a_401_problem(
    app: Flask, authorization: str | None
) -> None:
    headers = {"Authorization": authorization} if authorization else {}
    response = app.test_client().post(PATH, headers=headers)
    assert (response.status_code, response.mimetype) == (401, PROBLEM)
    assert response.headers["WWW-Authenticate"] == "Bearer realm=petsage"
    if not app.config["API_TOKEN"]:
        assert response.json is not None
        assert "PETSAGE_API_TOKEN is not set" in response.json["detail"]


def test_a_write_with_the_token_goes_through_only_when_one_is_set(app: Flask) -> None:
    headers = {"Authorization": f"Bearer {TOKEN}"}
    response = app.test_client().post(PATH, headers=headers)
    if app.config["API_TOKEN"]:
        assert response.status_code == 201
    else:
        assert (response.status_code, response.mimetype) == (401, PROBLEM)
        assert response.json is not None
        assert "PETSAGE_API_TOKEN is not set" in response.json["detail"]


def test_the_document_declares_the_scheme_and_each_writes_refusals(app: Flask) -> None:
    document: Any = app.test_client().get("/openapi.json").json
    scheme = document["components"]["securitySchemes"][API_TOKEN_SCHEME_NAME]
    assert (scheme["type"], scheme["scheme"]) == ("http", "bearer")
    operation = document["paths"][PATH]["post"]
    assert operation["security"] == [{API_TOKEN_SCHEME_NAME: []}]
    assert {"201", "401"} <= set(operation["responses"])


def test_the_scheme_is_declared_only_where_a_write_uses_it(client: Any) -> None:
    document: Any = client.get("/openapi.json").json
    schemes = document["components"].get("securitySchemes", {})
    assert API_TOKEN_SCHEME_NAME not in schemes or any(
        operation.get("security") == [{API_TOKEN_SCHEME_NAME: []}]
        for item in document["paths"].values()
        for operation in item.values()
        if isinstance(operation, dict)
    )


def test_one_secret_for_both_tokens_is_refused() -> None:
    environ = {"PETSAGE_API_TOKEN": "same", "PETSAGE_HEALTH_TOKEN": "same"}
    with pytest.raises(ConfigError) as refused:
        load_settings(environ, warn_unknown=False)
    assert str(refused.value) == (
        "PETSAGE_API_TOKEN and PETSAGE_HEALTH_TOKEN are the same secret:"
        " give writes a token of their own"
    )
    with pytest.raises(ConfigError):
        create_app({"API_TOKEN": "same", "HEALTH_TOKEN": "same"})
