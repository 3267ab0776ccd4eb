"""tools/new-feature refuses, in one line and writing nothing, what it must not make.

The tool runs in this process on a stand-in tree (the template, the features and
their tests); it checks names and paths against this checkout's application. What it
writes, and that it passes every gate, is tests/features/test_feature_pipeline.py's.
"""

import hashlib
import importlib.machinery
import importlib.util
import shutil
from pathlib import Path
from types import ModuleType

import pytest

from tests.support.gunicorn_process import REPO_ROOT

TOOL = REPO_ROOT / "tools" / "new-feature"


def load_tool() -> ModuleType:
    """tools/new-feature as a module (its name has no .py)."""
    loader = importlib.machinery.SourceFileLoader("new_feature", str(TOOL))
    spec = importlib.util.spec_from_loader("new_feature", loader)
    assert spec is not None
    module = importlib.util.module_from_spec(spec)
    loader.exec_module(module)
    return module


NEW_FEATURE = load_tool()


def tree_hashes(root: Path) -> dict[str, str]:
    """Every file under ``root`` and a hash of its bytes."""
    return {
        file.relative_to(root).as_posix(): hashlib.sha256(file.read_bytes()).hexdigest()
        for file in sorted(root.rglob("*"))
        if file.is_file() and "__pycache__" not in file.parts
    }


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    """A stand-in repository: the template and the smoke_test feature (none that
    tools/new-feature made, as in a copy where the pipeline test made some)."""
    for folder in ("tools/feature-template", "petsage/features/smoke_test"):
        shutil.copytree(
            REPO_ROOT / folder,
            tmp_path / folder,
            ignore=shutil.ignore_patterns("__pycache__"),
        )
    (tmp_path / "tests" / "features").mkdir(parents=True)
    return tmp_path


def refusal(tree: Path, capsys: pytest.CaptureFixture[str], *argv: str) -> str:
    """Run the tool on ``tree``; it must refuse, in one line, writing nothing."""
    before = tree_hashes(tree)
    assert NEW_FEATURE.main(list(argv), root=tree) == 2
    out, err = capsys.readouterr()
    assert out == ""
    [line] = err.splitlines()
    assert line.startswith("tools/new-feature: refused: ")
    assert tree_hashes(tree) == before
    return line


def test_an_existing_feature_is_refused(
    tree: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    line = refusal(tree, capsys, "smoke_test")
    assert "the feature smoke_test exists already" in line


@pytest.mark.parametrize(
    "name", ["PetProfile", "pet-profile", "2pets", "pet__profile", "_pet", "class"]
)
def test_a_name_that_is_not_a_snake_case_identifier_is_refused(
    tree: Path, capsys: pytest.CaptureFixture[str], name: str
) -> None:
    assert "is not a snake_case identifier" in refusal(tree, capsys, name)


def test_a_name_too_long_is_refused(
    tree: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert "longer than 32 characters" in refusal(tree, capsys, "pet_" * 8 + "profile")


@pytest.mark.parametrize(
    "name", ["health", "metrics", "docs", "openapi", "livez", "readyz", "static"]
)
def test_a_name_of_the_services_own_paths_is_refused(
    tree: Path, capsys: pytest.CaptureFixture[str], name: str
) -> None:
    assert "is one of the service's own paths" in refusal(tree, capsys, name)


def test_the_name_of_a_blueprint_of_the_service_is_refused(
    tree: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert "the service's welcome blueprint" in refusal(tree, capsys, "welcome")


def test_a_path_a_route_answers_is_refused(
    tree: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    line = refusal(tree, capsys, "sample_feature", "--path", "/api/v1/smoke-test")
    assert line.endswith(
        "GET /api/v1/smoke-test is answered already, by smoke_test.smoke_test"
    )


@pytest.mark.parametrize(
    "path",
    ["/livez", "/pets", "/api/v1", "/api/v1/pets/", "/api/v1/pets/{id}", "/api/v1/Pet"],
)
def test_a_path_outside_the_api_or_with_parameters_is_refused(
    tree: Path, capsys: pytest.CaptureFixture[str], path: str
) -> None:
    line = refusal(tree, capsys, "sample_feature", "--path", path)
    assert f"{path!r} is not a path under /api/v1/" in line


@pytest.mark.parametrize("name", ["smoke_test", "sample_feature"])
def test_removing_what_the_tool_did_not_make_is_refused(
    tree: Path, capsys: pytest.CaptureFixture[str], name: str
) -> None:
    line = refusal(tree, capsys, "--remove", name)
    assert f"no feature {name} made by tools/new-feature" in line


def test_a_dry_run_shows_the_files_and_writes_nothing(
    tree: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    before = tree_hashes(tree)
    assert NEW_FEATURE.main(["sample_feature", "--dry-run"], root=tree) == 0
    out = capsys.readouterr().out
    for file in ("__init__.py", "blueprint.py", "schemas.py", "service.py"):
        assert f"== petsage/features/sample_feature/{file}\n" in out
    assert "== tests/features/test_sample_feature.py\n" in out
    assert '@bp.route("/sample-feature", methods=["GET"]' in out
    assert out.endswith("Nothing written.\n")
    assert tree_hashes(tree) == before
