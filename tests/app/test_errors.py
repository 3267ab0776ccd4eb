"""Every error answers RFC 9457 problem JSON and reveals nothing internal."""

import logging

import pytest
from flask import Flask, abort
from flask.testing import FlaskClient
from werkzeug.exceptions import default_exceptions

from petsage import create_app

SECRET = "database password is hunter2"


class SecretError(Exception):
    """An exception whose class name and text must never reach a caller."""


@pytest.fixture
def failing_app() -> Flask:
    """PetSage plus failing routes: an abort for any status, an unhandled exception."""
    # Exceptions must not propagate to the test client, as under gunicorn.
    app = create_app({"TESTING": True, "PROPAGATE_EXCEPTIONS": False})

    @app.get("/abort/<int:code>")
    def abort_with(code: int) -> str:
        abort(code)

    @app.get("/crash")
    def crash() -> str:
        raise SecretError(SECRET)

    return app


@pytest.fixture
def failing_client(failing_app: Flask) -> FlaskClient:
    """A test client for the failing app."""
    return failing_app.test_client()


@pytest.mark.parametrize("code", sorted(default_exceptions))
def test_every_http_error_is_problem_json(
    failing_client: FlaskClient, code: int
) -> None:
    response = failing_client.get(f"/abort/{code}")
    assert response.status_code == code
    assert response.mimetype == "application/problem+json"
    exception = default_exceptions[code]()
    assert response.json == {
        "type": "about:blank",
        "title": exception.name,
        "status": code,
        "detail": exception.description,
    }


def test_unknown_path_is_a_404_problem(client: FlaskClient) -> None:
    response = client.get("/no-such-thing")
    assert response.status_code == 404
    assert response.mimetype == "application/problem+json"
    assert response.json == {
        "type": "about:blank",
        "title": "Not Found",
        "status": 404,
        "detail": default_exceptions[404]().description,
    }


def test_405_keeps_its_allow_header(client: FlaskClient) -> None:
    response = client.post("/api/v1/smoke-test")
    assert response.status_code == 405
    assert response.mimetype == "application/problem+json"
    assert set(response.headers["Allow"].split(", ")) == {"GET", "HEAD", "OPTIONS"}


def test_503_keeps_its_retry_after_header(failing_app: Flask) -> None:
    @failing_app.get("/unavailable")
    def unavailable() -> str:
        abort(503, retry_after=7)

    response = failing_app.test_client().get("/unavailable")
    assert response.status_code == 503
    assert response.headers["Retry-After"] == "7"


def test_unhandled_exception_is_a_generic_500(failing_client: FlaskClient) -> None:
    response = failing_client.get("/crash")
    assert response.status_code == 500
    assert response.mimetype == "application/problem+json"
    assert response.json == {
        "type": "about:blank",
        "title": "Internal Server Error",
        "status": 500,
        "detail": default_exceptions[500]().description,
    }


def test_500_reveals_nothing_about_the_exception(failing_client: FlaskClient) -> None:
    body = failing_client.get("/crash").get_data(as_text=True)
    for revealing in (SECRET, "SecretError", "Traceback", "test_errors"):
        assert revealing not in body


def test_unhandled_exception_is_logged_with_its_traceback(
    failing_client: FlaskClient, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.ERROR):
        failing_client.get("/crash")
    [record] = [r for r in caplog.records if r.exc_info]
    assert record.levelno == logging.ERROR
    assert record.exc_info is not None
    assert record.exc_info[0] is SecretError
    assert "/crash" in record.getMessage()


def test_service_keeps_serving_after_an_unhandled_exception(
    failing_client: FlaskClient,
) -> None:
    failing_client.get("/crash")
    assert failing_client.get("/api/v1/smoke-test").status_code == 200
