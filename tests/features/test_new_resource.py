"""tools/new-feature --resource: a feature that keeps records, at its plural path,
with a migration chained on the head; ``--remove`` deletes that migration too, and
refuses while a database has it, saying how to downgrade first.

The tool runs in this process on a copy of the checkout (tests.support.checkout_copy).
That what it writes passes every gate is tests/features/test_feature_pipeline.py's.
"""

import json
import sqlite3
from pathlib import Path

import pytest

from tests.support.checkout_copy import copy_checkout, load_new_feature
from tests.support.databases import sqlite_url

PACKAGE = Path("petsage/features/pet_food")
RECORD = PACKAGE / ".new-feature.json"


NEW_FEATURE = load_new_feature("new_feature_resource")


@pytest.fixture
def checkout(tmp_path: Path) -> Path:
    """A copy of the checkout's files, to write features in."""
    return copy_checkout(tmp_path / "checkout")


@pytest.fixture
def made(checkout: Path, capsys: pytest.CaptureFixture[str]) -> Path:
    """The copy with a resource pet_food the tool wrote."""
    assert NEW_FEATURE.main(["pet_food", "--resource"], root=checkout) == 0
    capsys.readouterr()
    return checkout


def migration_of(root: Path) -> dict[str, str]:
    """What the record of pet_food says of its migration."""
    migration: dict[str, str] = json.loads((root / RECORD).read_text())["migration"]
    return migration


def database_at(path: Path, revision: str) -> str:
    """An SQLite database whose history stands at ``revision``, as Alembic keeps it."""
    with sqlite3.connect(path / "petsage.sqlite3") as connection:
        connection.execute("CREATE TABLE alembic_version (version_num VARCHAR(32))")
        connection.execute("INSERT INTO alembic_version VALUES (?)", (revision,))
    connection.close()
    return sqlite_url(path)


@pytest.mark.parametrize(
    ("name", "plural"),
    [
        ("pet_profile", "pet_profiles"),
        ("health_entry", "health_entries"),
        ("vaccine_box", "vaccine_boxes"),
        ("play_day", "play_days"),
    ],
)
def test_a_resource_is_named_in_the_plural(name: str, plural: str) -> None:
    assert NEW_FEATURE.plural_of(name) == plural


def test_a_dry_run_shows_the_resource_and_its_migration_on_the_head(
    checkout: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    head = NEW_FEATURE.migrations_of(checkout).get_heads()
    assert NEW_FEATURE.main(["pet_food", "--resource", "--dry-run"], root=checkout) == 0
    out = capsys.readouterr().out
    for file in ("blueprint.py", "model.py", "repository.py", "service.py"):
        assert f"== {PACKAGE.as_posix()}/{file}\n" in out
    assert "== petsage/db/migrations/versions/r" in out
    assert f'down_revision: str | Sequence[str] | None = "{head[0]}"' in out
    assert 'COLLECTION = "/pet-foods"' in out
    assert "GET and POST /api/v1/pet-foods, GET, PATCH and DELETE" in out
    assert not (checkout / PACKAGE).exists()


def test_the_made_migration_is_the_new_head_and_remove_deletes_it(
    made: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    migration = migration_of(made)
    assert (made / migration["file"]).is_file()
    heads = NEW_FEATURE.migrations_of(made).get_heads()
    assert heads == [migration["revision"]]
    assert NEW_FEATURE.main(["--remove", "pet_food"], root=made) == 0
    assert migration["file"] in capsys.readouterr().out
    assert not (made / migration["file"]).exists()
    assert NEW_FEATURE.migrations_of(made).get_heads() == [migration["down_revision"]]


def test_removing_a_resource_a_database_has_applied_is_refused(
    made: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    migration = migration_of(made)
    url = database_at(tmp_path, migration["revision"])
    monkeypatch.setattr(NEW_FEATURE, "database_to_ask", lambda: url)
    assert NEW_FEATURE.main(["--remove", "pet_food"], root=made) == 2
    [line] = capsys.readouterr().err.splitlines()
    assert f"migration {migration['revision']} is applied to {url}" in line
    downgrade = f"`.venv/bin/petsage db downgrade {migration['down_revision']}`"
    assert f"downgrade it first with {downgrade}" in line
    assert line.endswith("or remove the feature anyway with --remove pet_food --force")
    assert (made / migration["file"]).is_file() and (made / RECORD).is_file()
    assert NEW_FEATURE.main(["--remove", "pet_food", "--force"], root=made) == 0
    assert not (made / migration["file"]).exists()


def test_a_database_downgraded_below_the_migration_lets_it_go(
    made: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    migration = migration_of(made)
    url = database_at(tmp_path, migration["down_revision"])
    monkeypatch.setattr(NEW_FEATURE, "database_to_ask", lambda: url)
    assert NEW_FEATURE.main(["--remove", "pet_food"], root=made) == 0
    assert not (made / PACKAGE).exists()


def test_a_database_that_does_not_exist_is_not_made(
    made: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    missing = tmp_path / "none" / "petsage.sqlite3"
    monkeypatch.setattr(NEW_FEATURE, "database_to_ask", lambda: f"sqlite:///{missing}")
    assert NEW_FEATURE.main(["--remove", "pet_food"], root=made) == 0
    assert not missing.parent.exists()
