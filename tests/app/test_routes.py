"""What probes rely on, on every route: HEAD answers like GET, OPTIONS names methods."""

import pytest
from flask.testing import FlaskClient
from werkzeug.datastructures import Headers

from petsage import create_app

GET_PATHS = sorted(
    rule.rule
    for rule in create_app().url_map.iter_rules()
    if "GET" in (rule.methods or ()) and not rule.arguments
)


def test_the_service_has_its_routes() -> None:
    assert {"/", "/api/v1/smoke-test", "/openapi.json"} <= set(GET_PATHS)


def without_request_id(headers: Headers) -> list[tuple[str, str]]:
    """The headers, but the per-request id."""
    return [(name, value) for name, value in headers if name != "X-Request-ID"]


@pytest.mark.parametrize("path", GET_PATHS)
def test_head_answers_like_get_without_a_body(client: FlaskClient, path: str) -> None:
    get = client.get(path)
    head = client.head(path)
    assert head.status_code == get.status_code == 200
    assert without_request_id(head.headers) == without_request_id(get.headers)
    assert head.data == b""


@pytest.mark.parametrize("path", GET_PATHS)
def test_options_lists_the_allowed_methods(client: FlaskClient, path: str) -> None:
    response = client.options(path)
    assert response.status_code == 200
    assert set(response.headers["Allow"].split(", ")) == {"GET", "HEAD", "OPTIONS"}
