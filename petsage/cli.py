"""The ``petsage`` command: Flask's and flask-smorest's commands on a PetSage app."""

import os
import sys

import click
from flask.cli import FlaskGroup

from petsage import create_app
from petsage.config import ConfigError, load_settings
from petsage.health.state import DrainMarker

cli = FlaskGroup(
    name="petsage",
    create_app=create_app,
    add_version_option=False,
    help="Commands for the PetSage service, e.g. `petsage openapi write openapi.json`.",
)


@cli.command()
@click.option("--cancel", is_flag=True, help="Stop draining: readiness passes again.")
def drain(cancel: bool) -> None:
    """Fail readiness in every worker now, while the service keeps serving.

    For a Kubernetes preStop exec (no shell needed) or to take an instance out of a
    load balancer by hand. A SIGTERM after it stops the service once
    PETSAGE_SHUTDOWN_DELAY has passed since draining began.
    """
    marker = DrainMarker(load_settings(os.environ)["DRAIN_FILE"])
    if cancel:
        marker.end()
        click.echo(f"petsage: draining cancelled ({marker.path} removed)")
    else:
        marker.begin()
        click.echo(f"petsage: draining; readiness fails ({marker.path})")


def main() -> None:
    """Run the ``petsage`` command; a bad setting ends it with one line, exit code 2."""
    try:
        cli.main(standalone_mode=True)
    except ConfigError as error:
        sys.exit(f"petsage: {error}")
