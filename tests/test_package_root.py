"""The package root imports nothing: a program loads only what it uses.

The shared modules (settings, instance records, the health package's names) and the
``petsage`` command's own subcommands load none of the application's libraries, so
gunicorn's config and a drain or probe on a deploy machine do not build the
application to read a setting. Each case runs in a fresh interpreter: this one has
loaded everything long ago.
"""

import json
import os
import subprocess
import sys

import pytest

import petsage
import petsage.app
import petsage.health
from tests.support.gunicorn_process import REPO_ROOT

# What the application needs and a shared module or PetSage's own command must not.
APPLICATION_LIBRARIES = (
    "flask",
    "flask_smorest",
    "marshmallow",
    "apispec",
    "prometheus_client",
    "werkzeug",
    "webargs",
)


def libraries_loaded_by(code: str) -> list[str]:
    """The application libraries a fresh interpreter has loaded after ``code``."""
    report = (
        "import json, sys\n"
        f"print(json.dumps(sorted(set({APPLICATION_LIBRARIES!r}) & set(sys.modules))))"
    )
    result = subprocess.run(
        [sys.executable, "-c", f"{code}\n{report}"],
        cwd=REPO_ROOT,
        env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
        capture_output=True,
        text=True,
        timeout=60,
    )
    loaded: list[str] = json.loads(result.stdout.splitlines()[-1])
    return loaded


@pytest.mark.parametrize(
    "module",
    [
        "petsage",
        "petsage.config",
        "petsage.cpu_quota",
        "petsage.instance",
        "petsage.instance.directory",
        "petsage.instance.memory",
        "petsage.wire",
        "petsage.health",
        "petsage.health.state",
    ],
)
def test_a_shared_module_loads_no_application_library(module: str) -> None:
    assert libraries_loaded_by(f"import {module}") == []


@pytest.mark.parametrize(
    "arguments",
    [
        ["drain", "--help"],
        ["probe", "--help"],
        ["smoke", "--help"],
        # Run for real: no instance is found, no service answers.
        ["probe", "--instance", "1"],
        ["drain", "--cancel", "--instance", "1"],
        ["smoke", "http://127.0.0.1:9/", "--timeout", "0"],
    ],
)
def test_the_commands_own_subcommands_load_no_application_library(
    arguments: list[str], tmp_path: os.PathLike[str]
) -> None:
    code = (
        "import os, sys\n"
        f"os.environ['PETSAGE_STATE_DIR'] = {str(tmp_path)!r}\n"
        f"sys.argv = ['petsage', *{arguments!r}]\n"
        "from petsage.cli.commands import main\n"
        "try:\n"
        "    main()\n"
        "except SystemExit:\n"
        "    pass\n"
    )
    assert libraries_loaded_by(code) == []


def test_the_openapi_command_builds_the_application() -> None:
    code = (
        "import sys\n"
        "sys.argv = ['petsage', 'openapi', 'list-config-prefixes']\n"
        "from petsage.cli.commands import main\n"
        "try:\n"
        "    main()\n"
        "except SystemExit:\n"
        "    pass\n"
    )
    assert "flask_smorest" in libraries_loaded_by(code)


def test_the_root_offers_the_factory_and_its_names() -> None:
    for name in petsage.__all__:
        assert getattr(petsage, name) is getattr(petsage.app, name)
    with pytest.raises(AttributeError, match="no attribute 'nothing'"):
        _ = petsage.nothing


def test_the_health_package_offers_the_documented_check_api() -> None:
    from petsage.health import Check, CheckFailed, Observation, register_check

    assert all((Check, CheckFailed, Observation, register_check))
    for name in petsage.health.__all__:
        assert getattr(petsage.health, name) is not None
    assert set(petsage.health.__all__) == set(petsage.health.EXPORTS)
