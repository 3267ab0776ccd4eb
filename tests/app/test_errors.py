"""Every error answers RFC 9457 problem JSON and reveals nothing internal."""

import json
import logging
import socket

import pytest
from flask import Flask, abort
from flask.testing import FlaskClient
from werkzeug.exceptions import default_exceptions
from werkzeug.test import TestResponse

from petsage import create_app
from petsage.errors import PROBLEM_MEDIA_TYPE
from tests.support.apps.resource import create_resource_app
from tests.support.gunicorn_process import GunicornFactory
from tests.support.route_checks import document_of, openapi_path, operations

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


# Input: tests.support.apps.resource adds routes that take an age from each webargs
# location; the problems are PetSage's, through the real application.
INPUTS = "/api/v1/inputs"
MISSING = "Missing data for required field."


def send_age(client: FlaskClient, location: str, age: str | None) -> TestResponse:
    """Ask the echo route of ``location``, with ``age`` there (None: no age)."""
    given = {} if age is None else {"age": age}
    if location == "json":
        return client.post(f"{INPUTS}/json", json=given)
    if location == "form":
        return client.post(f"{INPUTS}/form", data=given)
    if location == "headers":
        headers = {} if age is None else {"X-Pet-Age": age}
        return client.get(f"{INPUTS}/headers", headers=headers)
    if location == "cookies" and age is not None:
        client.set_cookie("pet_age", age)
    return client.get(f"{INPUTS}/{location}", query_string=given)


FIELD_OF = {"headers": "X-Pet-Age", "cookies": "pet_age"}


@pytest.fixture
def resource_client() -> FlaskClient:
    """A test client for PetSage plus the test input and resource routes."""
    return create_resource_app({"TESTING": True}).test_client()


@pytest.mark.parametrize("location", ["query", "json", "form", "headers", "cookies"])
@pytest.mark.parametrize(
    ("age", "message"),
    [
        (None, MISSING),
        ("three", "Not a valid integer."),
        ("31", "Must be greater than or equal to 0 and less than or equal to 30."),
    ],
    ids=["missing", "not a number", "out of range"],
)
def test_bad_input_is_a_422_problem_naming_the_field(
    resource_client: FlaskClient, location: str, age: str | None, message: str
) -> None:
    response = send_age(resource_client, location, age)
    assert (response.status_code, response.mimetype) == (422, PROBLEM_MEDIA_TYPE)
    assert response.json is not None
    assert response.json["status"] == 422
    field = FIELD_OF.get(location, "age")
    assert response.json["errors"] == {location: {field: [message]}}


@pytest.mark.parametrize("location", ["query", "json", "form", "headers", "cookies"])
def test_good_input_from_every_location_is_taken(
    resource_client: FlaskClient, location: str
) -> None:
    response = send_age(resource_client, location, "3")
    assert (response.status_code, response.json) == (200, {"age": 3})


def test_every_operation_that_takes_input_documents_its_422_problem(
    resource_client: FlaskClient,
) -> None:
    # Flask's routes, whose input webargs reads (the probes, in front of Flask,
    # read theirs themselves).
    app = resource_client.application
    document = document_of(app)
    unprocessable = document["components"]["responses"]["UNPROCESSABLE_ENTITY"]
    assert list(unprocessable["content"]) == [PROBLEM_MEDIA_TYPE]
    flask = {openapi_path(rule.rule) for rule in app.url_map.iter_rules()}
    taking_input = {
        f"{method.upper()} {path}": operation["responses"]
        for path, method, operation in operations(document)
        if path in flask
        and (
            "requestBody" in operation
            # Not a $ref: flask-smorest's If-Match and If-None-Match, which it
            # reads itself (428, 412, 304), not webargs.
            or any(
                "$ref" not in where and where["in"] != "path"
                for where in operation.get("parameters", [])
            )
        )
    }
    assert len(taking_input) >= len(FIELD_OF) + 3
    assert [where for where, said in taking_input.items() if "422" not in said] == []


def test_malformed_json_is_a_400_problem(resource_client: FlaskClient) -> None:
    response = resource_client.post(
        f"{INPUTS}/json", data=b'{"age": 3', content_type="application/json"
    )
    assert (response.status_code, response.mimetype) == (400, PROBLEM_MEDIA_TYPE)
    assert response.json is not None
    assert response.json["errors"] == {"json": ["Invalid JSON body."]}


@pytest.mark.parametrize(
    ("size", "status"), [(1 << 20, 422), ((1 << 20) + 1, 413)], ids=["1 MiB", "more"]
)
def test_a_body_over_the_default_limit_is_a_413_problem(
    resource_client: FlaskClient, size: int, status: int
) -> None:
    # The exact limit is read, and refused for its unknown field "pad".
    body = b'{"age": 3, "pad": "' + b"x" * (size - 21) + b'"}'
    assert len(body) == size
    response = resource_client.post(
        f"{INPUTS}/json", data=body, content_type="application/json"
    )
    assert (response.status_code, response.mimetype) == (status, PROBLEM_MEDIA_TYPE)


def test_an_unknown_id_is_a_404_problem(resource_client: FlaskClient) -> None:
    response = resource_client.get("/api/v1/pets/12345")
    assert (response.status_code, response.mimetype) == (404, PROBLEM_MEDIA_TYPE)
    assert response.json is not None
    assert response.json["detail"] == "No pet has the id 12345."


RESOURCE_APP = "tests.support.apps.resource:create_resource_app()"
PAD = b"x" * 1000


@pytest.mark.slow
@pytest.mark.parametrize(
    ("body", "status"),
    [
        (b'{"age": 3}', 200),
        (b'{"age": "three"}', 422),
        (b'{"age": 3', 400),
        (b'{"age": 3, "pad": "' + PAD + b'"}', 413),
        # No Content-Length to refuse it by: cut off at the limit as it is read.
        ([b'{"age": 3, "pad": "', PAD, b'"}'], 413),
    ],
    ids=["good", "invalid", "malformed", "over the limit", "chunked, over the limit"],
)
def test_gunicorn_answers_each_body_as_the_test_client_does(
    start_gunicorn: GunicornFactory, body: bytes | list[bytes], status: int
) -> None:
    server = start_gunicorn({"PETSAGE_MAX_BODY_BYTES": "1000"}, RESOURCE_APP)
    headers = {"Content-Type": "application/json"}
    answer = server.request("POST", f"{INPUTS}/json", headers, body=body)
    media_type = "application/json" if status == 200 else PROBLEM_MEDIA_TYPE
    assert (answer.status, answer.headers["Content-Type"]) == (status, media_type)
    assert json.loads(answer.body)["status" if status != 200 else "age"] in (status, 3)
    assert (
        server.request("POST", f"{INPUTS}/json", headers, body=b'{"age": 3}').status
        == 200
    )


def body_cut_short(
    port: int, path: str, media_type: str, sent: bytes, chunked: bool
) -> bytes:
    """The answer to a POST whose body is cut off after ``sent`` (a connection lost
    mid-body, the client ending its side): its Content-Length promised 100 bytes
    more, or its chunks never came to the last one."""
    framing = (
        "Transfer-Encoding: chunked"
        if chunked
        else f"Content-Length: {len(sent) + 100}"
    )
    body = f"{len(sent):x}\r\n".encode() + sent + b"\r\n" if chunked else sent
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(
            f"POST {path} HTTP/1.1\r\nHost: t\r\nContent-Type: {media_type}\r\n"
            f"{framing}\r\n\r\n".encode()
            + body
        )
        sock.shutdown(socket.SHUT_WR)
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    return answer


@pytest.mark.slow
@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
@pytest.mark.parametrize(
    ("location", "media_type", "sent"),
    [
        ("json", "application/json", b'{"age": 3}'),
        ("form", "application/x-www-form-urlencoded", b"age=3"),
    ],
)
def test_a_body_cut_off_is_a_400_and_never_read_as_whole(
    start_gunicorn: GunicornFactory,
    location: str,
    media_type: str,
    sent: bytes,
    chunked: bool,
) -> None:
    """A client gone mid-body: the view must not take what came as the whole body
    (a write of half a form), whatever gunicorn hands on, and the answer is the
    client's error, never a 500."""
    server = start_gunicorn({}, RESOURCE_APP)
    path = f"{INPUTS}/{location}"
    answer = body_cut_short(server.port, path, media_type, sent, chunked)
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 400 "), answer
    assert f"Content-Type: {PROBLEM_MEDIA_TYPE}".encode() in head, answer
    assert json.loads(body)["status"] == 400
    headers = {"Content-Type": "application/json"}
    whole = server.request("POST", f"{INPUTS}/json", headers, body=b'{"age": 3}')
    assert whole.status == 200
