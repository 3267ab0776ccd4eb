"""Settings: defaults, the environment, one clear line for a bad value.

docs/settings.md is generated from SETTINGS: tests/docs/test_settings_page.py.
"""

import json
import logging
import subprocess
import sys

import pytest

from petsage import config
from petsage.config import SETTINGS, ConfigError, load_settings
from petsage.health.dependencies import Dependency, dependencies_from
from tests.support.gunicorn_process import REPO_ROOT


def test_defaults_apply_when_the_environment_is_silent() -> None:
    settings = load_settings({})
    for setting in SETTINGS:
        assert settings[setting.key] == setting.default_value(), setting.key


def test_the_drain_file_is_the_instances_own_unless_set() -> None:
    # gunicorn.conf.py gives each master its own marker (petsage/instance.py).
    assert load_settings({"PETSAGE_BIND": "0.0.0.0:9000"})["DRAIN_FILE"] is None


def test_documented_defaults() -> None:
    settings = load_settings({})
    assert settings["LOG_LEVEL"] == "INFO"
    assert settings["BIND"] == "127.0.0.1:8000"
    assert settings["THREADS"] == 4
    assert settings["TIMEOUT"] == 30
    assert settings["GRACEFUL_TIMEOUT"] == 30
    assert settings["KEEPALIVE"] == 75
    assert settings["WORKERS"] >= 3
    assert settings["RELEASE_ID"] == "1.0.0"
    assert settings["HEALTH_TOKEN"] == ""
    assert settings["SHUTDOWN_DELAY"] == 15.0
    assert settings["CHECK_PERIOD"] == 10.0
    assert settings["CHECK_TIMEOUT"] == 2.0
    assert dependencies_from(settings) == ((), ())


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
        ("PETSAGE_RELEASE_ID", "git-4f2a9c1", "git-4f2a9c1"),
        ("PETSAGE_HEALTH_TOKEN", "s3cret", "s3cret"),
        ("PETSAGE_SHUTDOWN_DELAY", "2.5", 2.5),
        ("PETSAGE_DRAIN_FILE", "/run/petsage.drain", "/run/petsage.drain"),
        ("PETSAGE_CHECK_PERIOD", "0.5", 0.5),
        ("PETSAGE_CHECK_TIMEOUT", "1", 1.0),
    ],
)
def test_environment_sets_a_value(variable: str, raw: str, value: object) -> None:
    key = variable.removeprefix("PETSAGE_")
    assert load_settings({variable: raw})[key] == value


def test_environment_sets_the_dependencies() -> None:
    raw = "db=tcp://db:5432, api=https://u:p@api.example/health"
    settings = load_settings(
        {"PETSAGE_CRITICAL_DEPENDENCIES": raw, "PETSAGE_OPTIONAL_DEPENDENCIES": ""}
    )
    # Text in the settings: petsage.health.dependencies reads the entries.
    assert settings["CRITICAL_DEPENDENCIES"] == raw
    assert dependencies_from(settings) == (
        (
            Dependency("db", "tcp://db:5432"),
            Dependency("api", "https://u:p@api.example/health"),
        ),
        (),
    )


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
        ("PETSAGE_SHUTDOWN_DELAY", "soon", "a number of seconds from 0 to 3600"),
        ("PETSAGE_CHECK_PERIOD", "0", "a number of seconds from 0.05 to 3600"),
        ("PETSAGE_CHECK_TIMEOUT", "nan", "a number of seconds from 0.01 to 600"),
        ("PETSAGE_DRAIN_FILE", "", "a file path in an existing directory"),
        ("PETSAGE_DRAIN_FILE", "/tmp/", "a file path in an existing directory"),
        ("PETSAGE_STATE_DIR", "", "the path of an existing directory"),
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


@pytest.mark.parametrize(
    "raw",
    [
        "db",
        "db=",
        "Bad Name=tcp://db:5432",
        "db=tcp://db",
        "db=ftp://db/x",
        "db=tcp://db:5432,db=tcp://db:5433",
        "api=http://user:a#b@api/",  # "#" in a password must be written %23
        "api=http://api:port/",
    ],
)
def test_bad_dependency_list_is_refused_without_echoing_it(raw: str) -> None:
    # What each refusal says: tests/health/test_dependencies.py.
    settings = load_settings(
        {"PETSAGE_CRITICAL_DEPENDENCIES": raw + ",x=http://u:pw@x/"}
    )
    with pytest.raises(ConfigError) as caught:
        dependencies_from(settings)
    message = str(caught.value)
    assert message.startswith("PETSAGE_CRITICAL_DEPENDENCIES is not valid: ")
    assert "\n" not in message
    assert "pw" not in message


def test_one_dependency_name_in_both_lists_is_refused() -> None:
    settings = load_settings(
        {
            "PETSAGE_CRITICAL_DEPENDENCIES": "db=tcp://db:5432",
            "PETSAGE_OPTIONAL_DEPENDENCIES": "db=tcp://db:5433",
        }
    )
    with pytest.raises(ConfigError, match="unique names"):
        dependencies_from(settings)


def test_unknown_petsage_variable_is_warned_about_not_fatal(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.WARNING):
        settings = load_settings({"PETSAGE_LOGLEVEL": "DEBUG"})
    assert settings["LOG_LEVEL"] == "INFO"
    assert "PETSAGE_LOGLEVEL is not a PetSage setting" in caplog.text


@pytest.mark.parametrize(
    ("typed", "meant"),
    [
        ("PETSAGE_WORKER", "PETSAGE_WORKERS"),
        ("PETSAGE_LOGLEVEL", "PETSAGE_LOG_LEVEL"),
        ("PETSAGE_MANAGMENT_BIND", "PETSAGE_MANAGEMENT_BIND"),
        ("PETSAGE_threads", "PETSAGE_THREADS"),
    ],
)
def test_an_unknown_variable_close_to_a_setting_is_warned_about_naming_it(
    typed: str,
    meant: str,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(config, "_warned_about", set())
    with caplog.at_level(logging.WARNING):
        settings = load_settings({typed: "3"})
    assert settings == load_settings({})
    assert caplog.messages == [
        f"{typed} is not a PetSage setting and is ignored; did you mean {meant}?"
    ]


def test_an_unknown_variable_close_to_no_setting_names_none(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(config, "_warned_about", set())
    with caplog.at_level(logging.WARNING):
        load_settings({"PETSAGE_PORT": "8080"})
    assert caplog.messages == ["PETSAGE_PORT is not a PetSage setting and is ignored"]


# Imports petsage.config (and what it imports) alone, not petsage's own __init__ (the
# app factory), and prints the files it opened and the directories it looked for.
WATCHED_IMPORT = """
import json, os, sys, types

package = types.ModuleType("petsage")
package.__path__ = [sys.argv[1]]
sys.modules["petsage"] = package
touched = []

def audit(event, args):
    if event == "open" and isinstance(args[0], str):
        touched.append(args[0])

sys.addaudithook(audit)
isdir = os.path.isdir
os.path.isdir = lambda path: touched.append(str(path)) or isdir(path)
import petsage.config
print(json.dumps(touched))
"""


@pytest.mark.slow  # a Python process of its own: a fresh import
def test_importing_config_reads_nothing_of_the_host() -> None:
    result = subprocess.run(
        [sys.executable, "-c", WATCHED_IMPORT, str(REPO_ROOT / "petsage")],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    touched = json.loads(result.stdout)
    # The WORKERS default reads the cgroup's CPU quota, STATE_DIR's looks for
    # /dev/shm: when read, so a command that needs neither pays for neither.
    assert [
        path
        for path in touched
        if path.startswith(("/proc/", "/sys/fs/cgroup", "/dev/shm"))
    ] == []
