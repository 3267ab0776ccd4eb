"""Dependencies, from their settings to their checks: every entry PetSage cannot use
is refused at start in one line naming the setting, the entry and what is wrong, and
never a password.

The probes against real listeners: tests/health/test_checks.py; against real
datastores: tests/health/test_datastore_checks.py.
"""

import os
import subprocess
from pathlib import Path

import pytest
from flask import Flask

from petsage.config import ConfigError, load_settings
from petsage.health import init_health
from petsage.health.checks import Check, Observation
from petsage.health.dependencies import SCHEMES, dependencies_from, reserved_names
from tests.support.gunicorn_process import GUNICORN, REPO_ROOT
from tests.support.import_graph import import_graph

CRITICAL = "PETSAGE_CRITICAL_DEPENDENCIES"
OPTIONAL = "PETSAGE_OPTIONAL_DEPENDENCIES"
RESERVED = ("machinery", "process", "refresher", "shutdown", "startup", "uptime")
NAMES = "1 to 63 of a-z, 0-9, - and _, the first a letter or digit"


def refusal(environ: dict[str, str]) -> str:
    """What refusing the dependency settings in ``environ`` says."""
    settings = load_settings(environ, warn_unknown=False)
    with pytest.raises(ConfigError) as refused:
        dependencies_from(settings)
    return str(refused.value)


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        pytest.param(
            "api=http://svc:pw#1@api.internal/ping",
            "api: a bare # ends its URL there: a # in a URL is written %23",
            id="bare #",
        ),
        pytest.param(
            "db=postgresql://app:pw,1@db.internal:5432/app",
            "the entry after db has no name=: a comma in a URL is written %2C",
            id="unescaped comma",
        ),
        pytest.param(
            "cache=redis://:pw,1=x@cache.internal:6379/0",
            "the entry after cache has no URL (scheme://...) after its name=: a comma"
            " in a URL is written %2C",
            id="unescaped comma, an = after it",
        ),
        pytest.param(
            "db=mysql://app:pw@db.internal:3306/app",
            "db: mysql:// is not a kind of dependency PetSage checks: expected one of"
            " tcp, http, https, postgresql, postgres, redis, rediss, unix",
            id="unknown scheme",
        ),
        pytest.param(
            "tcp://db.internal:5432",
            "the first entry has no name=: expected name=URL, e.g."
            " db=tcp://db.internal:5432",
            id="no name",
        ),
        pytest.param(
            "postgresql://app:pw@db.internal/app?sslmode=require",
            "the first entry has no name=: expected name=URL, e.g."
            " db=tcp://db.internal:5432",
            id="no name, an = in the URL",
        ),
        pytest.param(
            "db=db.internal:5432",
            "the first entry has no URL (scheme://...) after its name=: expected"
            " name=URL, e.g. db=tcp://db.internal:5432",
            id="no scheme",
        ),
        pytest.param(
            "db=tcp://db.internal",
            "db: a tcp:// URL needs a port: expected tcp://HOST:PORT",
            id="tcp without port",
        ),
        pytest.param(
            "api=http://svc:pw@api.internal:port/",
            "api: its URL's port is not a number from 0 to 65535",
            id="port no number",
        ),
        pytest.param(
            "api=https:///ping",
            "api: a https:// URL needs a host",
            id="no host",
        ),
        pytest.param(
            "api=http://svc:pw@[::1/",
            "api: its URL's host cannot be read",
            id="host unreadable",
        ),
        pytest.param(
            "Main DB=tcp://db.internal:5432",
            f"'Main DB' is not a valid name: expected {NAMES}",
            id="invalid name",
        ),
        pytest.param(
            "db=tcp://db.internal:5432,=tcp://db.internal:5433",
            f"'' is not a valid name: expected {NAMES}",
            id="empty name",
        ),
        pytest.param(
            "db=tcp://one.internal:5432,db=postgresql://app:pw@two.internal/app",
            "db is named twice: expected unique names",
            id="one name twice",
        ),
        *(
            pytest.param(
                f"{name}=tcp://db.internal:5432",
                f"{name} is the name of one of PetSage's own health items"
                f" ({', '.join(RESERVED)}): expected another name",
                id=f"reserved {name}",
            )
            for name in RESERVED
        ),
    ],
)
def test_a_malformed_entry_is_refused_in_one_line_naming_it(
    raw: str, reason: str
) -> None:
    message = refusal({CRITICAL: raw})
    assert message == f"{CRITICAL} is not valid: {reason}"
    assert "pw" not in message


def test_a_name_in_both_settings_is_refused_naming_both() -> None:
    message = refusal(
        {
            CRITICAL: "db=postgresql://app:pw@db.internal/app",
            OPTIONAL: "cache=redis://cache.internal:6379/0,db=tcp://db.internal:5432",
        }
    )
    assert message == (
        f"{OPTIONAL} is not valid: db is named in {CRITICAL} already: expected unique"
        " names"
    )


def test_an_entry_cut_by_a_comma_is_refused_before_the_entry_it_cut() -> None:
    # The first piece alone would be refused too (its port: "pa"), which would point
    # away from the comma.
    message = refusal({OPTIONAL: "db=tcp://app:pa,ss@db.internal:5432"})
    assert message == (
        f"{OPTIONAL} is not valid: the entry after db has no name=: a comma in a URL"
        " is written %2C"
    )


def test_the_reserved_names_are_those_a_check_cannot_take() -> None:
    app = Flask(__name__)
    app.config.from_mapping(load_settings({}, warn_unknown=False))
    health = init_health(app)
    assert reserved_names() == health.names == frozenset(RESERVED)
    for name in RESERVED:
        with pytest.raises(ValueError, match="already named"):
            health.add_check(Check(name, Observation, "c", "m"))
    health.add_check(Check("db", Observation, "db", "responseTime"))


def test_an_app_with_a_bad_dependency_is_refused() -> None:
    app = Flask(__name__)
    app.config.from_mapping(load_settings({CRITICAL: "startup=tcp://db:5432"}))
    with pytest.raises(ConfigError, match="startup is the name of one of"):
        init_health(app)


def test_one_list_of_schemes() -> None:
    assert list(SCHEMES) == [
        "tcp",
        "http",
        "https",
        "postgresql",
        "postgres",
        "redis",
        "rediss",
        "unix",
    ]
    extras = {scheme.driver.extra for scheme in SCHEMES.values() if scheme.driver}
    assert extras == {"postgresql", "redis"}


def test_what_a_check_is_knows_nothing_of_dependencies() -> None:
    imported = import_graph(REPO_ROOT)["petsage.health.checks"]
    assert not [module for module in imported if "dependencies" in module]


@pytest.mark.slow  # a real gunicorn start
def test_gunicorn_refuses_a_reserved_name_in_one_line_before_forking(
    tmp_path: Path,
) -> None:
    result = subprocess.run(
        [GUNICORN, "wsgi:app"],
        cwd=REPO_ROOT,
        env={
            **{
                name: value
                for name, value in os.environ.items()
                if not name.startswith("PETSAGE_")
            },
            "PETSAGE_BIND": "127.0.0.1:0",
            "PETSAGE_WORKERS": "1",
            "PETSAGE_STATE_DIR": str(tmp_path),
            CRITICAL: "uptime=tcp://127.0.0.1:1",
        },
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode != 0
    assert "Traceback" not in result.stdout + result.stderr
    assert "Booting worker" not in result.stdout
    assert result.stderr.strip().splitlines() == [
        f"petsage: {CRITICAL} is not valid: uptime is the name of one of PetSage's"
        f" own health items ({', '.join(RESERVED)}): expected another name"
    ]


@pytest.mark.parametrize(
    ("page", "environ"),
    [
        ("settings.md", {CRITICAL: "db=postgresql://app:pa,ss@db.internal/app"}),
        ("operators/probes.md", {CRITICAL: "db=mysql://app:pw@db.internal/app"}),
    ],
)
def test_the_pages_show_refusals_as_petsage_writes_them(
    page: str, environ: dict[str, str]
) -> None:
    assert f"petsage: {refusal(environ)}\n" in (REPO_ROOT / "docs" / page).read_text()


def test_the_probes_page_lists_the_reserved_names() -> None:
    page = " ".join((REPO_ROOT / "docs/operators/probes.md").read_text().split())
    assert ", ".join(f"`{name}`" for name in sorted(reserved_names())) + "." in page
