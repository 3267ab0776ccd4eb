"""A TypeScript client generated from the committed document works against gunicorn.

openapi-typescript turns openapi.json into types, tsc checks the client's test
(tools/openapi/client/petsage.test.js) against them, and node runs it against a real
gunicorn: the smoke test, /readyz, and /health with and without the health token.
"""

import time

import pytest

from tests.support.gunicorn_process import REPO_ROOT, GunicornFactory, GunicornServer
from tests.support.openapi_tools import BIN, TOOLS, require_npm_packages, run_tool

pytestmark = pytest.mark.slow  # real processes: not in the fast tier

TOKEN = "typescript-token"
TYPES = TOOLS / "client" / "petsage.d.ts"


@pytest.fixture(autouse=True)
def npm_packages() -> None:
    """The tests here run tools/openapi's npm packages: installed first, or skipped."""
    require_npm_packages()


def generate_and_check_types() -> None:
    """Generate the client's types from openapi.json and type-check the client."""
    generated = run_tool(
        [BIN / "openapi-typescript", REPO_ROOT / "openapi.json", "-o", TYPES]
    )
    assert generated.returncode == 0, generated.stdout
    checked = run_tool([BIN / "tsc", "--noEmit", "-p", TOOLS])
    assert checked.returncode == 0, checked.stdout


def wait_until_ready(server: GunicornServer, timeout: float = 10.0) -> None:
    """Wait for /readyz 200: the first check cycle runs after the workers start."""
    deadline = time.monotonic() + timeout
    while server.request("GET", "/readyz").status != 200:
        assert time.monotonic() < deadline, "/readyz never answered 200"
        time.sleep(0.05)


def test_typescript_client_calls_the_service(start_gunicorn: GunicornFactory) -> None:
    generate_and_check_types()
    server = start_gunicorn({"PETSAGE_HEALTH_TOKEN": TOKEN})
    wait_until_ready(server)
    result = run_tool(
        ["node", "--test", TOOLS / "client" / "petsage.test.js"],
        env={
            "PETSAGE_URL": f"http://127.0.0.1:{server.port}",
            "PETSAGE_HEALTH_TOKEN": TOKEN,
        },
    )
    assert result.returncode == 0, result.stdout
    assert "# pass 4" in result.stdout, result.stdout
    assert "# fail 0" in result.stdout, result.stdout
