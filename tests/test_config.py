"""Settings: documented defaults, the environment, one clear line for a bad value."""

import logging
import re
from pathlib import Path

import pytest

from petsage.config import SETTINGS, ConfigError, load_settings

README = Path(__file__).resolve().parent.parent / "README.md"


def test_defaults_apply_when_the_environment_is_silent() -> None:
    assert load_settings({}) == {setting.key: setting.default for setting in SETTINGS}


def test_documented_defaults() -> None:
    settings = load_settings({})
    assert settings["LOG_LEVEL"] == "INFO"
    assert settings["BIND"] == "127.0.0.1:8000"
    assert settings["THREADS"] == 4
    assert settings["TIMEOUT"] == 30
    assert settings["GRACEFUL_TIMEOUT"] == 30
    assert settings["KEEPALIVE"] == 75
    assert settings["WORKERS"] >= 3


@pytest.mark.parametrize(
    ("variable", "raw", "value"),
    [
        ("PETSAGE_LOG_LEVEL", "debug", "DEBUG"),
        ("PETSAGE_BIND", "0.0.0.0:9000", "0.0.0.0:9000"),
        ("PETSAGE_BIND", "[::1]:8000", "[::1]:8000"),
        ("PETSAGE_BIND", "unix:/run/petsage.sock", "unix:/run/petsage.sock"),
        ("PETSAGE_WORKERS", "3", 3),
        ("PETSAGE_THREADS", " 8 ", 8),
        ("PETSAGE_TIMEOUT", "60", 60),
        ("PETSAGE_GRACEFUL_TIMEOUT", "20", 20),
        ("PETSAGE_KEEPALIVE", "0", 0),
    ],
)
def test_environment_sets_a_value(variable: str, raw: str, value: object) -> None:
    key = variable.removeprefix("PETSAGE_")
    assert load_settings({variable: raw})[key] == value


@pytest.mark.parametrize(
    ("variable", "raw", "accepts"),
    [
        ("PETSAGE_LOG_LEVEL", "LOUD", "one of DEBUG, INFO, WARNING, ERROR, CRITICAL"),
        ("PETSAGE_BIND", "8000", "HOST:PORT"),
        ("PETSAGE_BIND", "localhost:99999", "HOST:PORT"),
        ("PETSAGE_WORKERS", "many", "a whole number from 1 to 256"),
        ("PETSAGE_WORKERS", "0", "a whole number from 1 to 256"),
        ("PETSAGE_THREADS", "2.5", "a whole number from 1 to 256"),
        ("PETSAGE_TIMEOUT", "", "a whole number of seconds"),
        ("PETSAGE_GRACEFUL_TIMEOUT", "-1", "a whole number of seconds"),
        ("PETSAGE_KEEPALIVE", "forever", "a whole number of seconds"),
    ],
)
def test_bad_value_is_one_line_naming_the_variable_and_what_it_accepts(
    variable: str, raw: str, accepts: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings({variable: raw})
    message = str(caught.value)
    assert "\n" not in message
    assert message.startswith(f"{variable}={raw!r} is not valid: expected ")
    assert accepts in message


def test_unknown_petsage_variable_is_warned_about_not_fatal(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.WARNING):
        settings = load_settings({"PETSAGE_LOGLEVEL": "DEBUG"})
    assert settings["LOG_LEVEL"] == "INFO"
    assert "PETSAGE_LOGLEVEL is not a PetSage setting" in caplog.text


def test_readme_documents_every_setting_with_its_default() -> None:
    readme = README.read_text()
    for setting in SETTINGS:
        assert re.search(rf"^\| `{setting.env_var}` \|", readme, re.MULTILINE), (
            setting.env_var
        )
