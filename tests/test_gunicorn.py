"""PetSage under a real gunicorn with gunicorn.conf.py, over HTTP on 127.0.0.1."""

import json
import subprocess
import sys

from tests.gunicorn_process import REPO_ROOT, GunicornFactory, GunicornServer

SMOKE_TEST = "/api/v1/smoke-test"
BODY = {"status": "ok", "message": "PetSage smoke test successful!"}


def test_get_smoke_test_over_http(gunicorn: GunicornServer) -> None:
    response = gunicorn.request("GET", SMOKE_TEST)
    assert response.status == 200
    assert response.headers["Content-Type"] == "application/json"
    assert response.headers["Cache-Control"] == "no-store"
    assert json.loads(response.body) == BODY


def test_head_smoke_test_over_http(gunicorn: GunicornServer) -> None:
    get = gunicorn.request("GET", SMOKE_TEST)
    head = gunicorn.request("HEAD", SMOKE_TEST)
    assert head.status == 200
    assert head.body == b""
    for name in ("Content-Type", "Content-Length", "Cache-Control"):
        assert head.headers[name] == get.headers[name]


def test_options_smoke_test_over_http(gunicorn: GunicornServer) -> None:
    response = gunicorn.request("OPTIONS", SMOKE_TEST)
    assert response.status == 200
    assert set(response.headers["Allow"].split(", ")) == {"GET", "HEAD", "OPTIONS"}


def test_405_over_http_is_problem_json_with_allow(gunicorn: GunicornServer) -> None:
    response = gunicorn.request("DELETE", SMOKE_TEST)
    assert response.status == 405
    assert response.headers["Content-Type"] == "application/problem+json"
    assert "GET" in response.headers["Allow"]
    assert json.loads(response.body)["status"] == 405


def test_openapi_document_over_http(gunicorn: GunicornServer) -> None:
    response = gunicorn.request("GET", "/openapi.json")
    assert response.status == 200
    assert json.loads(response.body)["info"]["title"] == "PetSage Backend API"


def test_gunicorn_runs_gthread_workers_from_the_config(
    gunicorn: GunicornServer,
) -> None:
    assert "Using worker: gthread" in gunicorn.log()


def test_two_instances_run_side_by_side(start_gunicorn: GunicornFactory) -> None:
    first = start_gunicorn()
    second = start_gunicorn()
    assert first.request("GET", SMOKE_TEST).status == 200
    assert second.request("GET", SMOKE_TEST).status == 200


def test_bad_setting_stops_gunicorn_with_one_line() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "gunicorn"],
        cwd=REPO_ROOT,
        env={"PETSAGE_THREADS": "lots", "PATH": ""},
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode != 0
    assert result.stderr.strip().splitlines() == [
        "petsage: PETSAGE_THREADS='lots' is not valid: "
        "expected a whole number from 1 to 256"
    ]
