"""The master's care of the instance's checker process (petsage.serving.checker).

The master starts it once it is ready, with exec: a fresh interpreter that inherits
none of the master's listening sockets (gunicorn's and the management listener's are
close-on-exec, and ``subprocess`` closes every other descriptor), threads or locks,
only the instance's memory and two pipes. Then, each pass of gunicorn's loop (about
once a second, petsage.serving.server's InstanceKeeper):

- a checker that exited (its status pipe ends) is replaced at once, or after a
  pause that doubles while checkers keep dying before their first cycle (a check
  that does not import), up to MAX_BACKOFF;
- a checker silent for SILENT_AFTER seconds (no line on its pipe: its judge is
  stuck, which no check can do) is killed (SIGKILL) and replaced. Silence is what
  the master itself saw: after a pause of the whole instance (a frozen cgroup,
  ``docker pause``), which stopped the master too, it counts from the resume, so a
  checker that gets a CPU after the master is not killed for the pause;
- a reload (SIGHUP: new code) starts a new checker beside the old one, which keeps
  publishing while the new one loads the application and forks its runners. Once
  it has, the old one is told to finish: it ends the cycle it is in, publishes it
  and exits (killed if it takes longer than its longest check timeout and
  STOP_TIMEOUT), and once it is gone the new one is told to publish, from the cycle
  the old one said was due. So only one checker runs checks at a time (a dependency
  sees one connection per instance), and reloads a second apart leave the old
  checker publishing instead of none: a new reload replaces a checker still
  loading, and waits for a hand-over under way to end;
- an application that is not PetSage's (a benchmark baseline served with these
  settings) has no checks: its checker says so and exits, and none is started again
  until a reload;
- the master stopping stops it (``on_exit``); the master dying kills it (the kernel
  sends it SIGTERM, petsage.serving.checker).

Its metrics files, and its runners', are folded like a worker's when it exits.
"""

import contextlib
import os
import signal
import subprocess  # nosec B404: the checker is this interpreter, started with exec
import sys
import time
from collections.abc import Callable
from typing import Any

from petsage.instance.memory import InstanceMemory
from petsage.serving.checker import (
    FINISH,
    LOADED,
    NO_CHECKS,
    PUBLISH,
    READY,
    RUNNERS,
)

# How long a running checker may stay silent before it is killed.
SILENT_AFTER = 5.0
# A pass of gunicorn's loop comes at least once a second; a longer gap means the
# master did not run (the whole instance paused).
PAUSE = 2.0
# How long a new checker may take to say it runs (a new interpreter loading the
# application on a busy host).
START_TIMEOUT = 60.0
# The longest pause before starting a checker again after one died unready.
MAX_BACKOFF = 30.0
# How long a checker told to stop may take before it is killed (beyond its longest
# check timeout, when it was told to finish its cycle).
STOP_TIMEOUT = 5.0
# The master's line once a checker has published its first cycle.
FIRST_CYCLE = "Health checker (pid %d) ran its first cycle"


class CheckerProcess:
    """One checker process, as its master sees it."""

    def __init__(self, arbiter: Any, memory: InstanceMemory, publish: bool) -> None:
        status_read, status_write = os.pipe()
        orders_read, orders_write = os.pipe()
        app = arbiter.app
        command = [
            sys.executable,
            "-m",
            "petsage.serving.checker",
            f"--app={app.app_uri}",
            f"--chdir={app.cfg.chdir}",
            *(f"--pythonpath={path}" for path in _pythonpath(app.cfg)),
            f"--master={os.getpid()}",
            f"--memory-fd={memory.fd}",
            f"--status-fd={status_write}",
            f"--orders-fd={orders_read}",
            *(["--publish"] if publish else []),
        ]
        try:
            self.process = subprocess.Popen(  # nosec B603: no shell, our arguments
                command,
                stdin=subprocess.DEVNULL,
                pass_fds=(memory.fd, status_write, orders_read),
            )
        finally:
            os.close(status_write)
            os.close(orders_read)
        os.set_blocking(status_read, False)
        self.status = status_read
        self.orders = orders_write
        self.pid = self.process.pid
        self.publishing = publish
        self.started = time.monotonic()
        self.heard: float | None = None
        # It loaded the application and forked its runners (it can take over).
        self.loaded = False
        # The longest of its checks' timeouts: the longest a cycle of it takes.
        self.longest = 0.0
        # It published its first cycle.
        self.ready = False
        self.gone = False
        self.runners: list[int] = []
        # It found no PetSage health in the application: nothing to check.
        self.no_checks = False
        self.killed = False
        self.stop_asked: float | None = None

    def listen(self, now: float) -> None:
        """Read what the checker said since the last pass; note when it ended."""
        data = b""
        while True:
            try:
                chunk = os.read(self.status, 65536)
            except BlockingIOError:
                break
            if not chunk:
                self.end()
                break
            data += chunk
        for line in data.splitlines():
            words = line.split()
            if not words:
                continue
            self.heard = now
            if words[0] == READY:
                self.ready = True
            elif words[0] == LOADED:
                self.loaded = True
                self.longest = float(words[1])
            elif words[0] == RUNNERS:
                self.runners = [int(word) for word in words[1:]]
            elif words[0] == NO_CHECKS:
                self.no_checks = True

    def end(self) -> None:
        """The checker is gone (its pipe ended: no process of it holds it)."""
        self.gone = True
        os.close(self.status)
        with contextlib.suppress(OSError):
            os.close(self.orders)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(1.0)  # gunicorn may have reaped it first

    def silent_for(self, now: float, resumed: float) -> float:
        """Seconds since the checker last said anything (since it started), or since
        the master ``resumed`` after a pause, whichever is later."""
        said = self.heard if self.heard is not None else self.started
        return now - max(said, resumed)

    def tell_to_publish(self) -> None:
        """Let the checker publish: the one before it is gone."""
        self.publishing = True
        self.order(PUBLISH)

    def tell_to_finish(self, now: float) -> None:
        """Have the checker end the cycle it is in, publish it and exit."""
        self.stop_asked = now
        self.order(FINISH)

    def order(self, word: bytes) -> None:
        """One word on the checker's orders pipe (it reads it between cycles)."""
        with contextlib.suppress(OSError):
            os.write(self.orders, word + b"\n")

    def signal(self, signum: int) -> None:
        """Send ``signum`` to the checker, if it still runs."""
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.pid, signum)

    def how_it_ended(self) -> str:
        """Its exit status, as the master saw it."""
        code = self.process.returncode
        if code is None or code == 0:
            return "it exited"
        if code < 0:
            return f"it was killed by {signal.Signals(-code).name}"
        return f"it exited with code {code}"


def _pythonpath(cfg: Any) -> list[str]:
    """gunicorn's --pythonpath entries."""
    value = getattr(cfg, "pythonpath", None)
    return [path for path in value.split(",") if path] if value else []


class CheckerSupervisor:
    """Keeps one checker process publishing for the instance (see the module)."""

    def __init__(
        self, arbiter: Any, memory: InstanceMemory, forget: Callable[[int], None]
    ) -> None:
        self.arbiter = arbiter
        # Called with the pid of each of its processes once a checker is gone, to
        # fold their metrics files.
        self.forget = forget
        self.memory = memory
        self.log = arbiter.log
        # The checker that publishes, and one a reload started to replace it.
        self.current: CheckerProcess | None = None
        self.successor: CheckerProcess | None = None
        self.failures = 0
        self.next_start = 0.0
        self.stopped = False
        # The application is not PetSage's: no checker until a reload.
        self.idle = False
        # A reload came while a hand-over was under way: its checker starts once
        # the hand-over ends.
        self.reload_pending = False
        # When the master last ran a pass, and last resumed after a pause.
        self.last_pass = time.monotonic()
        self.resumed = float("-inf")

    def start(self) -> None:
        """Start the first checker."""
        self.current = self._spawn(publish=True)

    def _spawn(self, publish: bool) -> CheckerProcess:
        checker = CheckerProcess(self.arbiter, self.memory, publish)
        self.log.info("Health checker started (pid %d)", checker.pid)
        return checker

    def reload(self) -> None:
        """Start a checker of the reloaded code; the current one publishes until it
        has loaded, then finishes its cycle and hands over."""
        if self.stopped:
            return
        self.idle = False
        current = self.current
        if (
            self.successor is not None
            and current is not None
            and current.stop_asked is not None
            and not current.gone
        ):
            # The current checker is finishing for this successor: let the
            # hand-over end, then start the reload's checker.
            self.reload_pending = True
            return
        if self.successor is not None:
            self._kill(self.successor, "replaced by another reload")
            self.successor = None
        if self.current is None or self.current.gone:
            self.current = self._spawn(publish=True)
        else:
            self.successor = self._spawn(publish=False)

    def keep(self) -> None:
        """One pass: hear the checkers, replace one that is gone or silent, hand
        over to a reload's checker once it is ready."""
        if self.stopped or self.idle:
            return
        now = time.monotonic()
        if now - self.last_pass > PAUSE:
            self.resumed = now
        self.last_pass = now
        for checker in (self.current, self.successor):
            if checker is not None and not checker.gone:
                was_ready = checker.ready
                checker.listen(now)
                if checker.ready and not was_ready:
                    self.log.info(FIRST_CYCLE, checker.pid)
                self._watch(checker, now)
        successor = self.successor
        if successor is not None and successor.gone:
            self._ended(successor)
            self.successor = None
        current = self.current
        if current is not None and current.gone and current.no_checks:
            self.forget(current.pid)
            self.log.info(
                "The application has no PetSage health checks: no health checker"
            )
            self.current, self.idle = None, True
            return
        if current is not None and current.gone:
            self._ended(current)
            self.current = current = None
        if current is None:
            if self.successor is not None:
                self.current, self.successor = self.successor, None
                self.current.tell_to_publish()
                if self.reload_pending:
                    self.reload_pending = False
                    self.successor = self._spawn(publish=False)
            elif now >= self.next_start:
                self.current = self._spawn(publish=True)
                self.reload_pending = False
            return
        successor = self.successor
        if successor is not None and successor.loaded and current.stop_asked is None:
            current.tell_to_finish(now)

    def _watch(self, checker: CheckerProcess, now: float) -> None:
        """Kill a checker that is silent, or that ignores being stopped."""
        if checker.killed:
            return
        bound = SILENT_AFTER if checker.heard is not None else START_TIMEOUT
        silent = checker.silent_for(now, self.resumed)
        if silent > bound:
            self._kill(checker, f"silent for {silent:.0f} s")
        elif (
            checker.stop_asked is not None
            and now - checker.stop_asked > checker.longest + STOP_TIMEOUT
        ):
            self._kill(checker, "it did not stop")

    def _kill(self, checker: CheckerProcess, why: str) -> None:
        self.log.error("Health checker (pid %d) killed: %s", checker.pid, why)
        checker.killed = True
        checker.signal(signal.SIGKILL)

    def _ended(self, checker: CheckerProcess) -> None:
        """Note a checker's end: fold its metrics; pause before the next start
        while checkers die before their first cycle."""
        for pid in (checker.pid, *checker.runners):
            self.forget(pid)
        if checker.stop_asked is not None:
            self.log.info("Health checker (pid %d) stopped", checker.pid)
            return
        if checker.ready:
            self.failures = 0
        else:
            self.failures += 1
        pause = min(MAX_BACKOFF, 2.0 ** (self.failures - 1)) if self.failures else 0.0
        self.next_start = time.monotonic() + pause
        self.log.error(
            "Health checker (pid %d) ended: %s; starting another%s",
            checker.pid,
            checker.how_it_ended(),
            f" in {pause:.0f} s" if pause else "",
        )

    def stop(self) -> None:
        """Stop every checker, as the master stops: SIGTERM, then SIGKILL."""
        self.stopped = True
        checkers = [c for c in (self.current, self.successor) if c is not None]
        for checker in checkers:
            checker.signal(signal.SIGTERM)
        deadline = time.monotonic() + STOP_TIMEOUT
        for checker in checkers:
            try:
                checker.process.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                checker.signal(signal.SIGKILL)
            for pid in (checker.pid, *checker.runners):
                self.forget(pid)
