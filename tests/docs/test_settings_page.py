"""docs/settings.md's table is generated from SETTINGS and kept current."""

import dataclasses

import pytest

from petsage.config import (
    SETTINGS,
    default_database_url,
    default_state_directory,
    default_workers,
    text,
)
from tests.docs import settings_page
from tests.docs.settings_page import DESCRIBED_DEFAULTS, PAGE


def test_the_committed_table_is_the_generated_one() -> None:
    current = PAGE.read_text()
    assert settings_page.render(current) == current, (
        f"docs/settings.md is out of date: run {settings_page.GENERATOR}"
    )


def test_the_table_lists_every_setting_once() -> None:
    page = PAGE.read_text()
    for setting in SETTINGS:
        assert page.count(f"| `{setting.env_var}` |") == 1, setting.env_var


def test_a_new_setting_would_make_the_page_out_of_date(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    added = dataclasses.replace(
        SETTINGS[0], key="EXAMPLE", default="", parse=text, meaning="An example."
    )
    monkeypatch.setattr(settings_page, "SETTINGS", (*SETTINGS, added))
    current = PAGE.read_text()
    assert settings_page.render(current) != current
    assert settings_page.main(["--check"]) == 1


def test_only_defaults_worked_out_on_the_host_are_described() -> None:
    defaults = {setting.key: setting.default for setting in SETTINGS}
    # Worked out when read, on the host that reads them.
    assert defaults["WORKERS"] is default_workers
    assert defaults["STATE_DIR"] is default_state_directory
    assert defaults["DRAIN_FILE"] is None
    assert defaults["DATABASE_URL"] is default_database_url
    assert set(DESCRIBED_DEFAULTS) == {
        "WORKERS",
        "STATE_DIR",
        "DRAIN_FILE",
        "DATABASE_URL",
    }
    assert {key for key, value in defaults.items() if callable(value)} < set(
        DESCRIBED_DEFAULTS
    )


def test_the_page_never_shows_this_hosts_values() -> None:
    page = PAGE.read_text()
    assert f"`{default_state_directory()}/" not in page.replace("`/dev/shm` (", "")
    row = next(line for line in page.splitlines() if "`PETSAGE_WORKERS`" in line)
    assert f"`{default_workers()}`" not in row
