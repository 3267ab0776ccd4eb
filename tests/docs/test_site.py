"""The documentation builds with MkDocs in strict mode, and every page is reachable."""

import re
import subprocess
import sys
from pathlib import Path

import yaml

from petsage.config import SETTINGS
from tests.docs.pages import DOCS, README, blocks, name, pages
from tests.support.gunicorn_process import REPO_ROOT

MKDOCS = Path(sys.executable).parent / "mkdocs"
README_MOST_LINES = 200
# Repository paths the pages name, checked below; a path with a placeholder
# (tests/features/test_<name>.py) is skipped.
PATH = re.compile(
    r"(?<![\w./-])((?:petsage|tests|deploy|bench|docs|tools|contracts)/[\w./<>-]*)"
)
# Made by a test or a tool, never committed.
GENERATED = {"tools/openapi/client/petsage.d.ts"}


def nav_pages(entries: object) -> list[str]:
    """Every page file named in an MkDocs nav, depth first."""
    if isinstance(entries, str):
        return [entries]
    if isinstance(entries, list):
        return [page for entry in entries for page in nav_pages(entry)]
    if isinstance(entries, dict):
        return [page for value in entries.values() for page in nav_pages(value)]
    return []


def test_the_site_builds_in_strict_mode(tmp_path: Path) -> None:
    result = subprocess.run(
        [MKDOCS, "build", "--strict", "--site-dir", str(tmp_path / "site")],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "site" / "settings" / "index.html").exists()


def test_a_broken_anchor_fails_the_strict_build(tmp_path: Path) -> None:
    docs = tmp_path / "docs"
    (docs / "operators").mkdir(parents=True)
    (docs / "index.md").write_text("# Home\n\n[drain](operators/probes.md#no-such)\n")
    (docs / "operators" / "probes.md").write_text("# Probes\n\n## Drain\n")
    config = yaml.safe_load((REPO_ROOT / "mkdocs.yml").read_text())
    config.pop("nav")
    (tmp_path / "mkdocs.yml").write_text(yaml.safe_dump(config))
    result = subprocess.run(
        [MKDOCS, "build", "--strict", "--site-dir", str(tmp_path / "site")],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode != 0
    assert "#no-such" in result.stderr


def test_the_nav_holds_every_page_and_only_pages() -> None:
    config = yaml.safe_load((REPO_ROOT / "mkdocs.yml").read_text())
    listed = nav_pages(config["nav"])
    on_disk = sorted(path.relative_to(DOCS).as_posix() for path in DOCS.rglob("*.md"))
    assert sorted(listed) == on_disk
    assert len(listed) == len(set(listed))


def test_the_build_needs_no_network() -> None:
    config = yaml.safe_load((REPO_ROOT / "mkdocs.yml").read_text())
    assert config["theme"]["name"] in ("mkdocs", "readthedocs")
    assert "plugins" not in config
    assert config["strict"] is True


def test_the_readme_fits_on_two_screens() -> None:
    assert len(README.read_text().splitlines()) <= README_MOST_LINES


def test_the_readme_links_every_page() -> None:
    readme = README.read_text()
    for page in DOCS.rglob("*.md"):
        if page.name == "index.md":
            continue
        assert f"](docs/{page.relative_to(DOCS).as_posix()}" in readme, name(page)


def test_the_readme_says_how_to_build_and_serve_the_docs() -> None:
    commands = [
        command
        for block in blocks(README)
        if block.language == "sh"
        for command in block.commands()
    ]
    assert ".venv/bin/mkdocs build --strict" in commands
    assert ".venv/bin/mkdocs serve -a 127.0.0.1:8001" in commands


def service_port() -> str:
    """The port of the service's default address, PETSAGE_BIND's default."""
    [bind] = [setting for setting in SETTINGS if setting.env_var == "PETSAGE_BIND"]
    return str(bind.default).rsplit(":", 1)[1]


def test_mkdocs_serve_never_takes_the_services_port() -> None:
    """mkdocs serve's own default address, 127.0.0.1:8000, is the service's too."""
    served = [
        (name(page), match[0])
        for page in pages()
        for match in re.finditer(r"mkdocs serve[^`\n]*", page.read_text())
    ]
    assert served
    for page, command in served:
        address = re.search(r"(?:-a|--dev-addr)[ =](\S+)", command)
        assert address, f"{page}: {command} names no address (-a HOST:PORT)"
        assert address[1].rsplit(":", 1)[1] != service_port(), (page, command)
    config = yaml.safe_load((REPO_ROOT / "mkdocs.yml").read_text())
    assert config["dev_addr"].rsplit(":", 1)[1] != service_port()


def mentioned_paths(page: Path) -> set[str]:
    """The repository paths a page names, in its prose and its blocks."""
    found = set()
    for match in PATH.finditer(page.read_text()):
        path = match[1].rstrip(".,:;")
        if "<" not in path and "*" not in path:
            found.add(path)
    return found


def test_every_path_the_pages_name_exists() -> None:
    missing = {
        f"{name(page)}: {path}"
        for page in pages()
        for path in mentioned_paths(page) - GENERATED
        if not (REPO_ROOT / path).exists()
    }
    assert missing == set()


def test_generated_paths_are_ignored_by_git() -> None:
    ignored = (REPO_ROOT / ".gitignore").read_text().splitlines()
    for path in GENERATED:
        assert f"/{path}" in ignored, path


def test_the_pages_name_paths() -> None:
    assert "petsage/config.py" in mentioned_paths(DOCS / "settings.md")
    assert len({path for page in pages() for path in mentioned_paths(page)}) > 40


def layout_tree() -> list[str]:
    """The paths the layout page's tree names, built from its indentation."""
    [tree] = [
        block.text
        for block in blocks(DOCS / "contributors" / "layout.md")
        if block.language == "text"
    ]
    parents: list[str] = []
    paths = []
    for line in tree.splitlines():
        indent = len(line) - len(line.lstrip())
        # Descriptions continue in a column of their own, past the names.
        if not line.strip() or indent >= 20:
            continue
        entry = line.split()[0]
        depth = indent // 2
        parents = parents[:depth]
        path = "".join(parents) + entry
        paths.append(path)
        if entry.endswith("/"):
            parents.append(entry)
    return paths


def test_the_layout_tree_is_the_repositorys() -> None:
    paths = layout_tree()
    assert "petsage/config.py" in paths
    missing = [path for path in paths if not (REPO_ROOT / path).exists()]
    assert missing == []


def package_entries() -> set[str]:
    """What the tree must name: each module and package of ``petsage/``, and each
    module of its subpackages but ``health/`` and ``features/`` (which their own
    package docstrings and READMEs describe)."""
    package = REPO_ROOT / "petsage"
    described_inside = {"health", "features"}
    entries = set()
    for path in package.iterdir():
        if path.name in ("__pycache__", "py.typed"):
            continue
        relative = path.relative_to(REPO_ROOT).as_posix()
        if path.is_dir():
            entries.add(relative + "/")
            if path.name not in described_inside:
                entries |= {
                    module.relative_to(REPO_ROOT).as_posix()
                    for module in path.glob("*.py")
                    if module.name != "__init__.py"
                }
        elif path.suffix == ".py":
            entries.add(relative)
    return entries


def test_the_layout_tree_names_every_module_of_the_package() -> None:
    assert package_entries() - set(layout_tree()) == set()
