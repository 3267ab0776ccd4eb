"""JSON bodies through orjson say what Flask's own provider says.

PetSage encodes its responses with orjson (petsage/json_provider.py); every document
must parse to what Flask's standard-library encoder made of the same value, and what
orjson cannot encode alike must take Flask's path.
"""

import dataclasses
import datetime
import decimal
import json
import uuid
from typing import Any

import pytest
from flask import Flask
from flask.json.provider import DefaultJSONProvider

from petsage import create_app
from petsage.json_provider import OrjsonProvider


@dataclasses.dataclass
class Pet:
    """A value Flask encodes with ``dataclasses.asdict``."""

    name: str
    born: datetime.date


VALUES: list[Any] = [
    {"status": "ok", "message": "PetSage smoke test successful!"},
    {"z": 1, "a": [1.5, None, True, False], "m": {"nested": "é ✓ 🐈"}},
    {"when": datetime.datetime(2026, 11, 29, 17, 5, 3, tzinfo=datetime.UTC)},
    {"day": datetime.date(2026, 11, 29), "price": decimal.Decimal("12.50")},
    {"id": uuid.UUID("12345678-1234-5678-1234-567812345678")},
    {"pet": Pet("Rex", datetime.date(2020, 1, 2))},
    {1: "integer key", "big": 2**70},
    ["a", 1, None],
    "text",
    None,
]


def body(response: Any) -> bytes:
    """The bytes of a Flask response (typed as werkzeug's, which has no body)."""
    data: bytes = response.get_data()
    return data


def provider_pair(
    debug: bool = False,
) -> tuple[Flask, DefaultJSONProvider, OrjsonProvider]:
    """A Flask app with Flask's provider and PetSage's, both keeping key order."""
    app = Flask(__name__)
    app.debug = debug
    flask_json, petsage_json = DefaultJSONProvider(app), OrjsonProvider(app)
    flask_json.sort_keys = petsage_json.sort_keys = False
    return app, flask_json, petsage_json


@pytest.mark.parametrize("value", VALUES, ids=lambda value: type(value).__name__)
def test_a_body_parses_to_what_flask_writes(value: Any) -> None:
    app, flask_json, petsage_json = provider_pair()
    with app.app_context():
        theirs, mine = flask_json.response(value), petsage_json.response(value)
    assert mine.mimetype == theirs.mimetype == "application/json"
    assert body(mine).endswith(b"\n")
    parsed = json.loads(body(mine))
    assert parsed == json.loads(body(theirs))
    if isinstance(value, dict):
        # Same keys in the same order: PetSage keeps its schemas' order.
        assert list(parsed) == list(json.loads(body(theirs)))


def test_text_is_written_as_utf8_by_orjson() -> None:
    app, flask_json, petsage_json = provider_pair()
    with app.app_context():
        theirs = body(flask_json.response({"name": "Félix"}))
        mine = body(petsage_json.response({"name": "Félix"}))
    assert theirs == b'{"name":"F\\u00e9lix"}\n'
    assert mine == '{"name":"Félix"}\n'.encode()


def test_an_ascii_body_is_byte_for_byte_flasks() -> None:
    app, flask_json, petsage_json = provider_pair()
    value = {"status": "ok", "message": "PetSage smoke test successful!", "n": [1, 2]}
    with app.app_context():
        assert body(petsage_json.response(value)) == (body(flask_json.response(value)))


def test_what_orjson_cannot_encode_gets_flasks_error() -> None:
    app, flask_json, petsage_json = provider_pair()
    with app.app_context(), pytest.raises(TypeError):
        flask_json.response({"set": {1, 2}})
    with app.app_context(), pytest.raises(TypeError):
        petsage_json.response({"set": {1, 2}})


def test_debug_mode_pretty_prints_as_flask_does() -> None:
    app, flask_json, petsage_json = provider_pair(debug=True)
    value = {"status": "ok", "nested": {"a": 1}}
    with app.app_context():
        mine = body(petsage_json.response(value))
        assert mine == body(flask_json.response(value))
    assert b'\n  "status": "ok"' in mine


def test_the_smoke_test_is_encoded_by_orjson() -> None:
    app = create_app()
    assert isinstance(app.json, OrjsonProvider)
    answer = app.test_client().get("/api/v1/smoke-test")
    assert answer.get_data() == (
        b'{"status":"ok","message":"PetSage smoke test successful!"}\n'
    )
