"""The documentation's files and their fenced blocks, as the docs tests read them."""

import re
import shlex
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from tests.support.gunicorn_process import REPO_ROOT

README = REPO_ROOT / "README.md"
DOCS = REPO_ROOT / "docs"
# The line that marks the next fenced block as an example nobody runs.
ILLUSTRATIVE = "<!-- illustrative -->"
SHELL_LANGUAGES = ("sh", "console")
FENCE = re.compile(r"^(?P<indent> *)```(?P<language>\S*)\s*$")


def pages() -> list[Path]:
    """README.md and every Markdown page under docs/."""
    return [README, *sorted(DOCS.rglob("*.md"))]


def name(page: Path) -> str:
    """A page's path from the repository root, for messages."""
    return page.relative_to(REPO_ROOT).as_posix()


@dataclass(frozen=True)
class Block:
    """One fenced code block of a page."""

    page: Path
    line: int
    language: str
    text: str
    illustrative: bool

    def __str__(self) -> str:
        return f"{name(self.page)}:{self.line} ({self.language or 'no language'})"

    def commands(self) -> list[str]:
        """The block's shell commands as written, continuation lines joined; comment
        lines and (in a console transcript) the output left out."""
        lines = self.text.splitlines()
        if self.language == "console":
            lines = [line[2:] for line in lines if line.startswith("$ ")]
        commands: list[str] = []
        pending = ""
        for line in lines:
            if line.rstrip().endswith("\\"):
                pending += line.rstrip()[:-1].strip() + " "
                continue
            command = (pending + line.strip()).strip()
            pending = ""
            if command and not command.startswith("#"):
                commands.append(command)
        return commands


def normalized(command: str) -> str:
    """A command line with its comment dropped and its spacing made canonical, for
    comparing commands; not for running."""
    return shlex.join(shlex.split(command, comments=True))


def blocks(page: Path) -> Iterator[Block]:
    """The fenced blocks of a page, in order."""
    lines = page.read_text().splitlines()
    index = 0
    while index < len(lines):
        opening = FENCE.match(lines[index])
        if not opening:
            index += 1
            continue
        indent = len(opening["indent"])
        end = index + 1
        while end < len(lines) and lines[end].strip() != "```":
            end += 1
        previous = next(
            (line.strip() for line in reversed(lines[:index]) if line.strip()), ""
        )
        yield Block(
            page=page,
            line=index + 1,
            language=opening["language"],
            text="\n".join(line[indent:] for line in lines[index + 1 : end]),
            illustrative=previous == ILLUSTRATIVE,
        )
        index = end + 1


def shell_blocks() -> list[Block]:
    """Every shell block of every page."""
    return [
        block
        for page in pages()
        for block in blocks(page)
        if block.language in SHELL_LANGUAGES
    ]


def prose(page: Path) -> str:
    """A page's text outside its fenced blocks, on one line per paragraph line."""
    inside = False
    kept: list[str] = []
    for line in page.read_text().splitlines():
        if FENCE.match(line) or (inside and line.strip() == "```"):
            inside = not inside
            continue
        if not inside:
            kept.append(line)
    return "\n".join(kept)
