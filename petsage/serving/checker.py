"""The instance's checker process: it runs every check, each in a runner process of
its own, and publishes the snapshot every worker answers from.

The master starts it with exec (``python -m petsage.serving.checker``,
petsage.serving.supervisor), so it inherits no listening socket, thread or lock of
the master's: only the instance's memory and two pipes, one to tell the master it
lives (a line a tick) and one to hear from it. It builds the application as a worker
does (gunicorn's ``wsgi_app``) to collect the checks the application and its
features registered, forks a runner per check before it starts any thread
(petsage.health.runners), and judges them from its main loop: a check that has not
answered within its timeout is reported so, whatever it does in its runner.

Only one checker runs checks at a time, so a dependency sees one connection per
instance: the one the master tells to (``--publish``, or ``publish`` on its pipe
once the checker before it is gone). A checker started by a reload loads the
application, forks its runners and says ``loaded``, then runs nothing until told to
publish. The master then tells the old checker to ``finish``: it ends the cycle it
is in, if any, publishes it and exits, and the new one takes over the published
results and the cycle they said was due. A checker says ``ready`` after the first
cycle it publishes.

It dies with its master (the kernel sends it SIGTERM), and its runners with it.
A runner that dies fails its check, naming how; the checker publishes that cycle
and exits (RUNNER_EXITED) for the master to start another.
"""

import argparse
import contextlib
import logging
import logging.config
import os
import selectors
import signal
import sys
import time
from collections.abc import Sequence

import gunicorn.util
from flask import Flask

from petsage.config import leave_warnings_to_the_master, load_settings
from petsage.health import EXTENSION, health_of
from petsage.health.checks import Check
from petsage.health.refresher import CheckRefresher, Snapshot
from petsage.health.runners import ProcessRun, Runner
from petsage.health.shared import TICK, Published, publish, read_published
from petsage.instance.memory import InstanceMemory
from petsage.metrics.log_lines import dropped_log_lines
from petsage.metrics.storage import values_in_memory
from petsage.serving.logs import logging_config
from petsage.serving.worker import signal_when_parent_dies

logger = logging.getLogger(__name__)

# The exit status of a checker whose runner died; never gunicorn's own 3 or 4.
RUNNER_EXITED = 70
# What the checker tells its master, a line each, and what the master tells it.
BEAT, LOADED, READY, RUNNERS = b"beat", b"loaded", b"ready", b"runners"
PUBLISH, FINISH = b"publish", b"finish"
# Said instead, once, by a checker whose application is not PetSage's (a benchmark
# baseline served with PetSage's gunicorn settings): it has no checks to run.
NO_CHECKS = b"no-checks"


def parse_arguments(argv: Sequence[str]) -> argparse.Namespace:
    """The command line the master starts the checker with."""
    parser = argparse.ArgumentParser(prog="python -m petsage.serving.checker")
    parser.add_argument("--app", required=True, help="gunicorn's wsgi_app")
    parser.add_argument("--chdir", required=True)
    parser.add_argument("--pythonpath", action="append", default=[])
    parser.add_argument("--master", type=int, required=True)
    parser.add_argument("--memory-fd", type=int, required=True)
    parser.add_argument("--status-fd", type=int, required=True)
    parser.add_argument("--orders-fd", type=int, required=True)
    parser.add_argument("--publish", action="store_true")
    return parser.parse_args(argv)


def load_checks(arguments: argparse.Namespace) -> tuple[list[Check], float] | None:
    """The checks the application registers, and its check period, loaded as a
    gunicorn worker loads the application; None for an application that is not
    PetSage's (no health state), which the workers leave alone too."""
    os.chdir(arguments.chdir)
    for path in [*reversed(arguments.pythonpath), arguments.chdir]:
        sys.path.insert(0, path)
    app = gunicorn.util.import_app(arguments.app)
    if not isinstance(app, Flask) or EXTENSION not in app.extensions:
        return None
    health = health_of(app)
    return list(health.checks), health.refresher.period


class Checker:
    """The judge: runs the cycles, beats, and publishes while the master lets it."""

    def __init__(
        self,
        checks: list[Check],
        period: float,
        memory: InstanceMemory,
        status_fd: int,
        orders_fd: int,
        publishing: bool,
    ) -> None:
        self.memory = memory
        self.status_fd = status_fd
        self.orders_fd = orders_fd
        self.publishing = publishing
        # A runner keeps none of the judge's descriptors: its pipes to the master,
        # and those to the runners forked before it.
        judges = [status_fd, orders_fd]
        self.runners: dict[str, Runner] = {}
        for check in checks:
            runner = Runner(check, judges)
            judges += [runner.requests, runner.answers]
            self.runners[check.name] = runner
        self.refresher = CheckRefresher(checks, period, self.start_run)
        # The longest a cycle takes: the master waits that long for a checker told
        # to finish before it kills it.
        self.longest = max((check.timeout for check in checks), default=0.0)
        self.cycles = 0
        self.stopping = False
        self.beaten = 0.0
        os.set_blocking(status_fd, False)
        self.selector = selectors.DefaultSelector()
        self.selector.register(orders_fd, selectors.EVENT_READ)

    def start_run(self, check: Check) -> ProcessRun:
        """Ask the check's runner for a run; the judge beats while it waits."""
        run = self.runners[check.name].ask()
        run.waiting = self.beat
        return run

    def tell(self, *words: bytes) -> None:
        """One line to the master; dropped when it does not read (it will kill a
        checker that stays silent)."""
        with contextlib.suppress(BlockingIOError, BrokenPipeError):
            os.write(self.status_fd, b" ".join(words) + b"\n")

    def beat(self) -> None:
        """Tell the master this checker runs, once a tick at most."""
        now = time.monotonic()
        if now - self.beaten >= TICK:
            self.beaten = now
            self.tell(BEAT)

    def run(self) -> int:
        """Run cycles until the master is gone, it tells this checker to finish, or
        a runner died; the exit status."""
        self.tell(RUNNERS, *(str(r.pid).encode() for r in self.runners.values()))
        self.tell(LOADED, f"{self.longest:g}".encode())
        if self.publishing:
            self.carry_on()
        # A reload's checker runs nothing until the one before it is gone.
        while not self.publishing and not self.stopping:
            self.beat()
            self.hear(TICK)
        while not self.stopping:
            self.beat()
            due = self.refresher.next_cycle_at
            now = time.monotonic()
            if due is not None and now < due:
                # Told to finish while waiting: no cycle is in progress to end.
                self.hear(min(TICK, due - now))
                continue
            snapshot = self.refresher.run_cycle()
            self.cycles += 1
            self.publish(snapshot)
            if self.cycles == 1:
                self.tell(READY)
            if any(runner.dead for runner in self.runners.values()):
                return RUNNER_EXITED
        return 0

    def carry_on(self, keep_schedule: bool = False) -> None:
        """Take the instance's last published results as this checker's own last
        cycle: consecutive failures go on, and changes logged are not logged again.
        With ``keep_schedule`` (taking over from a checker that finished), the next
        cycle is the one they said was due, not one at once."""
        published = read_published(self.memory)
        if published is None:
            return
        self.refresher.snapshot = published.snapshot
        if keep_schedule:
            self.refresher.next_cycle_at = published.next_cycle_at

    def hear(self, wait: float) -> None:
        """Wait up to ``wait`` seconds for the master's word."""
        if not self.selector.select(wait):
            return
        try:
            words = os.read(self.orders_fd, 4096)
        except OSError:
            words = b""
        if not words:
            self.stopping = True  # the master is gone
            return
        for word in words.split():
            if word == PUBLISH and not self.publishing:
                # The checker before this one is gone: carry on from its results.
                self.publishing = True
                self.carry_on(keep_schedule=True)
            elif word == FINISH:
                self.stopping = True

    def publish(self, snapshot: Snapshot) -> None:
        """Share a cycle with every worker."""
        published = Published(snapshot, os.getpid(), self.refresher.next_cycle_at)
        if not publish(self.memory, published):
            logger.error("Health snapshot: a cycle's results do not fit in memory")
            return
        logger.debug("Health cycle published: %s", snapshot.status)

    def stop(self) -> None:
        """Stop every runner."""
        for runner in self.runners.values():
            runner.stop()


def main(argv: Sequence[str] | None = None) -> int:
    """Run the checker as its master started it; its exit status."""
    arguments = parse_arguments(sys.argv[1:] if argv is None else argv)
    signal_when_parent_dies(signal.SIGTERM)
    if os.getppid() != arguments.master:
        return 0  # the master died before the kernel could be told
    # The application loads its settings again (load_checks): only the master warns.
    leave_warnings_to_the_master(os.environ)
    settings = load_settings(os.environ)
    logging.config.dictConfig(
        logging_config(
            settings["LOG_FORMAT"], settings["LOG_LEVEL"], settings["LOG_BUFFER_LINES"]
        )
    )
    # No metrics file for what the application makes (nobody asks the checker for
    # a request); the checker's count of dropped log lines is made at its first
    # drop, as the master's is. Its runners, forked from it, make none either
    # unless a check records a metric.
    with values_in_memory():
        loaded = load_checks(arguments)
    if loaded is None:
        os.write(arguments.status_fd, NO_CHECKS + b"\n")
        return 0
    checks, period = loaded
    dropped_log_lines.cache_clear()
    checker = Checker(
        checks,
        period,
        InstanceMemory.inherited(arguments.memory_fd),
        arguments.status_fd,
        arguments.orders_fd,
        arguments.publish,
    )
    try:
        return checker.run()
    finally:
        checker.stop()


if __name__ == "__main__":
    sys.exit(main())
