"""tools/new-feature refuses, in one line and writing nothing, what it must not make,
and ``--remove`` never loses work.

The tool runs in this process on a stand-in tree (the template, the features and
their tests), or on a copy of the checkout where it writes a feature; it checks names
and paths against this checkout's application. That what it writes passes every gate
is tests/features/test_feature_pipeline.py's.
"""

import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.checkout_copy import copy_checkout, load_new_feature, run_in
from tests.support.gunicorn_process import REPO_ROOT

TOOL = REPO_ROOT / "tools" / "new-feature"


NEW_FEATURE = load_new_feature()


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
    ["/livez", "/pets", "/api/v1", "/api/v1/pets/", "/api/v1/Pet", "/api/v1/p_q"],
)
def test_a_path_outside_the_api_or_not_lowercase_segments_is_refused(
    tree: Path, capsys: pytest.CaptureFixture[str], path: str
) -> None:
    line = refusal(tree, capsys, "sample_feature", "--path", path)
    assert f"{path!r} is not a path under /api/v1/" in line


@pytest.mark.parametrize(
    ("path", "parameter"),
    [
        ("/api/v1/pets/<int:pet_id>", "<int:pet_id>"),
        ("/api/v1/pets/<pet_id>/health-log", "<pet_id>"),
        ("/api/v1/pets/{id}", "{id}"),
    ],
)
def test_a_path_with_a_parameter_is_refused_naming_it(
    tree: Path, capsys: pytest.CaptureFixture[str], path: str, parameter: str
) -> None:
    line = refusal(tree, capsys, "sample_feature", "--path", path)
    assert f"{path!r} has a path parameter, {parameter}: a feature of this" in line
    assert line.endswith("(docs/contributors/adding-a-feature.md#path-parameters)")


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


@pytest.mark.parametrize(
    ("name", "meant"),
    [
        ("PetProfile", "pet_profile"),
        ("petProfile", "pet_profile"),
        ("pet-profile", "pet_profile"),
        ("HTTPLog", "http_log"),
    ],
)
def test_a_name_in_another_case_is_refused_with_its_snake_case(
    tree: Path, capsys: pytest.CaptureFixture[str], name: str, meant: str
) -> None:
    line = refusal(tree, capsys, name)
    assert line.endswith(f"is not a snake_case identifier: did you mean {meant}?")
    line = refusal(tree, capsys, "--remove", name)
    assert line.endswith(f"did you mean {meant}?")


def all_paths(root: Path) -> set[Path]:
    """Every file and folder under ``root``, ignored ones included."""
    return set(root.rglob("*"))


def test_a_dry_run_without_a_venv_writes_nothing_not_even_the_venv(
    tree: Path,
) -> None:
    shutil.copy2(TOOL, tree / "tools" / "new-feature")
    before = all_paths(tree)
    # The interpreter the venv would be made from: it has none of the tool's packages.
    python = Path(sys.base_prefix) / "bin" / "python3"
    result = subprocess.run(
        [python, tree / "tools" / "new-feature", "sample_feature", "--dry-run"],
        # Where a venv would be made anyway, pip fails at once rather than install.
        env={**os.environ, "PIP_NO_INDEX": "1", "PIP_FIND_LINKS": ""},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2, result.stdout + result.stderr
    assert result.stdout == ""
    assert result.stderr.startswith("tools/new-feature: refused: --dry-run writes ")
    assert len(result.stderr.splitlines()) == 1
    assert all_paths(tree) == before


def test_a_dry_run_into_a_reader_that_left_ends_without_a_traceback() -> None:
    read, write = os.pipe()
    os.close(read)  # as `| head -1` does once it has its line
    with os.fdopen(write, "wb") as gone:
        result = subprocess.run(
            [sys.executable, TOOL, "sample_feature", "--dry-run"],
            stdout=gone,
            stderr=subprocess.PIPE,
            text=True,
            timeout=120,
        )
    assert result.stderr == ""
    assert result.returncode == 1


@pytest.fixture
def checkout(tmp_path: Path) -> Path:
    """A copy of the checkout's files, to write features in."""
    return copy_checkout(tmp_path / "checkout")


def dry_run_files(out: str) -> dict[str, bytes]:
    """The files a dry run printed, by path (the document's line left out)."""
    chunks = out.split("\n== ")[1:]
    files = dict(chunk.split("\n", 1) for chunk in chunks)
    del files["openapi.json"]
    return {path: content.encode() for path, content in files.items()}


def test_a_dry_run_prints_the_bytes_a_run_writes_and_writes_nothing(
    checkout: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    before = all_paths(checkout)
    assert NEW_FEATURE.main(["sample_feature", "--dry-run"], root=checkout) == 0
    assert all_paths(checkout) == before
    printed = dry_run_files(capsys.readouterr().out)
    assert "petsage/features/sample_feature/.new-feature.json" in printed

    assert NEW_FEATURE.main(["sample_feature"], root=checkout) == 0
    package = checkout / "petsage" / "features" / "sample_feature"
    written = [package, checkout / "tests" / "features" / "test_sample_feature.py"]
    made = {
        file.relative_to(checkout).as_posix(): file.read_bytes()
        for file in (*package.iterdir(), written[1])
    }
    assert made == printed


@pytest.fixture
def made(checkout: Path, capsys: pytest.CaptureFixture[str]) -> Path:
    """The copy with a feature sample_feature the tool wrote; its tree's hashes are
    those before."""
    assert NEW_FEATURE.main(["sample_feature"], root=checkout) == 0
    capsys.readouterr()
    return checkout


PACKAGE = Path("petsage/features/sample_feature")


@pytest.mark.parametrize(
    ("work", "named"),
    [
        ("service.py", "petsage/features/sample_feature/service.py (edited)"),
        ("repository.py", "petsage/features/sample_feature/repository.py (added)"),
    ],
)
def test_removing_a_feature_with_work_done_since_it_was_made_is_refused(
    made: Path, capsys: pytest.CaptureFixture[str], work: str, named: str
) -> None:
    with (made / PACKAGE / work).open("a") as file:
        file.write("# work of a contributor\n")
    line = refusal(made, capsys, "--remove", "sample_feature")
    assert f"would lose: {named}; keep it elsewhere first" in line
    assert line.endswith("or delete it with --remove sample_feature --force")


def test_force_removes_a_feature_with_work_done_since(
    made: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (made / "tests" / "features" / "test_sample_feature.py").write_text("# mine\n")
    argv = ["--remove", "sample_feature", "--force"]
    assert NEW_FEATURE.main(argv, root=made) == 0
    assert "deleted with --force: tests/features/test_sample_feature.py (edited)" in (
        capsys.readouterr().out
    )
    assert not (made / PACKAGE).exists()
    assert not (made / "tests" / "features" / "test_sample_feature.py").exists()


def test_removing_a_feature_without_its_record_is_refused(
    made: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (made / PACKAGE / ".new-feature.json").unlink()
    line = refusal(made, capsys, "--remove", "sample_feature")
    assert "no feature sample_feature made by tools/new-feature" in line


def test_the_made_tests_catch_a_result_field_the_schema_would_drop(
    made: Path,
) -> None:
    with (made / PACKAGE / "service.py").open("a") as service:
        service.write(
            "\n\n@dataclass(frozen=True)\nclass Breed(SampleFeatureResult):\n"
            '    breed: str = "beagle"\n\n\n'
            "def get_sample_feature() -> SampleFeatureResult:\n"
            '    return Breed(feature="sample_feature", status="ok")\n'
        )
    own_tests = "tests/features/test_sample_feature.py"
    pytest_run = (sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-n", "0")
    result = run_in(made, *pytest_run, own_tests)
    assert "1 failed, 2 passed" in result.stdout, result.stdout
    assert "test_the_response_schema_carries_every_field_of_the_result" in (
        result.stdout
    )
