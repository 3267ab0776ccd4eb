"""Configuring postgresql:// and redis:// dependencies: what start accepts and refuses.

No server is needed: the URLs are parsed, with the drivers, when the settings are read
(``dependencies_from``).
"""

import subprocess
import sys
from pathlib import Path

import pytest

from petsage.config import ConfigError, load_settings
from petsage.health.dependencies import (
    dependencies_from,
    dependency_check,
    parse_dependencies,
)
from tests.support.gunicorn_process import REPO_ROOT

CRITICAL = "PETSAGE_CRITICAL_DEPENDENCIES"


@pytest.mark.parametrize(
    "url",
    [
        "postgresql://petsage:pw@db.internal:5432/petsage?sslmode=verify-full",
        "postgres://db.internal/petsage",
        "postgresql://petsage@%2Fvar%2Frun%2Fpostgresql/petsage",
        "postgresql:///petsage?host=/var/run/postgresql",
        "redis://:pw@cache.internal:6379/0",
        "rediss://petsage:pw@cache.internal:6380/1",
        "unix:///run/redis/redis.sock?db=2",
        "postgresql://petsage@db.internal/petsage?password_file=/run/secrets/db",
    ],
)
def test_datastore_urls_are_accepted(url: str) -> None:
    [dependency] = parse_dependencies(f"store={url}")
    assert dependency.url == url


def test_password_file_is_removed_before_the_driver_sees_the_url() -> None:
    [dependency] = parse_dependencies(
        "db=postgresql:///petsage?host=/tmp&password_file=/run/secrets/db&port=5433"
    )
    assert dependency.password_file == "/run/secrets/db"
    assert dependency.driver_url == "postgresql:///petsage?host=/tmp&port=5433"


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        (
            "postgresql://u:pw@db/petsage?password_file=/run/secrets/db",
            "store: a password in the URL and a password_file: expected one of them",
        ),
        (
            "postgresql://db/petsage?no_such_option=1",
            "store is not a postgresql:// URL its driver accepts",
        ),
        ("redis://:pw@/0", "store: a redis:// URL needs a host"),
    ],
)
def test_a_refused_datastore_url_says_why_in_one_line_without_the_url(
    url: str, reason: str
) -> None:
    with pytest.raises(ConfigError) as refused:
        dependencies_from(load_settings({CRITICAL: f"store={url}"}, warn_unknown=False))
    assert str(refused.value) == f"{CRITICAL} is not valid: {reason}"
    assert "pw" not in str(refused.value)


@pytest.mark.parametrize(
    ("url", "module", "extra"),
    [
        ("postgresql://db/petsage", "psycopg", "postgresql"),
        ("redis://cache:6379/0", "redis", "redis"),
    ],
)
def test_a_missing_driver_stops_the_start_naming_the_extra(
    url: str, module: str, extra: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, module, None)  # import fails: not installed
    with pytest.raises(ConfigError) as refused:
        dependencies_from(load_settings({CRITICAL: f"store={url}"}, warn_unknown=False))
    scheme = url.partition(":")[0]
    assert str(refused.value) == (
        f"{CRITICAL} is not valid: store is a {scheme}:// dependency, and its driver"
        f" ({module}) is not installed: install petsage-backend[{extra}]"
    )


@pytest.mark.slow  # a real gunicorn start
def test_gunicorn_refuses_to_start_without_the_driver_in_one_line(
    tmp_path: Path,
) -> None:
    # A psycopg that cannot be imported, first on the path: as if not installed.
    (tmp_path / "psycopg").mkdir()
    (tmp_path / "psycopg" / "__init__.py").write_text(
        "raise ImportError('No module named psycopg')\n"
    )
    result = subprocess.run(
        [str(Path(sys.executable).with_name("gunicorn")), "--check-config"],
        cwd=REPO_ROOT,
        env={
            "PATH": "/usr/bin:/bin",
            "PYTHONPATH": str(tmp_path),
            CRITICAL: "db=postgresql://petsage:pw@127.0.0.1:1/petsage",
        },
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode != 0
    assert result.stderr.strip().splitlines() == [
        f"petsage: {CRITICAL} is not valid: db is a postgresql:// dependency, and its"
        " driver (psycopg) is not installed: install petsage-backend[postgresql]"
    ]


@pytest.mark.parametrize(
    ("url", "about"),
    [
        (
            "postgresql://u:pw@DB.internal:5432/petsage?sslmode=require",
            "postgresql://db.internal:5432/petsage",
        ),
        (
            "postgresql://u@%2Fvar%2Frun%2Fpostgresql/petsage",
            "postgresql://%2Fvar%2Frun%2Fpostgresql/petsage",
        ),
        ("unix://:pw@/run/redis/redis.sock?db=0", "unix:///run/redis/redis.sock"),
    ],
)
def test_links_about_shows_the_datastore_without_credentials_or_query(
    url: str, about: str
) -> None:
    [dependency] = parse_dependencies(f"store={url}")
    check = dependency_check(dependency, critical=True, timeout=1.0)
    assert check.target == about
    assert check.component_type == "datastore"
