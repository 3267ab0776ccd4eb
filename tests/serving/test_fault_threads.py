"""The thread freezer (tests/faults/threads.py) against a real process: it stops the
one thread it names, the others keep running, and the thread runs again after."""

import contextlib
import os
import select
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.faults.threads import frozen_thread, thread_ids

NAME = "petsage-counter"
# A liveness bound for every wait below: generous, never asserted as a duration.
LIVENESS_TIMEOUT = 30.0
# The helper: its main thread and `count` threads named argv[1] each write a line
# ("main N" or "named N") to stdout every 20 ms.
HELPER = r"""
import ctypes, os, sys, threading, time

name, count = sys.argv[1].encode(), int(sys.argv[2])
libc = ctypes.CDLL(None)

def counter(role):
    for n in range(1, sys.maxsize):
        os.write(1, f"{role} {n}\n".encode())
        time.sleep(0.02)

def named():
    libc.prctl(15, ctypes.c_char_p(name), 0, 0, 0)  # PR_SET_NAME
    counter("named")

for _ in range(count):
    threading.Thread(target=named, daemon=True).start()
counter("main")
"""


class Helper:
    """The helper process, and the last count its output showed for each role."""

    def __init__(self, named_threads: int) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-c", HELPER, NAME, str(named_threads)],
            stdout=subprocess.PIPE,
        )
        self.latest = {"main": 0, "named": 0}
        self._unfinished = b""

    @property
    def pid(self) -> int:
        """The helper's process id."""
        return self.process.pid

    def read(self, timeout: float) -> bool:
        """Read what the helper wrote, waiting at most ``timeout``; False at its end."""
        assert self.process.stdout is not None
        descriptor = self.process.stdout.fileno()
        readable, _, _ = select.select([descriptor], [], [], max(timeout, 0.0))
        if not readable:
            return True
        data = os.read(descriptor, 65536)
        *lines, self._unfinished = (self._unfinished + data).split(b"\n")
        for line in lines:
            role, count = line.decode().split()
            self.latest[role] = max(self.latest[role], int(count))
        return bool(data)

    def wait_until(self, condition: Callable[[], bool], what: str) -> None:
        """Read the helper's output until ``condition`` holds; fail if it never does."""
        deadline = time.monotonic() + LIVENESS_TIMEOUT
        while not condition():
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not self.read(remaining):
                pytest.fail(f"never saw {what}; last counts {self.latest}")

    def read_to_end(self) -> None:
        """Read until the helper's output ends (every thread closed it in dying)."""
        deadline = time.monotonic() + LIVENESS_TIMEOUT
        while self.read(deadline - time.monotonic()):
            if time.monotonic() > deadline:
                pytest.fail("the helper's output never ended")

    def stop(self) -> None:
        """Kill the helper and collect it."""
        self.process.kill()
        self.process.wait(LIVENESS_TIMEOUT)
        assert self.process.stdout is not None
        self.process.stdout.close()


@contextlib.contextmanager
def running_helper(named_threads: int = 1) -> Iterator[Helper]:
    """A running helper whose threads have all started counting."""
    helper = Helper(named_threads)
    try:
        helper.wait_until(
            lambda: min(helper.latest.values()) >= 2, "both kinds of thread count"
        )
        yield helper
    finally:
        helper.stop()


@pytest.fixture
def helper() -> Iterator[Helper]:
    """The helper with one named thread."""
    with running_helper() as running:
        yield running


def state(pid: int, tid: int) -> str:
    """The scheduler state of thread ``tid``: R, S, t (stopped by a tracer), ..."""
    stat = Path(f"/proc/{pid}/task/{tid}/stat").read_text()
    return stat.rpartition(")")[2].split()[0]


def test_threads_are_found_by_their_os_name(helper: Helper) -> None:
    [tid] = thread_ids(helper.pid, NAME)
    assert tid != helper.pid  # not the main thread
    assert thread_ids(helper.pid, "no-such-thread") == []
    with (
        pytest.raises(LookupError, match="0 threads named"),
        frozen_thread(helper.pid, "no-such-thread"),
    ):
        pass
    with pytest.raises(ValueError, match="longer than a thread name"):
        thread_ids(helper.pid, "a-name-of-16-ch.")


def test_a_name_two_threads_share_is_refused() -> None:
    with running_helper(named_threads=2) as helper:
        assert len(thread_ids(helper.pid, NAME)) == 2
        with (
            pytest.raises(LookupError, match="2 threads named"),
            frozen_thread(helper.pid, NAME),
        ):
            pass


def test_only_the_frozen_thread_stops_and_it_runs_again_after(helper: Helper) -> None:
    with frozen_thread(helper.pid, NAME) as tid:
        assert state(helper.pid, tid) == "t"
        assert state(helper.pid, helper.pid) != "t"
        helper.read(0)
        named, main = helper.latest["named"], helper.latest["main"]
        helper.wait_until(
            lambda: helper.latest["main"] >= main + 20, "the main thread count on"
        )
        # One line the thread wrote just before it stopped may be read only now.
        assert helper.latest["named"] - named <= 1
    named = helper.latest["named"]
    helper.wait_until(
        lambda: helper.latest["named"] >= named + 3, "the released thread count on"
    )
    assert state(helper.pid, tid) != "t"


def test_a_thread_whose_process_dies_while_frozen_is_released(helper: Helper) -> None:
    with frozen_thread(helper.pid, NAME):
        helper.process.kill()
        helper.read_to_end()  # every thread is dying: none is in its stop any more
    # Its process can be collected: no traced thread is left waiting for us.
    assert helper.process.wait(LIVENESS_TIMEOUT) == -signal.SIGKILL
