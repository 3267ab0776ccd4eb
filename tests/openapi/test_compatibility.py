"""The linters consumers run, and the breaking-change gate against the releases and
their errata."""

import copy
import json
import shutil
from pathlib import Path
from typing import Any

import pytest

from petsage import create_app
from tests.support.gunicorn_process import REPO_ROOT
from tests.support.openapi_tools import TOOLS, require_npm_packages, run_tool

pytestmark = pytest.mark.slow  # real processes: not in the fast tier

CONTRACTS = REPO_ROOT / "contracts"
GATE = TOOLS / "check-compatibility.mjs"


@pytest.fixture(autouse=True)
def npm_packages() -> None:
    """The tests here run tools/openapi's npm packages: installed first, or skipped."""
    require_npm_packages()


@pytest.fixture
def current() -> dict[str, Any]:
    """The committed document."""
    document: dict[str, Any] = json.loads((REPO_ROOT / "openapi.json").read_text())
    return document


def gate(document: dict[str, Any], tmp_path: Path) -> tuple[int, str]:
    """The gate's exit code and output for ``document`` against the real contracts."""
    path = tmp_path / "openapi.json"
    path.write_text(json.dumps(document, indent=2))
    result = run_tool(["node", GATE, path, CONTRACTS])
    return result.returncode, result.stdout


def test_committed_document_passes_redocly_and_spectral_without_a_warning() -> None:
    result = run_tool([TOOLS / "lint"])
    assert result.returncode == 0, result.stdout
    assert "Your API description is valid" in result.stdout
    assert "No results with a severity of 'warn' or higher found!" in result.stdout


def test_the_release_contract_is_the_document_released_as_1_0_0() -> None:
    released = json.loads((CONTRACTS / "1.0.0.json").read_text())
    assert released["info"]["version"] == "1.0.0"
    assert "/api/v1/smoke-test" in released["paths"]


def test_committed_document_is_compatible_with_the_latest_release(
    current: dict[str, Any], tmp_path: Path
) -> None:
    status, output = gate(current, tmp_path)
    assert status == 0, output
    assert "with the released 1.0.0.json" in output


def breaking_changes(document: dict[str, Any]) -> dict[str, Any]:
    """``document`` with a removed operation, a new required parameter, a changed
    response type and a removed enum value of a parameter."""
    changed = copy.deepcopy(document)
    del changed["paths"]["/livez/{check}"]
    changed["paths"]["/health"]["get"].setdefault("parameters", []).append(
        {"name": "zone", "in": "query", "required": True, "schema": {"type": "string"}}
    )
    smoke = changed["components"]["schemas"]["SmokeTestResponse"]
    smoke["properties"]["status"]["type"] = "integer"
    (verbose,) = [
        parameter
        for parameter in changed["paths"]["/readyz"]["get"]["parameters"]
        if parameter["name"] == "verbose"
    ]
    verbose["schema"]["enum"] = [""]
    return changed


def test_gate_rejects_each_breaking_change(
    current: dict[str, Any], tmp_path: Path
) -> None:
    status, output = gate(breaking_changes(current), tmp_path)
    assert status != 0, output
    for rule in (
        "[prevent operation removal]",
        "[prevent new required query parameters] cannot add required query"
        " parameter zone",
        "[prevent response property type changes]",
        "[prevent query parameters enum breaking changes] cannot remove enum option"
        " 'true' from query parameter 'verbose'",
    ):
        assert rule in output, f"{rule} not reported:\n{output}"
    assert "raise the major version" in output


def test_gate_accepts_a_compatible_change(
    current: dict[str, Any], tmp_path: Path
) -> None:
    changed = copy.deepcopy(current)
    changed["info"]["version"] = "1.1.0"
    changed["paths"]["/health"]["get"].setdefault("parameters", []).append(
        {"name": "zone", "in": "query", "required": False, "schema": {"type": "string"}}
    )
    smoke = changed["components"]["schemas"]["SmokeTestResponse"]
    smoke["properties"]["servedBy"] = {"type": "string"}
    status, output = gate(changed, tmp_path)
    assert status == 0, output


def test_gate_accepts_breaking_changes_with_a_new_major_version(
    current: dict[str, Any], tmp_path: Path
) -> None:
    changed = breaking_changes(current)
    changed["info"]["version"] = "2.0.0"
    status, output = gate(changed, tmp_path)
    assert status == 0, output
    assert "major version 1 -> 2" in output


def test_gate_compares_with_the_latest_release(
    current: dict[str, Any], tmp_path: Path
) -> None:
    contracts = tmp_path / "contracts"
    contracts.mkdir()
    shutil.copy(CONTRACTS / "1.0.0.json", contracts / "1.0.0.json")
    later = copy.deepcopy(current)
    later["info"]["version"] = "1.10.0"
    (contracts / "1.10.0.json").write_text(json.dumps(later))
    (contracts / "1.9.0.json").write_text(json.dumps(later))
    # A new major version: the gate names the release it compares with, and stops.
    document = tmp_path / "openapi.json"
    document.write_text(json.dumps({**current, "info": {"version": "2.0.0"}}))
    result = run_tool(["node", GATE, document, contracts])
    assert "with the released 1.10.0.json" in result.stdout, result.stdout


def test_gate_says_which_erratum_it_lets_pass_and_why(
    current: dict[str, Any], tmp_path: Path
) -> None:
    status, output = gate(current, tmp_path)
    assert status == 0, output
    assert (
        "erratum of 1.0.0.json: GET /metrics left out of the comparison: 1.0.0's"
        " document listed it, but the public port never answered it by default"
    ) in output


def test_gate_compares_an_erratum_operation_the_document_still_has(
    tmp_path: Path,
) -> None:
    document: Any = (
        create_app({"PUBLIC_METRICS": True}).test_client().get("/openapi.json").json
    )
    del document["paths"]["/metrics"]["get"]["responses"]["200"]
    status, output = gate(document, tmp_path)
    assert status != 0, output
    assert "erratum of" not in output
    assert "must not remove response status code 200" in output


def test_gate_stops_on_an_erratum_its_release_does_not_list(
    current: dict[str, Any], tmp_path: Path
) -> None:
    contracts = tmp_path / "contracts"
    contracts.mkdir()
    shutil.copy(CONTRACTS / "1.0.0.json", contracts / "1.0.0.json")
    errata = {"1.0.0": {"GET /nowhere": "never listed"}}
    (contracts / "errata.json").write_text(json.dumps(errata))
    document = tmp_path / "openapi.json"
    document.write_text(json.dumps(current))
    result = run_tool(["node", GATE, document, contracts])
    assert result.returncode == 2, result.stdout
    assert "contracts/errata.json: 1.0.0.json has no operation GET /nowhere" in (
        result.stdout
    )
