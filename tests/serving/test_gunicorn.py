"""PetSage under a real gunicorn with gunicorn.conf.py, over HTTP on 127.0.0.1."""

import json
import os
import socket
import subprocess
import sys
from collections.abc import Iterator, Sequence

import gunicorn
import pytest

from tests.support.gunicorn_process import (
    GUNICORN,
    REPO_ROOT,
    GunicornFactory,
    GunicornServer,
)

SMOKE_TEST = "/api/v1/smoke-test"
BODY = {"status": "ok", "message": "PetSage smoke test successful!"}


def test_get_smoke_test_over_http(gunicorn: GunicornServer) -> None:
    response = gunicorn.request("GET", SMOKE_TEST)
    assert response.status == 200
    assert response.headers["Content-Type"] == "application/json"
    assert response.headers["Cache-Control"] == "no-store"
    assert json.loads(response.body) == BODY


@pytest.mark.slow
def test_head_smoke_test_over_http(gunicorn: GunicornServer) -> None:
    get = gunicorn.request("GET", SMOKE_TEST)
    head = gunicorn.request("HEAD", SMOKE_TEST)
    assert head.status == 200
    assert head.body == b""
    for name in ("Content-Type", "Content-Length", "Cache-Control"):
        assert head.headers[name] == get.headers[name]


@pytest.mark.slow
def test_options_smoke_test_over_http(gunicorn: GunicornServer) -> None:
    response = gunicorn.request("OPTIONS", SMOKE_TEST)
    assert response.status == 200
    assert set(response.headers["Allow"].split(", ")) == {"GET", "HEAD", "OPTIONS"}


@pytest.mark.slow
def test_405_over_http_is_problem_json_with_allow(gunicorn: GunicornServer) -> None:
    response = gunicorn.request("DELETE", SMOKE_TEST)
    assert response.status == 405
    assert response.headers["Content-Type"] == "application/problem+json"
    assert "GET" in response.headers["Allow"]
    assert json.loads(response.body)["status"] == 405


@pytest.mark.slow
def test_openapi_document_over_http(gunicorn: GunicornServer) -> None:
    response = gunicorn.request("GET", "/openapi.json")
    assert response.status == 200
    assert json.loads(response.body)["info"]["title"] == "PetSage Backend API"


@pytest.mark.slow
def test_gunicorn_runs_petsages_gthread_workers_from_the_config(
    gunicorn: GunicornServer,
) -> None:
    # gunicorn's gthread worker, which also stops when its master is gone.
    assert "Using worker: petsage.serving.worker.ThreadWorker" in gunicorn.log()


@pytest.mark.slow
def test_two_instances_run_side_by_side(start_gunicorn: GunicornFactory) -> None:
    first = start_gunicorn()
    second = start_gunicorn()
    assert first.request("GET", SMOKE_TEST).status == 200
    assert second.request("GET", SMOKE_TEST).status == 200


@pytest.mark.slow
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


IN_USE = (
    "cannot be listened on: Address already in use (another PetSage instance, or"
    " another program, listens there)"
)


@pytest.fixture
def taken_port() -> Iterator[int]:
    """A port on 127.0.0.1 that this test listens on, so gunicorn cannot."""
    with socket.create_server(("127.0.0.1", 0)) as taken:
        yield taken.getsockname()[1]


def run_gunicorn(
    env: dict[str, str], args: Sequence[str] = ()
) -> subprocess.CompletedProcess[str]:
    """Run ``gunicorn [args] wsgi:app`` in the project root with only ``env``'s
    PETSAGE_* settings (and one worker, JSON logs) until it exits."""
    return subprocess.run(
        [GUNICORN, *args, "wsgi:app"],
        cwd=REPO_ROOT,
        env={
            **{
                name: value
                for name, value in os.environ.items()
                if not name.startswith("PETSAGE_")
            },
            "PETSAGE_WORKERS": "1",
            "PETSAGE_LOG_FORMAT": "json",
            **env,
        },
        capture_output=True,
        text=True,
        timeout=60,
    )


def logged_messages(output: str) -> list[str]:
    """The messages of gunicorn's JSON log lines, in order."""
    return [json.loads(line)["message"] for line in output.splitlines()]


@pytest.mark.slow
def test_a_taken_petsage_bind_stops_gunicorn_at_once_with_one_line(
    taken_port: int,
) -> None:
    result = run_gunicorn({"PETSAGE_BIND": f"127.0.0.1:{taken_port}"})
    assert result.returncode == 1
    # Not "Connection in use" and "Retrying in 1 second", five times over.
    assert logged_messages(result.stdout) == [
        f"Starting gunicorn {gunicorn.__version__}",
        f"PETSAGE_BIND='127.0.0.1:{taken_port}' {IN_USE}; choose another with"
        " PETSAGE_BIND, or with gunicorn's -b/--bind, which overrides it",
    ]
    assert result.stderr == ""


@pytest.mark.slow
def test_a_taken_bind_option_is_named_as_gunicorns_own(taken_port: int) -> None:
    result = run_gunicorn(
        {"PETSAGE_BIND": "127.0.0.1:0"}, args=["-b", f"127.0.0.1:{taken_port}"]
    )
    assert result.returncode == 1
    assert logged_messages(result.stdout) == [
        f"Starting gunicorn {gunicorn.__version__}",
        f"gunicorn's -b/--bind '127.0.0.1:{taken_port}' (which overrides PETSAGE_BIND)"
        f" {IN_USE}",
    ]
    assert result.stderr == ""
