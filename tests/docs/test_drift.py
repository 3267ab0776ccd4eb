"""Facts the README once got wrong, held to the running service and to the files.

One gunicorn, started as the README's start command starts it but with stdout and
stderr apart, answers for where the logs go and for gunicorn's own errors.
"""

import json
import re
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.docs.pages import DOCS, README, name, pages, prose
from tests.support.gunicorn_process import REPO_ROOT, complete_lines

GUNICORN = Path(sys.executable).parent / "gunicorn"
CONTRACT = DOCS / "api" / "contract.md"
MONITORING = DOCS / "operators" / "monitoring.md"
SETTINGS_PAGE = DOCS / "settings.md"
BENCHMARK = DOCS / "contributors" / "benchmark.md"
RESULTS = REPO_ROOT / "bench" / "results" / "RESULTS.md"

# Requests gunicorn refuses before PetSage's application sees them, and the status
# the contract page gives for each.
REFUSED = {
    "a malformed request line `400`": b"GARBAGE\r\n\r\n",
    "headers over gunicorn's limits `431`": b"GET / HTTP/1.1\r\nHost: x\r\nX-Big: "
    + b"b" * 20_000
    + b"\r\n\r\n",
    "a request line over its limit `414`": b"GET /"
    + b"a" * 10_000
    + b" HTTP/1.1\r\nHost: x\r\n\r\n",
}


@dataclass
class Service:
    """A running gunicorn whose stdout and stderr go to files of their own."""

    port: int
    stdout: Path
    stderr: Path


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    """``gunicorn`` in the project root, one worker, stopped at the end."""
    directory = tmp_path_factory.mktemp("drift")
    stdout, stderr = directory / "stdout", directory / "stderr"
    environment = {
        "PATH": "/usr/bin:/bin",
        "PETSAGE_BIND": "127.0.0.1:0",
        "PETSAGE_WORKERS": "1",
        "PETSAGE_SHUTDOWN_DELAY": "0",
        "PETSAGE_STATE_DIR": str(directory),
    }
    with stdout.open("wb") as out, stderr.open("wb") as err:
        process = subprocess.Popen(
            [GUNICORN], cwd=REPO_ROOT, env=environment, stdout=out, stderr=err
        )
    try:
        deadline = time.monotonic() + 15
        port = 0
        while not port or b" 200 " not in exchange(
            port, b"GET /livez HTTP/1.0\r\n\r\n"
        ):
            assert process.poll() is None, stdout.read_text() + stderr.read_text()
            assert time.monotonic() < deadline, "gunicorn did not answer /livez"
            time.sleep(0.05)
            listening = re.search(
                r"Listening at: http://127.0.0.1:(\d+)", stdout.read_text()
            )
            port = int(listening[1]) if listening else 0
        yield Service(port, stdout, stderr)
    finally:
        process.terminate()
        process.wait(timeout=20)


def exchange(port: int, request: bytes) -> bytes:
    """Send raw bytes, read until the server closes; empty when nothing listens."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=5) as connection:
            connection.sendall(request)
            answer = b""
            while chunk := connection.recv(65536):
                answer += chunk
            return answer
    except OSError:
        return b""


@pytest.mark.slow
def test_gunicorns_error_log_goes_to_stdout_and_nothing_to_stderr(
    service: Service,
) -> None:
    records = [
        json.loads(line)
        for line in complete_lines(service.stdout.read_text())
        if line.startswith("{")
    ]
    assert any(record["logger"] == "gunicorn.error" for record in records)
    assert service.stderr.read_text() == ""


def test_the_pages_say_the_error_log_goes_to_stdout() -> None:
    monitoring = " ".join(prose(MONITORING).split())
    assert "Every record goes to stdout, gunicorn's error log included" in monitoring
    settings = " ".join(prose(SETTINGS_PAGE).split())
    assert "Access log and error log both to stdout" in settings
    for page in pages():
        text = " ".join(prose(page).split()).lower()
        assert not re.search(r"error log (?:to|on|goes to) stderr", text), name(page)


@pytest.mark.slow
@pytest.mark.parametrize("claim", list(REFUSED))
def test_gunicorns_own_refusals_are_problem_json_with_the_documented_status(
    service: Service, claim: str
) -> None:
    answer = exchange(service.port, REFUSED[claim])
    head, _, body = answer.partition(b"\r\n\r\n")
    status = int(head.split()[1])
    assert f"`{status}`" in claim
    assert b"\r\nContent-Type: application/problem+json\r\n" in head
    assert json.loads(body)["status"] == status
    assert claim in " ".join(prose(CONTRACT).split())


def test_no_page_says_gunicorn_answers_with_a_plain_page() -> None:
    for page in pages():
        text = " ".join(prose(page).split())
        assert not re.search(r"gunicorn's own plain|own plain `?4", text), name(page)


def measured_minutes() -> float:
    """The last full benchmark run's duration in minutes."""
    [minutes] = re.findall(r", in (\d+(?:\.\d+)?) min:", RESULTS.read_text())
    return float(minutes)


DURATION_STATED = [
    (BENCHMARK, r"`bash bench/run` \(about (\d+) minutes\)"),
    (REPO_ROOT / "bench" / "README.md", r"for about (\d+) minutes"),
    (REPO_ROOT / "bench" / "run", r"full run \([^)]*\), ~(\d+) min"),
]


def test_the_benchmarks_duration_is_stated_alike_and_near_the_last_run() -> None:
    stated: dict[str, int] = {}
    for path, pattern in DURATION_STATED:
        [minutes] = re.findall(pattern, path.read_text())
        stated[path.name] = int(minutes)
    # One figure everywhere; each full run takes a little more or less than the last.
    assert len(set(stated.values())) == 1, stated
    [minutes] = set(stated.values())
    assert abs(minutes - measured_minutes()) <= 1, (
        f"{stated}; bench/results/RESULTS.md measured {measured_minutes()} min"
    )


def test_no_other_page_gives_the_benchmarks_duration() -> None:
    for page in pages():
        if page == BENCHMARK:
            continue
        assert not re.search(r"bench/run` \(about \d+ min", page.read_text()), name(
            page
        )


def test_the_readme_has_no_performance_figures_to_go_stale() -> None:
    assert "us/req" not in README.read_text()
