"""Each check in a process of its own, so that no check can freeze the one judging it.

A check may hold the GIL (a C call that never lets it go), block, crash or leak; in
a thread of the process that times the cycle, one that holds the GIL freezes every
thread, the judge's among them. Here the checker process (petsage.serving.checker)
forks one runner per check before it starts any thread, and talks to it over two
pipes: it writes ``run``, the runner runs the check on its main thread and writes
back what it observed, one line of JSON. The judge waits for that line with a
selector until the check's timeout, and never blocks on anything a check does.

A runner that has not answered is not asked again until it does (its check times
out meanwhile, cycle after cycle); its late answer is dropped. A runner that dies
(a crash, ``os._exit``, the OOM killer) fails its check, naming how it died; the
checker then exits for its master to start another (forking a new runner from the
threaded judge could copy a lock some thread holds).
"""

import ctypes
import json
import os
import selectors
import signal
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict
from typing import Any

from petsage.health.checks import Check, CheckFailed, Observation, describe_error

# <linux/prctl.h>: the signal this process gets when its parent dies.
PR_SET_PDEATHSIG = 1
RUN = b"run\n"


class RunnerGone(CheckFailed):
    """A check's runner process exited: the check fails with this, as its output."""


def kill_with_parent() -> None:
    """Have the kernel SIGKILL this process when its parent exits."""
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


def observe(check: Check) -> dict[str, Any]:
    """Run ``check`` once here: what it observed, or why it failed, as JSON fields."""
    started = time.monotonic()
    try:
        observation = check.run()
        fields: dict[str, Any] = (
            {"observation": asdict(observation)}
            if isinstance(observation, Observation)
            else {"error": "returned no observation"}
        )
    except CheckFailed as error:
        fields = {"error": str(error)}
    except Exception as error:  # a check's failure is its result
        fields = {"error": describe_error(error)}
    return {**fields, "started": started, "ended": time.monotonic()}


def serve(check: Check, requests: int, answers: int) -> None:
    """A runner's life: run ``check`` each time ``run`` comes, until the pipe ends."""
    with os.fdopen(requests, "rb") as incoming, os.fdopen(answers, "wb") as out:
        for _ in incoming:
            out.write(json.dumps(observe(check)).encode() + b"\n")
            out.flush()


class Runner:
    """One check's runner process, as the judge sees it."""

    def __init__(self, check: Check, keep: Iterable[int] = ()) -> None:
        """Fork the runner; it closes the descriptors in ``keep`` (which are the
        judge's alone) before it serves."""
        self.check = check
        to_runner, from_judge = os.pipe()
        from_runner, to_judge = os.pipe()
        pid = os.fork()
        if pid == 0:  # the runner
            try:
                kill_with_parent()
                signal.signal(signal.SIGTERM, signal.SIG_DFL)
                for fd in (*keep, from_judge, from_runner):
                    os.close(fd)
                serve(check, to_runner, to_judge)
            finally:
                os._exit(0)
        os.close(to_runner)
        os.close(to_judge)
        self.pid = pid
        self.requests = from_judge
        self.answers = from_runner
        # Whether the runner exited: its check can no longer run here.
        self.dead = False
        self._buffer = b""

    def ask(self) -> "ProcessRun":
        """Start one run of the check in the runner."""
        run = ProcessRun(self)
        try:
            os.write(self.requests, RUN)
        except OSError:
            run.gone()
        return run

    def read_answer(self, wait: float) -> dict[str, Any] | None:
        """The runner's answer, waiting up to ``wait`` seconds; None if there is
        none yet. RunnerGone when the runner exited."""
        with selectors.DefaultSelector() as selector:
            selector.register(self.answers, selectors.EVENT_READ)
            while b"\n" not in self._buffer:
                if not selector.select(max(0.0, wait)):
                    return None
                chunk = os.read(self.answers, 65536)
                if not chunk:
                    raise RunnerGone(self.how_it_ended())
                self._buffer += chunk
                wait = 0.0
        line, _, self._buffer = self._buffer.partition(b"\n")
        answer: dict[str, Any] = json.loads(line)
        return answer

    def how_it_ended(self) -> str:
        """How the runner process ended, as a check's output."""
        self.dead = True
        try:
            _, status = os.waitpid(self.pid, 0)
        except ChildProcessError:
            return "its process exited"
        if os.WIFSIGNALED(status):
            name = signal.Signals(os.WTERMSIG(status)).name
            return f"its process was killed by {name}"
        return f"its process exited with code {os.waitstatus_to_exitcode(status)}"

    def stop(self) -> None:
        """Kill the runner (it may be stuck in its check) and reap it."""
        for fd in (self.requests, self.answers):
            os.close(fd)
        try:
            os.kill(self.pid, signal.SIGKILL)
            os.waitpid(self.pid, 0)
        except (ProcessLookupError, ChildProcessError):
            pass


class ProcessRun:
    """One run of a check in its runner process (a ``Run`` of the refresher)."""

    def __init__(self, runner: Runner) -> None:
        self.runner = runner
        self.check = runner.check
        self.started = time.monotonic()
        self.ended: float | None = None
        self.observation: Observation | None = None
        self.error: BaseException | None = None
        # Called now and then while the judge waits (its heartbeat).
        self.waiting: Callable[[], None] = lambda: None

    def gone(self, why: str | None = None) -> None:
        """End the run: its runner exited."""
        self.error = RunnerGone(why or self.runner.how_it_ended())
        self.ended = time.monotonic()

    def _take(self, wait: float) -> bool:
        if self.ended is not None:
            return True
        try:
            answer = self.runner.read_answer(wait)
        except RunnerGone as error:
            self.gone(str(error))
            return True
        if answer is None:
            return False
        self.ended = max(self.started, float(answer["ended"]))
        if "observation" in answer:
            self.observation = Observation(**answer["observation"])
        else:
            self.error = CheckFailed(answer["error"])
        return True

    def finished(self) -> bool:
        """Whether the runner has answered (or exited), without waiting."""
        return self._take(0.0)

    def wait(self, beat_every: float = 0.25) -> bool:
        """Wait for the answer until the check's timeout; True when it came."""
        deadline = self.started + self.check.timeout
        while True:
            remaining = deadline - time.monotonic()
            if self._take(max(0.0, min(beat_every, remaining))):
                return True
            if remaining <= beat_every:
                return False
            self.waiting()
