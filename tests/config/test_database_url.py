"""PETSAGE_DATABASE_URL: an SQLite file by default, PostgreSQL through psycopg 3."""

import sys

import pytest

from petsage.config import ConfigError, default_database_url, load_settings


def test_the_default_is_a_file_under_the_installations_prefix() -> None:
    url = default_database_url()
    assert url == f"sqlite:///{sys.prefix}/var/petsage/petsage.sqlite3"
    assert load_settings({}, warn_unknown=False)["DATABASE_URL"] == url


@pytest.mark.parametrize(
    ("raw", "read"),
    [
        ("sqlite:///data/p.db", "sqlite:///data/p.db"),
        ("sqlite:////srv/p.db", "sqlite:////srv/p.db"),
        ("postgres://u:p@db/petsage", "postgresql+psycopg://u:p@db/petsage"),
        ("postgresql://u:p@db/petsage", "postgresql+psycopg://u:p@db/petsage"),
    ],
)
def test_database_urls_are_read(raw: str, read: str) -> None:
    settings = load_settings({"PETSAGE_DATABASE_URL": raw}, warn_unknown=False)
    assert settings["DATABASE_URL"] == read


@pytest.mark.parametrize(
    "raw", ["sqlite://", "sqlite:///:memory:", "mysql://u:secret@db/x", "secret"]
)
def test_a_database_url_petsage_cannot_use_is_refused_without_its_secret(
    raw: str,
) -> None:
    with pytest.raises(ConfigError, match="PETSAGE_DATABASE_URL is not valid") as error:
        load_settings({"PETSAGE_DATABASE_URL": raw}, warn_unknown=False)
    assert "secret" not in str(error.value)
