"""Every shell command the pages show is run by a test or CI, or marked illustrative.

A shell block (```sh, or ```console for a transcript) that is not preceded by the line
``<!-- illustrative -->`` may hold only the commands listed in ``RUN_BY``, each with
where it runs. Every block, illustrative or not, must parse (``bash -n``); every
``petsage`` command line must parse with the command's real options and values; and
every ``PETSAGE_*`` value given must be one its setting accepts.
"""

import json
import shlex
import subprocess
import sys
from collections.abc import Sequence
from importlib.metadata import entry_points
from pathlib import Path

import click
import pytest
from flask.cli import ScriptInfo

from petsage.config import SETTINGS, ConfigError, load_settings
from petsage.health.dependencies import dependencies_from
from tests.docs.pages import Block, blocks, name, normalized, pages, shell_blocks
from tests.support.gunicorn_process import REPO_ROOT
from tests.support.readme_commands import START_COMMAND, TEST_COMMAND

PIP_COMPILE_TEST = "def test_readme_gives_the_command_that_generated_the_pins("
FEATURE_PIPELINE = "tests/features/test_feature_pipeline.py"

# Each command of a block not marked illustrative, and where it runs: a file of the
# repository and a fragment of that file which runs (or, where noted, checks) it.
RUN_BY: dict[str, tuple[tuple[str, str], ...]] = {
    TEST_COMMAND: ((".ci/run", TEST_COMMAND),),
    # The install is the test command's (requirements-test.txt starts with
    # -r requirements.txt); gunicorn in the project root is how every process test
    # starts the service.
    START_COMMAND: (
        ("requirements-test.in", "-r requirements.txt"),
        ("tests/support/gunicorn_process.py", "[GUNICORN, *args"),
    ),
    ".venv/bin/mkdocs build --strict": (
        (".ci/run", ".venv/bin/mkdocs build --strict"),
    ),
    # Checked, not run: they are the commands written in the pins' own headers.
    ".venv/bin/pip-compile --extra=postgresql --extra=redis --extra=smoke"
    " --no-emit-find-links --no-emit-index-url"
    " --output-file=requirements.txt --strip-extras setup.cfg": (
        ("tests/test_requirements.py", PIP_COMPILE_TEST),
    ),
    ".venv/bin/pip-compile --extra=test --no-emit-find-links --no-emit-index-url"
    " --output-file=requirements-test.txt --strip-extras requirements-test.in"
    " setup.cfg": (("tests/test_requirements.py", PIP_COMPILE_TEST),),
    ".venv/bin/python -m tests.docs.settings_page": (
        ("tests/docs/test_settings_page.py", "settings_page.render("),
    ),
    # Checked, not run: the committed document must equal what it writes.
    ".venv/bin/petsage openapi write openapi.json": (
        ("tests/openapi/test_contract.py", "petsage openapi write openapi.json"),
    ),
    "python3 -c 'import urllib.parse,sys; print(urllib.parse.quote(sys.argv[1],"
    ' safe=""))\' PASSWORD': (
        ("tests/docs/test_commands.py", "def test_the_password_encoding_command_"),
    ),
    "PETSAGE_HAPROXY_BIND=0.0.0.0:80 PETSAGE_INSTANCE_1=10.0.0.11:8000"
    " PETSAGE_INSTANCE_2=10.0.0.12:8000 haproxy -db -f deploy/haproxy.cfg": (
        ("tests/docs/test_front_ends.py", "def test_the_haproxy_command_loads_"),
    ),
    "export PETSAGE_NGINX_LISTEN=0.0.0.0:8080 PETSAGE_UPSTREAM=127.0.0.1:8000": (
        ("tests/docs/test_front_ends.py", "def test_the_nginx_commands_"),
    ),
    "envsubst '${PETSAGE_NGINX_LISTEN} ${PETSAGE_UPSTREAM}' < deploy/nginx.conf"
    " > petsage.conf": (
        ("tests/docs/test_front_ends.py", "def test_the_nginx_commands_"),
    ),
    "install -D -m 644 petsage.conf /etc/nginx/petsage.conf": (
        ("tests/docs/test_front_ends.py", "def test_the_nginx_commands_"),
    ),
    "mkdir -p /var/lib/petsage-nginx/": (
        ("tests/docs/test_front_ends.py", "def test_the_nginx_commands_"),
    ),
    "nginx -p /var/lib/petsage-nginx/ -e stderr -c /etc/nginx/petsage.conf": (
        ("tests/docs/test_front_ends.py", "def test_the_nginx_commands_"),
    ),
    'prefix="$(mktemp -d)"': (
        ("tests/docs/test_front_ends.py", "def test_the_nginx_commands_as_a_user_"),
    ),
    "envsubst '${PETSAGE_NGINX_LISTEN} ${PETSAGE_UPSTREAM}' < deploy/nginx.conf"
    ' > "$prefix/petsage.conf"': (
        ("tests/docs/test_front_ends.py", "def test_the_nginx_commands_as_a_user_"),
    ),
    'nginx -p "$prefix/" -e stderr -c "$prefix/petsage.conf"': (
        ("tests/docs/test_front_ends.py", "def test_the_nginx_commands_as_a_user_"),
    ),
    "npm ci --prefix tools/openapi": ((".ci/run", "npm ci --prefix tools/openapi"),),
    # The test runs the script's own command: openapi-typescript on openapi.json.
    "npm --prefix tools/openapi run generate": (
        ("tests/openapi/test_typescript_client.py", '"openapi-typescript"'),
    ),
    "node tools/openapi/check-compatibility.mjs": (
        (".ci/run", "\nnode tools/openapi/check-compatibility.mjs\n"),
    ),
    "tools/openapi/lint": ((".ci/run", "\ntools/openapi/lint\n"),),
    "bash bench/run --quick": ((".ci/run", "bash bench/run --quick"),),
    # docs/containers.md, the container tests' own page.
    (
        "apt-get install -y podman mmdebstrap podman-compose"
        " netavark aardvark-dns iptables"
    ): (
        (".ci/run", "podman mmdebstrap podman-compose netavark aardvark-dns iptables"),
    ),
    "tests/containers/prepare-host": (
        (".ci/run", "\ntests/containers/prepare-host\n"),
    ),
    # docs/contributors/adding-a-feature.md: the pipeline test runs them as written.
    # The status template's commands: its dry run, and making pet_profile once the
    # resource pet_profile exists (refused, as the page says).
    "tools/new-feature pet_profile": (
        (FEATURE_PIPELINE, 'STATUS = "tools/new-feature pet_profile"'),
    ),
    "tools/new-feature pet_profile --dry-run": (
        (
            FEATURE_PIPELINE,
            'STATUS_DRY_RUN = "tools/new-feature pet_profile --dry-run"',
        ),
    ),
    "tools/new-feature pet_profile --resource": (
        (FEATURE_PIPELINE, 'NEW_FEATURE = "tools/new-feature pet_profile --resource"'),
    ),
    "tools/new-feature health_tracker --path /api/v1/pets/health-log": (
        (FEATURE_PIPELINE, '"tools/new-feature health_tracker --path /api/v1/pets/'),
    ),
    "tools/new-feature --remove pet_profile": (
        (FEATURE_PIPELINE, 'REMOVE = "tools/new-feature --remove pet_profile"'),
    ),
    # The README's test command ends with it.
    ".venv/bin/pytest": ((".ci/run", "&& .venv/bin/pytest\n"),),
    # docs/contributors/tests.md: the fast tier.
    '.venv/bin/pytest -m "not slow"': (("tests/test_tiers.py", '"not slow"'),),
    ".venv/bin/pytest -m container": (
        (".ci/run", "export PETSAGE_REQUIRE_CONTAINERS=1"),
        ("setup.cfg", "container: builds and runs"),
    ),
}
RUN_BY = {normalized(command): runners for command, runners in RUN_BY.items()}


def block_id(block: Block) -> str:
    """A test id naming the block's page and line."""
    return f"{name(block.page)}:{block.line}"


SHELL_BLOCKS = shell_blocks()


@pytest.mark.parametrize("page", pages(), ids=name)
def test_every_fenced_block_names_its_language(page: Path) -> None:
    unnamed = [str(block) for block in blocks(page) if not block.language]
    assert unnamed == [], "a fenced block without a language hides what it is"


@pytest.mark.parametrize("block", SHELL_BLOCKS, ids=block_id)
def test_each_command_is_run_by_a_test_or_marked_illustrative(block: Block) -> None:
    if block.illustrative:
        return
    unlisted = [
        command for command in block.commands() if normalized(command) not in RUN_BY
    ]
    assert unlisted == [], (
        f"{block}: run these in a test and list them in RUN_BY, or put "
        "<!-- illustrative --> before the block"
    )


@pytest.mark.parametrize("command", sorted(RUN_BY))
def test_each_listed_command_is_on_a_page_and_its_runner_runs_it(command: str) -> None:
    shown = {
        normalized(line)
        for block in SHELL_BLOCKS
        if not block.illustrative
        for line in block.commands()
    }
    assert command in shown, "listed in RUN_BY but on no page: remove it"
    for path, fragment in RUN_BY[command]:
        assert fragment in (REPO_ROOT / path).read_text(), (path, fragment)


@pytest.mark.parametrize("block", SHELL_BLOCKS, ids=block_id)
def test_each_shell_block_parses(block: Block) -> None:
    script = "\n".join(block.commands())
    result = subprocess.run(
        ["bash", "-n"], input=script, capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, f"{block}: {result.stderr}"


def petsage_command() -> click.Group:
    """The click group behind the installed ``petsage`` console script."""
    main = entry_points(group="console_scripts")["petsage"].load()
    [group] = [
        value
        for value in vars(sys.modules[main.__module__]).values()
        if isinstance(value, click.Group)
    ]
    return group


def parse_petsage(arguments: Sequence[str]) -> click.Context:
    """Parse ``petsage ARGUMENTS`` as the command would, without running it."""
    command: click.Command = petsage_command()
    create_app = getattr(command, "create_app", None)
    context = click.Context(
        command, info_name="petsage", obj=ScriptInfo(create_app=create_app)
    )
    rest = list(arguments)
    while isinstance(command, click.Group):
        assert rest, "no subcommand"
        subcommand = command.get_command(context, rest[0])
        assert subcommand is not None, f"petsage has no command {rest[0]!r}"
        if isinstance(subcommand, click.Group):
            context = click.Context(subcommand, info_name=rest[0], parent=context)
        else:
            context = subcommand.make_context(rest[0], rest[1:], parent=context)
        command, rest = subcommand, rest[1:]
    return context


def petsage_arguments(command: str) -> list[str] | None:
    """The arguments of a ``petsage`` command line, up to any redirection or pipe."""
    lexer = shlex.shlex(command, posix=True, punctuation_chars=True)
    lexer.whitespace_split = True
    tokens = list(lexer)
    if not tokens or tokens[0].rsplit("/", 1)[-1] != "petsage":
        return None
    arguments: list[str] = []
    for token in tokens[1:]:
        if token in (">", ">>", "<", "|", "&&", ";", "||"):
            break
        arguments.append(token)
    return arguments


PETSAGE_LINES = [
    (block, command)
    for block in SHELL_BLOCKS
    for command in block.commands()
    if petsage_arguments(command) is not None
]


def test_the_pages_show_petsage_commands() -> None:
    assert len(PETSAGE_LINES) >= 4


@pytest.mark.parametrize(
    ("block", "command"),
    PETSAGE_LINES,
    ids=[f"{block_id(block)}:{command}" for block, command in PETSAGE_LINES],
)
def test_each_petsage_command_line_parses(block: Block, command: str) -> None:
    arguments = petsage_arguments(command)
    assert arguments is not None
    try:
        parse_petsage(arguments)
    except click.ClickException as error:
        pytest.fail(f"{block}: {command}: {error.format_message()}")


def test_an_unknown_petsage_option_or_command_would_be_caught() -> None:
    with pytest.raises(click.NoSuchOption):
        parse_petsage(["drain", "--no-such-option"])
    with pytest.raises(AssertionError, match="no command 'run'"):
        parse_petsage(["run"])


def test_every_petsage_command_is_documented_and_no_other() -> None:
    """``petsage --help``'s commands are the ones the pages show, Flask's run aside."""
    group = petsage_command()
    context = click.Context(
        group, obj=ScriptInfo(create_app=getattr(group, "create_app", None))
    )
    offered = set(group.list_commands(context))
    documented = set()
    for page in pages():
        text = page.read_text()
        documented |= {command for command in offered if f"petsage {command}" in text}
    assert documented == offered
    for page in pages():
        for flasks_own in ("petsage run", "petsage shell", "petsage routes"):
            assert flasks_own not in page.read_text(), (name(page), flasks_own)


def assignments(command: str) -> list[tuple[str, str]]:
    """The ``PETSAGE_*`` values a command line sets, as NAME=value or -e NAME=value."""
    found = []
    for token in shlex.split(command):
        variable, equals, value = token.partition("=")
        if equals and variable.startswith("PETSAGE_") and "$" not in value:
            found.append((variable, value))
    return found


SETTING_VALUES = sorted(
    {
        assignment
        for block in SHELL_BLOCKS
        for command in block.commands()
        for assignment in assignments(command)
    }
)
# Not settings: variables the deploy files' templates read.
TEMPLATE_VARIABLES = {
    "PETSAGE_HAPROXY_BIND",
    "PETSAGE_INSTANCE_1",
    "PETSAGE_INSTANCE_2",
    "PETSAGE_NGINX_LISTEN",
    "PETSAGE_UPSTREAM",
}


@pytest.mark.parametrize(("variable", "value"), SETTING_VALUES)
def test_each_setting_value_shown_is_accepted(variable: str, value: str) -> None:
    if variable in TEMPLATE_VARIABLES:
        return
    [setting] = [setting for setting in SETTINGS if setting.env_var == variable]
    try:
        setting.read({variable: value})
        # The dependency settings' entries are read apart from the other settings.
        dependencies_from(load_settings({variable: value}, warn_unknown=False))
    except ConfigError as error:
        pytest.fail(str(error))


def test_the_pages_show_setting_values() -> None:
    shown = {variable for variable, _ in SETTING_VALUES}
    assert {"PETSAGE_CRITICAL_DEPENDENCIES", "PETSAGE_SHUTDOWN_DELAY"} <= shown


def test_each_npm_script_run_exists() -> None:
    scripts = json.loads((REPO_ROOT / "tools/openapi/package.json").read_text())[
        "scripts"
    ]
    run = [
        command.split(" run ", 1)[1].split()[0]
        for block in SHELL_BLOCKS
        for command in block.commands()
        if command.startswith("npm ") and " run " in command
    ]
    assert run
    assert set(run) <= set(scripts)


def test_the_password_encoding_command_encodes_what_the_text_says() -> None:
    [command] = [
        command
        for block in SHELL_BLOCKS
        for command in block.commands()
        if "urllib.parse.quote" in command
    ]
    arguments = shlex.split(command)
    arguments[-1] = "a/b#c,d"
    result = subprocess.run(
        arguments, capture_output=True, text=True, check=True, timeout=10
    )
    assert result.stdout.strip() == "a%2Fb%23c%2Cd"
    probes = (REPO_ROOT / "docs/operators/probes.md").read_text()
    assert "`a/b#c,d` is written `a%2Fb%23c%2Cd`" in probes
