"""The ``petsage`` command: Flask's and flask-smorest's commands on a PetSage app."""

import os
import sys

import click
from flask.cli import FlaskGroup

from petsage import create_app
from petsage.config import ConfigError, load_settings
from petsage.deploy_check import RENDERERS, Service, run_smoke
from petsage.health.state import DrainMarker

# sysexits.h EX_USAGE: the command was used wrongly.
USAGE_ERROR = 64

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


@cli.command()
@click.argument("url")
@click.option(
    "--timeout",
    type=click.FloatRange(min=0),
    default=60.0,
    show_default=True,
    help="Seconds to wait for /readyz to answer 200.",
)
@click.option(
    "--expect-release",
    metavar="ID",
    help="Fail unless /health reports this releaseId.",
)
@click.option(
    "--token",
    envvar="PETSAGE_HEALTH_TOKEN",
    help="Health token, to see check details [env: PETSAGE_HEALTH_TOKEN].",
)
@click.option(
    "--format",
    "output_format",
    type=click.Choice(sorted(RENDERERS)),
    default="text",
    show_default=True,
    help="Report format; junit is JUnit XML for CI systems.",
)
@click.option(
    "--request-timeout",
    type=click.FloatRange(min=0.1),
    default=5.0,
    show_default=True,
    help="Seconds any one request may take.",
)
def smoke(
    url: str,
    timeout: float,
    expect_release: str | None,
    token: str | None,
    output_format: str,
    request_timeout: float,
) -> None:
    """Check the PetSage release at URL: wait until ready, then verify its contract.

    Exit codes: 0 every check passed; 1 a check failed; 2 not reachable or not ready
    within --timeout; 64 usage error.
    """
    try:
        Service(url, request_timeout, token)
    except ValueError as error:
        raise click.BadParameter(str(error), param_hint="URL") from None
    report = run_smoke(url, timeout, expect_release, token or None, request_timeout)
    click.echo(RENDERERS[output_format](report), nl=False)
    sys.exit(report.exit_code)


@cli.command()
@click.argument("path", default="/livez")
@click.option(
    "--timeout", type=click.FloatRange(min=0.1), default=2.0, show_default=True
)
def probe(path: str, timeout: float) -> None:
    """Exit 0 when this instance answers PATH (default /livez) with 200, else 1.

    For a Docker HEALTHCHECK: it reaches the service on 127.0.0.1 at the port of
    PETSAGE_PROBE_BIND, or else of PETSAGE_BIND, with PetSage's own code, since slim
    images have no curl.
    """
    settings = load_settings(os.environ)
    bind = settings["PROBE_BIND"] or settings["BIND"]
    if bind.startswith("unix:"):
        raise click.UsageError("PETSAGE_BIND is a unix socket; probe needs HOST:PORT")
    port = bind.rpartition(":")[2]
    try:
        answer = Service(f"http://127.0.0.1:{port}", timeout, None).get(path)
    except OSError as error:
        sys.exit(f"petsage probe: {path}: {error}")
    if answer.status != 200:
        sys.exit(f"petsage probe: {path} answered {answer.status}")


def main() -> None:
    """Run the ``petsage`` command.

    A bad setting ends it with one line and exit code 1; a usage error with exit code
    64, so that scripts can tell a wrong command line from a failing service.
    """
    try:
        result = cli.main(standalone_mode=False)
    except ConfigError as error:
        sys.exit(f"petsage: {error}")
    except click.UsageError as error:
        error.show()
        sys.exit(USAGE_ERROR)
    except click.ClickException as error:
        error.show()
        sys.exit(error.exit_code)
    except click.Abort:
        sys.exit("Aborted!")
    sys.exit(result if isinstance(result, int) else 0)
