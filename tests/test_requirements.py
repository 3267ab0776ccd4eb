"""The pinned requirements: the service's runtime set, the test tools on top."""

import configparser
from collections.abc import Callable, Iterable
from importlib import metadata

import pytest
from packaging.requirements import Requirement
from packaging.utils import NormalizedName, canonicalize_name

from tests.support.gunicorn_process import REPO_ROOT

TEST_INPUT = REPO_ROOT / "requirements-test.in"


def setup_requirements(option: str, section: str = "options") -> list[Requirement]:
    """The requirements one option of setup.cfg lists (install_requires, an extra)."""
    setup = configparser.ConfigParser()
    setup.read(REPO_ROOT / "setup.cfg")
    lines = setup[section][option].splitlines()
    return [Requirement(line) for line in lines if line.strip()]


# The extras the image carries, pinned in requirements.txt with install_requires: the
# datastore checks' drivers (petsage.health.dependencies) and petsage smoke's schema
# validator (petsage.cli.contract).
RUNTIME_EXTRAS = ("postgresql", "redis", "smoke")


def install_requires() -> list[Requirement]:
    """What the image holds: setup.cfg's install_requires and the runtime extras."""
    extras = [
        requirement
        for extra in RUNTIME_EXTRAS
        for requirement in setup_requirements(extra, "options.extras_require")
    ]
    return setup_requirements("install_requires") + extras


def extra_test_tools() -> list[Requirement]:
    """The test tools: setup.cfg's ``test`` extra."""
    return setup_requirements("test", "options.extras_require")


def pins(path: str) -> dict[NormalizedName, str]:
    """The exact pins of a pip-compile output file, by normalized name."""
    pinned = {}
    for line in (REPO_ROOT / path).read_text().splitlines():
        if line and not line.startswith((" ", "#", "-")):
            requirement = Requirement(line)
            [specifier] = requirement.specifier
            assert specifier.operator == "==", line
            pinned[canonicalize_name(requirement.name)] = specifier.version
    return pinned


def dependency_closure(requirements: Iterable[Requirement]) -> set[NormalizedName]:
    """The distributions ``requirements`` bring in, read from what is installed here."""
    found: set[NormalizedName] = set()
    visited: set[tuple[NormalizedName, str]] = set()
    pending = list(requirements)
    while pending:
        requirement = pending.pop()
        name = canonicalize_name(requirement.name)
        found.add(name)
        for extra in {"", *requirement.extras}:
            if (name, extra) in visited:
                continue
            visited.add((name, extra))
            for line in metadata.requires(name) or []:
                dependency = Requirement(line)
                marker = dependency.marker
                if marker is None or marker.evaluate({"extra": extra}):
                    pending.append(dependency)
    return found


def pip_compile_command(path: str) -> str:
    """The command pip-compile wrote into the header of the file it generated."""
    lines = (REPO_ROOT / path).read_text().splitlines()
    [command] = [line.strip("# ") for line in lines[:6] if "#    pip-compile " in line]
    return command


@pytest.mark.parametrize(
    ("path", "requirements"),
    [
        ("requirements.txt", install_requires),
        ("requirements-test.txt", extra_test_tools),
    ],
)
def test_every_range_of_setup_cfg_is_pinned_within_it(
    path: str, requirements: Callable[[], list[Requirement]]
) -> None:
    pinned = pins(path)
    for requirement in requirements():
        version = pinned[canonicalize_name(requirement.name)]
        assert requirement.specifier.contains(version), f"{requirement}: {version}"


def test_runtime_pins_are_exactly_what_the_service_and_its_drivers_bring_in() -> None:
    assert set(pins("requirements.txt")) == dependency_closure(install_requires())


def test_no_test_tool_is_a_runtime_pin() -> None:
    tools: set[str] = {canonicalize_name(tool.name) for tool in extra_test_tools()}
    tools |= {"pytest", "mypy", "ruff", "playwright", "schemathesis", "bandit"}
    assert set(pins("requirements.txt")) & tools == set()


def test_test_pins_start_from_the_runtime_pins() -> None:
    [first, *_] = [
        line
        for line in TEST_INPUT.read_text().splitlines()
        if line and not line.startswith("#")
    ]
    assert first == "-r requirements.txt"
    assert TEST_INPUT.name in pip_compile_command("requirements-test.txt")
    runtime = pins("requirements.txt")
    assert {name: pins("requirements-test.txt")[name] for name in runtime} == runtime


def test_pip_tools_is_pinned_with_the_test_tools() -> None:
    assert "pip-tools" in pins("requirements-test.txt")


@pytest.mark.parametrize("path", ["requirements.txt", "requirements-test.txt"])
def test_readme_gives_the_command_that_generated_the_pins(path: str) -> None:
    command = pip_compile_command(path)
    assert f"--output-file={path} " in command
    assert f".venv/bin/{command}" in (REPO_ROOT / "README.md").read_text()
