"""PetSage under a real gunicorn with gunicorn.conf.py, over HTTP on 127.0.0.1."""

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import gunicorn
import pytest

from tests.support.apps.forking import CHILDREN_VARIABLE
from tests.support.fault_record import FaultRecorder
from tests.support.gunicorn_process import (
    GUNICORN,
    REPO_ROOT,
    GunicornFactory,
    GunicornServer,
)
from tests.support.instances import LIVENESS
from tests.support.management import free_port
from tests.support.processes import answers, free_ports, gone, wait_until

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


def pids_in(record: Path) -> list[int]:
    """The pids a forking check's children wrote to ``record``, one a line."""
    return [int(line) for line in record.read_text().split()] if record.exists() else []


@pytest.fixture
def forked_children(tmp_path: Path) -> Iterator[Path]:
    """Where a forking check's children write their pids; every one killed after."""
    record = tmp_path / "children"
    yield record
    for pid in pids_in(record):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def refuses(port: int) -> bool:
    """Whether a connection to 127.0.0.1:``port`` is refused (nothing listens)."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=2):
            return False
    except ConnectionRefusedError:
        return True
    except OSError:
        return False  # accepted by the kernel, or timed out: someone listens


@pytest.mark.fault
@pytest.mark.slow
def test_a_checks_forked_child_keeps_no_listener_once_the_master_stops(
    start_gunicorn: GunicornFactory, forked_children: Path, fault_record: FaultRecorder
) -> None:
    public, management = free_ports(2)
    env = {"PETSAGE_MANAGEMENT_BIND": f"127.0.0.1:{management}"}
    args = ["-b", f"127.0.0.1:{public}"]
    old = start_gunicorn(
        {**env, CHILDREN_VARIABLE: str(forked_children)},
        app="tests.support.apps.forking:app",
        args=args,
    )
    wait_until(lambda: bool(pids_in(forked_children)), LIVENESS, "the check's fork")
    old.stop()
    children = pids_in(forked_children)
    outliving = [pid for pid in children if not gone(pid)]
    refused = [port for port in (public, management) if refuses(port)]
    assert outliving == children, "the children ignore SIGTERM and outlive the master"
    assert refused == [public, management]
    started = time.monotonic()
    new = start_gunicorn(env, args=args)
    wait_until(
        lambda: {answers(new.port, "/readyz"), answers(management, "/readyz")} == {200},
        LIVENESS,
        "/readyz 200 on both ports of the new instance",
    )
    fault_record(
        fault="a check's child holding the listeners",
        injected=(
            "a check forks a child without exec (os.fork) that ignores SIGTERM and"
            " sleeps; SIGTERM to the master, which exits while the child lives"
        ),
        load="a connection to each old port; /readyz on both ports of a new instance",
        sent=4,
        failed=2 - len(refused),
        lost=0,
        recovery=(
            "both old ports refused connections while the children lived; a new"
            " instance on the same public and management ports answered /readyz 200"
            f" {time.monotonic() - started:.1f} s after its start"
        ),
    )


# How the public address is given, and how the refusal names it.
SAME_ADDRESS = [
    ("PETSAGE_BIND", "127.0.0.1", "PETSAGE_BIND='127.0.0.1:{port}'"),
    (
        "-b",
        "127.0.0.1",
        "gunicorn's -b/--bind '127.0.0.1:{port}' (which overrides PETSAGE_BIND)",
    ),
    # A wildcard covers the management listener's address: the binds would collide
    # all the same. Refused before gunicorn binds: nothing listens on every interface.
    (
        "-b",
        "0.0.0.0",  # never listened on
        "gunicorn's -b/--bind '0.0.0.0:{port}' (which overrides PETSAGE_BIND)",
    ),
]


@pytest.mark.slow
@pytest.mark.parametrize(("given_by", "host", "named"), SAME_ADDRESS)
def test_one_address_for_both_listeners_is_refused_naming_both_settings(
    given_by: str, host: str, named: str
) -> None:
    port = free_port()
    env = {"PETSAGE_MANAGEMENT_BIND": f"127.0.0.1:{port}"}
    args: list[str] = []
    if given_by == "PETSAGE_BIND":
        env["PETSAGE_BIND"] = f"{host}:{port}"
    else:
        args = ["-b", f"{host}:{port}"]
    result = run_gunicorn(env, args)
    assert result.returncode == 1
    # One line naming both settings; not "Address already in use (another PetSage
    # instance, or another program, ...)", nor gunicorn's five retries.
    assert logged_messages(result.stdout) == [
        f"Starting gunicorn {gunicorn.__version__}",
        f"PETSAGE_MANAGEMENT_BIND='127.0.0.1:{port}' and {named.format(port=port)}"
        f" name the same address (port {port}): the management listener needs an"
        " address of its own; give either another port",
    ]
    assert result.stderr == ""


def wait_for_line(
    server: GunicornServer, text: str, timeout: float = 30.0
) -> list[str]:
    """The whole lines logged so far, once one of them holds ``text`` (bounded)."""
    deadline = time.monotonic() + timeout
    while True:
        lines = server.log_lines()
        if any(text in line for line in lines):
            return lines
        assert time.monotonic() < deadline, f"never logged {text!r}:\n{server.log()}"
        time.sleep(0.02)


@pytest.mark.slow
def test_the_management_address_is_logged_beside_the_public_one(
    start_gunicorn: GunicornFactory,
) -> None:
    port = free_port()
    server = start_gunicorn({"PETSAGE_MANAGEMENT_BIND": f"127.0.0.1:{port}"})
    wait_for_line(server, "Management listener at:")
    records = server.log_records()
    messages = [record["message"] for record in records]
    announced = f"Management listener at: http://127.0.0.1:{port}"
    assert messages.count(announced) == 1, messages
    [record] = [record for record in records if record["message"] == announced]
    assert record["level"] == "INFO"
    assert record["logger"] == "gunicorn.error"
    # Right beside gunicorn's own line for the public port.
    public = next(n for n, m in enumerate(messages) if m.startswith("Listening at: "))
    assert public < messages.index(announced) <= public + 2


@pytest.mark.slow
def test_the_management_address_is_logged_in_text_too(
    start_gunicorn: GunicornFactory,
) -> None:
    port = free_port()
    server = start_gunicorn(
        {
            "PETSAGE_MANAGEMENT_BIND": f"localhost:{port}",
            "PETSAGE_LOG_FORMAT": "text",
        }
    )
    lines = wait_for_line(server, "Management listener at:")
    # The address the socket was bound to, not the name it was given.
    [line] = [line for line in lines if "Management listener at:" in line]
    assert line.endswith(
        f" INFO gunicorn.error: Management listener at: http://127.0.0.1:{port}"
    )
