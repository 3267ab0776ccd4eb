"""The ``petsage`` console script."""

import json
import subprocess
import sys
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


def listed_commands(help_text: str) -> list[str]:
    """The command names a click ``--help`` page lists under "Commands:"."""
    _, _, listing = help_text.partition("\nCommands:\n")
    return [line.split()[0] for line in listing.splitlines() if line.startswith("  ")]


def test_the_command_offers_petsage_commands_only() -> None:
    result = run_petsage("--help")
    assert result.returncode == 0, result.stderr
    assert listed_commands(result.stdout) == ["drain", "openapi", "probe", "smoke"]
    options = result.stdout.split("Options:", 1)[1].split("Commands:", 1)[0]
    assert options.split() == ["--help", "Show", "this", "message", "and", "exit."]


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
