"""A Python client generated from the live document works against a real gunicorn."""

import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from tests.docs.pages import DOCS, blocks
from tests.support.gunicorn_process import REPO_ROOT, GunicornFactory

pytestmark = pytest.mark.slow  # real processes: not in the fast tier

BIN = Path(sys.executable).parent
GENERATOR_CONFIG = {
    "project_name_override": "petsage-client",
    "package_name_override": "petsage_client",
}
CALLS = """
import json, sys
from petsage_client import Client
from petsage_client.api.health import get_health, get_liveness, get_readiness
from petsage_client.api.system_health_smoke_tests import run_smoke_test
from petsage_client.models import Health, HealthStatus, ProbeStatus, SmokeTestResponse

client = Client(base_url=sys.argv[1], raise_on_unexpected_status=True)
smoke = run_smoke_test.sync(client=client)
health = get_health.sync(client=client)
live = get_liveness.sync(client=client)
ready = get_readiness.sync_detailed(client=client)
print(json.dumps({
    "smoke": [type(smoke).__name__, isinstance(smoke, SmokeTestResponse),
              smoke.status, smoke.message],
    "health": [isinstance(health, Health), isinstance(health.status, HealthStatus),
               health.status.value, health.release_id, health.service_id],
    "live": [isinstance(live, ProbeStatus), live.status.value],
    "ready": [int(ready.status_code), type(ready.parsed).__name__],
}))
"""


def run(
    command: list[str], env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """Run a command, failing the test with its output if it fails."""
    result = subprocess.run(
        command,
        capture_output=True,
        text=True,
        timeout=180,
        env=env,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return result


def test_generated_client_calls_the_service(
    start_gunicorn: GunicornFactory, tmp_path: Path
) -> None:
    server = start_gunicorn({"PETSAGE_RELEASE_ID": "client-test"})
    document = tmp_path / "openapi.json"
    document.write_bytes(server.request("GET", "/openapi.json").body)
    config = tmp_path / "generator.json"
    config.write_text(json.dumps(GENERATOR_CONFIG))
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"}
    # The package alone (no packaging metadata), importable from a temporary place.
    site = tmp_path / "site"
    run(
        [
            str(BIN / "openapi-python-client"),
            "generate",
            "--path",
            str(document),
            "--config",
            str(config),
            "--meta",
            "none",
            "--output-path",
            str(site / "petsage_client"),
        ],
        env=env,
    )
    result = run(
        [sys.executable, "-c", CALLS, f"http://127.0.0.1:{server.port}"],
        env={**os.environ, "PYTHONPATH": str(site)},
    )
    answers = json.loads(result.stdout)
    assert answers["smoke"] == [
        "SmokeTestResponse",
        True,
        "ok",
        "PetSage smoke test successful!",
    ]
    assert answers["health"] == [True, True, "pass", "client-test", "petsage-backend"]
    assert answers["live"] == [True, "pass"]
    assert answers["ready"] == [200, "ProbeStatus"]


def test_the_clients_page_generates_the_client_outside_the_checkout() -> None:
    [command] = [
        command
        for block in blocks(DOCS / "api" / "clients.md")
        for command in block.commands()
        if "openapi-python-client generate" in command
    ]
    arguments = shlex.split(command)
    output = Path(arguments[arguments.index("--output-path") + 1])
    assert not (REPO_ROOT / output).resolve().is_relative_to(REPO_ROOT.resolve())
