"""The ``petsage`` command: drain, probe, smoke, db, and flask-smorest's ``openapi``."""

import contextlib
import http.client
import os
import socket
import sys
import time

import click

from petsage.cli import database as database_commands
from petsage.cli.contract import validator_missing
from petsage.cli.deploy_check import RENDERERS, Service, run_smoke
from petsage.config import ConfigError, read_setting
from petsage.health.state import Drain
from petsage.instance.directory import InstanceRecord, live_instances
from petsage.instance.memory import InstanceMemory

# A master puts back a deleted instance directory within about a second: a command
# that finds no instance looks again for this long before it gives up.
DISCOVERY_WAIT = 3.0
# sysexits.h EX_USAGE: the command was used wrongly.
USAGE_ERROR = 64
# The installed distribution whose version ``petsage --version`` prints (setup.cfg).
DISTRIBUTION = "petsage-backend"

# What the application's own command line adds: flask-smorest's ``openapi``, which
# needs the application built. PetSage's own commands (drain, probe, smoke) need only
# settings and instance records, and never load Flask.
APPLICATION_COMMANDS = ("openapi",)


class PetSageGroup(click.Group):
    """The ``petsage`` command: its own commands, plus the application's, for which
    the application is built only when one of them is asked for.

    Flask's own commands (``run``, ``shell``, ``routes``) and options (``--app``,
    ``--env-file``, ``--debug``) are left out: PetSage is served by gunicorn, always
    with its own factory and ``PETSAGE_*`` settings, and a development server offered
    beside drain and smoke would be taken for a way to run it.
    """

    def list_commands(self, ctx: click.Context) -> list[str]:
        """PetSage's commands and the application's, by name."""
        return sorted([*super().list_commands(ctx), *APPLICATION_COMMANDS])

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        """The command ``name``; the application is built for its own commands."""
        if name not in APPLICATION_COMMANDS:
            return super().get_command(ctx, name)
        from flask.cli import ScriptInfo

        from petsage.app import create_app

        # flask-smorest's commands find the application through Flask's ScriptInfo.
        info = ctx.ensure_object(ScriptInfo)
        info.create_app = create_app
        info.set_debug_flag = False
        app = info.load_app()
        ctx.with_resource(app.app_context())
        command: click.Command | None = app.cli.get_command(ctx, name)
        return command


@click.group(
    cls=PetSageGroup,
    name="petsage",
    help="Commands for the PetSage service, e.g. `petsage openapi write openapi.json`.",
)
@click.version_option(
    package_name=DISTRIBUTION,
    message="%(package)s %(version)s",
    help=f"Show the version of {DISTRIBUTION} installed and exit.",
)
def cli() -> None:
    """The ``petsage`` command's group; its commands do the work."""


class NotInstalled(click.ClickException):
    """A command whose extra is not installed: one line, and the usage error's exit
    code, since no run of the command could pass."""

    exit_code = USAGE_ERROR


INSTANCE_HELP = (
    "The instance: its master's pid, an address it listens on (HOST:PORT,"
    " unix:PATH) or a port; needed only when several run here."
)


def master_gone(record: InstanceRecord) -> str:
    """What the command says of an instance whose master is gone."""
    return (
        f"the instance's master (pid {record.pid}) is gone; its workers refuse new"
        " connections and exit once they have answered what they hold"
    )


def chosen_instance(name: str | None) -> InstanceRecord:
    """The running instance ``name`` names, or the only one running, among those in
    this PID namespace (others' pids mean other processes here).

    An instance runs while its master does: workers whose master is gone do not
    count. None found is a failure (exit 1), after DISCOVERY_WAIT seconds in case a
    master is putting its directory back, that says so of an instance whose master
    is gone; several, without a name that picks one, a usage error (exit 64) that
    lists them.
    """
    state_directory = read_setting("STATE_DIR", os.environ)
    deadline = time.monotonic() + DISCOVERY_WAIT
    while True:
        found = live_instances(state_directory)
        here = [record for record in found if record.here]
        candidates = [r for r in here if name is None or r.matches(name)]
        matching = [r for r in candidates if r.master_alive]
        orphaned = [r for r in candidates if not r.master_alive]
        if matching or orphaned or time.monotonic() >= deadline:
            break
        time.sleep(0.1)
    if len(matching) == 1:
        return matching[0]
    if not matching and orphaned:
        raise click.ClickException("; ".join(map(master_gone, orphaned)))
    running = [r for r in here if r.master_alive]
    listed = "; ".join(record.describe() for record in (matching or running))
    if not matching:
        named = f" named {name!r}" if name is not None else ""
        others = f" (running: {listed})" if running else ""
        elsewhere = len(found) - len(here)
        if elsewhere:
            others += (
                f"; {elsewhere} more in other PID namespaces, which only a command"
                " run in theirs may drain or probe"
            )
        raise click.ClickException(
            f"no running PetSage instance{named} in {state_directory}{others}"
        )
    raise click.UsageError(
        f"{len(matching)} PetSage instances run here; name one with --instance:"
        f" {listed}"
    )


def drain_of(record: InstanceRecord) -> Drain:
    """The drain state of the instance ``record`` describes, in its shared memory."""
    try:
        memory = InstanceMemory.attach(record.pid, record.memory_fd, record.name)
    except OSError as error:
        if not record.master_alive:
            raise click.ClickException(master_gone(record)) from None
        raise click.ClickException(
            f"cannot reach the memory of instance {record.describe()}:"
            f" {error.strerror}; run petsage as its user (or root)"
        ) from None
    except ValueError as error:
        # Not a matter of permissions: another release's layout, or not its memory.
        raise click.ClickException(
            f"cannot read the memory of instance {record.describe()}: {error}"
        ) from None
    marker = record.drain_file or None
    with contextlib.suppress(OSError):
        # A marker file is the instance's only when its user owns it: --cancel
        # removes it, and a record must never make this command remove another's.
        if marker and os.lstat(marker).st_uid != os.lstat(record.directory).st_uid:
            marker = None
    return Drain(memory, marker)


@cli.command()
@click.option("--instance", "-i", metavar="PID|ADDRESS|PORT", help=INSTANCE_HELP)
@click.option("--cancel", is_flag=True, help="Stop draining: readiness passes again.")
def drain(instance: str | None, cancel: bool) -> None:
    """Fail readiness in every worker of one instance now, while it keeps serving.

    For a Kubernetes preStop exec (no shell needed) or to take an instance out of a
    load balancer by hand. A SIGTERM after it stops the instance once
    PETSAGE_SHUTDOWN_DELAY has passed since draining began. A drain that SIGTERM
    began cannot be cancelled: the stop is already scheduled.
    """
    record = chosen_instance(instance)
    drain = drain_of(record)
    reason = drain.reason()
    if cancel:
        if reason == Drain.SHUTDOWN:
            raise click.ClickException(
                f"instance {record.describe()} is shutting down (SIGTERM);"
                " its drain cannot be cancelled"
            )
        if reason is None:
            click.echo(f"petsage: instance {record.describe()} was not draining")
            return
        drain.end()
        click.echo(
            f"petsage: instance {record.describe()}: draining cancelled;"
            " readiness follows its checks again"
        )
        return
    if reason is not None:
        click.echo(f"petsage: instance {record.describe()} is already draining")
        return
    drain.begin(Drain.MANUAL)
    click.echo(
        f"petsage: instance {record.describe()}: draining; readiness fails now,"
        " requests are still served"
    )


# No app context: checking a service elsewhere needs none of this host's settings.
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
    within --timeout; 64 usage error, or the smoke extra not installed.
    """
    missing = validator_missing()
    if missing is not None:
        raise NotInstalled(missing)
    try:
        Service(url, request_timeout, token)
    except ValueError as error:
        raise click.BadParameter(str(error), param_hint="URL") from None
    report = run_smoke(url, timeout, expect_release, token or None, request_timeout)
    click.echo(RENDERERS[output_format](report), nl=False)
    sys.exit(report.exit_code)


class UnixHTTPConnection(http.client.HTTPConnection):
    """HTTP over a unix socket, for an instance bound to unix:PATH."""

    def __init__(self, path: str, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self.socket_path = path

    def connect(self) -> None:
        """Connect to the socket file instead of a host and port."""
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        sock.connect(self.socket_path)
        self.sock = sock


def connection_to(address: str, timeout: float) -> http.client.HTTPConnection:
    """A connection to ``address`` as gunicorn reports it (HOST:PORT, [V6]:PORT,
    unix:PATH); a wildcard host is reached on the loopback of its family."""
    if address.startswith("unix:"):
        return UnixHTTPConnection(address.removeprefix("unix:"), timeout)
    host, _, port = address.rpartition(":")
    host = host.removeprefix("[").removesuffix("]")
    host = {"": "127.0.0.1", "0.0.0.0": "127.0.0.1", "::": "::1"}.get(host, host)  # nosec B104
    return http.client.HTTPConnection(host, int(port), timeout=timeout)


@cli.command()
@click.argument("path", default="/livez")
@click.option("--instance", "-i", metavar="PID|ADDRESS|PORT", help=INSTANCE_HELP)
@click.option(
    "--timeout",
    type=click.FloatRange(min=0.1),
    default=2.0,
    show_default=True,
    help="Seconds to wait for the connection, and then for the answer.",
)
def probe(path: str, instance: str | None, timeout: float) -> None:
    """Exit 0 when the instance here answers PATH (default /livez) with 200, else 1.

    For a Docker HEALTHCHECK, with PetSage's own code since slim images have no
    curl. It asks the instance where it really listens: its management listener if
    it has one, else its first address (a wildcard one on loopback).
    """
    path = path if path.startswith("/") else "/" + path
    record = chosen_instance(instance)
    if not record.ready:
        sys.exit(f"petsage probe: instance {record.describe()} is not listening yet")
    address = record.management_bind or record.binds[0]
    connection = connection_to(address, timeout)
    try:
        connection.request("GET", path)
        status = connection.getresponse().status
    except (OSError, http.client.HTTPException) as error:
        sys.exit(f"petsage probe: {address}{path}: {error}")
    finally:
        connection.close()
    if status != 200:
        sys.exit(f"petsage probe: {address}{path} answered {status}")


cli.add_command(database_commands.database)


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
