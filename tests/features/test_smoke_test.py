"""GET /api/v1/smoke-test, the original specification's contract."""

import marshmallow as ma
import pytest
from flask.testing import FlaskClient

from petsage.features.smoke_test.service import SmokeTestResult, run_smoke_test

PATH = "/api/v1/smoke-test"
BODY = {"status": "ok", "message": "PetSage smoke test successful!"}


def test_smoke_test_answers_the_specified_body(client: FlaskClient) -> None:
    response = client.get(PATH)
    assert response.status_code == 200
    assert response.mimetype == "application/json"
    assert response.json == BODY


def test_smoke_test_is_never_cached(client: FlaskClient) -> None:
    assert client.get(PATH).headers["Cache-Control"] == "no-store"


def test_service_reports_success() -> None:
    assert run_smoke_test() == SmokeTestResult(
        status="ok", message="PetSage smoke test successful!"
    )


def test_requests_reuse_one_schema_instance(
    client: FlaskClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    built: list[ma.Schema] = []
    original_init = ma.Schema.__init__

    def counting_init(schema: ma.Schema, *args: object, **kwargs: object) -> None:
        built.append(schema)
        original_init(schema, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(ma.Schema, "__init__", counting_init)
    for _ in range(3):
        assert client.get(PATH).json == BODY
    assert built == []
