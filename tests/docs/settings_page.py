"""Write the settings table of ``docs/settings.md`` from ``petsage/config.py``.

``SETTINGS`` is the one source: this module renders it between the page's two marker
lines and leaves the prose around them alone.

    python -m tests.docs.settings_page            rewrite the table
    python -m tests.docs.settings_page --check    exit 1 when the page is out of date
"""

import argparse
import re
import sys
from collections.abc import Sequence
from typing import Any

from petsage.config import SETTINGS, Setting
from tests.support.gunicorn_process import REPO_ROOT

PAGE = REPO_ROOT / "docs" / "settings.md"
GENERATOR = "python -m tests.docs.settings_page"
BEGIN = (
    f"<!-- generated from petsage/config.py's SETTINGS by `{GENERATOR}`:"
    " edit SETTINGS, not this table -->"
)
END = "<!-- end of the generated table -->"
# Defaults worked out on the host at start-up: the value on the machine that generates
# the page would mislead readers on every other machine, so the page says how.
DESCRIBED_DEFAULTS = {
    "WORKERS": "2 x usable CPUs + 1",
    "DRAIN_FILE": "none",
    "STATE_DIR": "`/dev/shm` (or the temporary directory)",
    "DATABASE_URL": "`sqlite:///<prefix>/var/petsage/petsage.sqlite3`, where"
    " `<prefix>` is the installation's (`sys.prefix`: the virtualenv)",
}


def shown_default(setting: Setting) -> str:
    """A setting's default as the table shows it."""
    if setting.key in DESCRIBED_DEFAULTS:
        return DESCRIBED_DEFAULTS[setting.key]
    value: Any = setting.default
    if value in ("", ()):
        return "empty"
    if isinstance(value, bool):
        return f"`{str(value).lower()}`"
    if isinstance(value, float) and value.is_integer():
        return f"`{int(value)}`"
    if isinstance(value, str | int | float):
        return f"`{value}`"
    raise ValueError(f"{setting.env_var}: no way to show the default {value!r}")


def cell(text: str) -> str:
    """Prose from SETTINGS made safe for a Markdown table cell."""
    text = text.replace("|", "\\|").replace("<", "&lt;").replace(">", "&gt;")
    return re.sub(r"\bPETSAGE_[A-Z_]+\b", lambda match: f"`{match[0]}`", text)


def table() -> str:
    """The settings table, one row per setting, in SETTINGS' order."""
    rows = [
        "| variable | default | accepts | meaning |",
        "|---|---|---|---|",
    ]
    for setting in SETTINGS:
        meaning = cell(setting.meaning)
        if setting.secret:
            meaning += " Secret: its value never appears in a message."
        rows.append(
            f"| `{setting.env_var}` | {shown_default(setting)} "
            f"| {cell(setting.accepts)} | {meaning} |"
        )
    return "\n".join(rows)


def render(page: str) -> str:
    """``page`` with the text between its markers replaced by the current table."""
    before, begin, rest = page.partition(BEGIN)
    _, end, after = rest.partition(END)
    if not begin or not end:
        raise ValueError(f"{PAGE.name} lacks the marker lines {BEGIN!r} and {END!r}")
    # Blank lines around the table: Markdown would read it as part of the comment.
    return f"{before}{BEGIN}\n\n{table()}\n\n{END}{after}"


def main(argv: Sequence[str] | None = None) -> int:
    """Rewrite the table, or with ``--check`` only say whether it is current."""
    parser = argparse.ArgumentParser(prog=GENERATOR, description=__doc__)
    parser.add_argument("--check", action="store_true", help="change nothing")
    arguments = parser.parse_args(argv)
    current = PAGE.read_text()
    wanted = render(current)
    if current == wanted:
        return 0
    if arguments.check:
        print(f"{PAGE} is out of date: run {GENERATOR}", file=sys.stderr)
        return 1
    PAGE.write_text(wanted)
    print(f"{PAGE} rewritten", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
