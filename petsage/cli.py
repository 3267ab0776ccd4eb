"""The ``petsage`` command: Flask's and flask-smorest's commands on a PetSage app."""

import sys

from flask.cli import FlaskGroup

from petsage import create_app
from petsage.config import ConfigError

cli = FlaskGroup(
    name="petsage",
    create_app=create_app,
    add_version_option=False,
    help="Commands for the PetSage service, e.g. `petsage openapi write openapi.json`.",
)


def main() -> None:
    """Run the ``petsage`` command; a bad setting ends it with one line, exit code 2."""
    try:
        cli.main(standalone_mode=True)
    except ConfigError as error:
        sys.exit(f"petsage: {error}")
