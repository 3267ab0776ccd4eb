"""The ``petsage`` console script."""

import json
import os
import subprocess
import sys
from importlib.metadata import version
from pathlib import Path

import pytest

PETSAGE = Path(sys.executable).with_name("petsage")


def run_petsage(
    *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """Run the installed ``petsage`` command."""
    return subprocess.run(
        [str(PETSAGE), *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.fixture(autouse=True)
def _require_installed_script() -> None:
    assert PETSAGE.exists(), "install the package: pip install -e ."


def test_openapi_print_writes_the_document() -> None:
    result = run_petsage("openapi", "print")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["info"]["title"] == "PetSage Backend API"


def test_bad_setting_ends_the_command_with_one_line() -> None:
    result = run_petsage("openapi", "print", env={"PETSAGE_LOG_LEVEL": "LOUD"})
    assert result.returncode != 0
    assert result.stderr.strip().splitlines() == [
        "petsage: PETSAGE_LOG_LEVEL='LOUD' is not valid: expected one of "
        "DEBUG, INFO, WARNING, ERROR, CRITICAL"
    ]


def test_an_unknown_variable_is_a_warning_naming_the_setting_meant() -> None:
    others = {
        name: value
        for name, value in os.environ.items()
        if not name.startswith("PETSAGE_")
    }
    result = run_petsage("openapi", "print", env={**others, "PETSAGE_WORKER": "3"})
    assert result.returncode == 0, result.stderr
    assert result.stderr.splitlines() == [
        "PETSAGE_WORKER is not a PetSage setting and is ignored;"
        " did you mean PETSAGE_WORKERS?"
    ]


def listed_commands(help_text: str) -> list[str]:
    """The command names a click ``--help`` page lists under "Commands:"."""
    _, _, listing = help_text.partition("\nCommands:\n")
    return [line.split()[0] for line in listing.splitlines() if line.startswith("  ")]


def test_the_command_offers_petsage_commands_only() -> None:
    result = run_petsage("--help")
    assert result.returncode == 0, result.stderr
    assert listed_commands(result.stdout) == [
        "db",
        "drain",
        "openapi",
        "probe",
        "smoke",
    ]
    options = result.stdout.split("Options:", 1)[1].split("Commands:", 1)[0]
    flags = [word for word in options.split() if word.startswith("--")]
    assert flags == ["--version", "--help"]


def test_version_names_the_distribution_and_its_version() -> None:
    result = run_petsage("--version")
    assert result.returncode == 0, result.stderr
    assert result.stdout == f"petsage-backend {version('petsage-backend')}\n"


def test_probe_says_what_its_timeout_is() -> None:
    result = run_petsage("probe", "--help")
    assert result.returncode == 0, result.stderr
    assert (
        "--timeout FLOAT RANGE Seconds to wait for the connection, and then for the"
        " answer. [default: 2.0; x>=0.1]"
    ) in " ".join(result.stdout.split())


@pytest.mark.parametrize(
    "flask_option", ["--app=wsgi:app", "--env-file=.env", "--debug"]
)
def test_flasks_own_options_are_usage_errors(flask_option: str) -> None:
    result = run_petsage(flask_option, "openapi", "--help")
    assert result.returncode == 64
    assert "No such option" in result.stderr


@pytest.mark.parametrize("flask_command", ["run", "shell", "routes"])
def test_flasks_own_commands_are_usage_errors(flask_command: str) -> None:
    result = run_petsage(flask_command)
    assert result.returncode == 64
    assert f"No such command '{flask_command}'" in result.stderr
