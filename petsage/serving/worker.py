"""The worker PetSage runs: gunicorn's gthread worker, which lets go of its listening
sockets as soon as it stops accepting, and stops when its master dies.

A gunicorn master that is killed (SIGKILL, the kernel's OOM killer) cannot stop its
workers. gunicorn's own worker notices within a second that its parent changed, stops
accepting and finishes what it holds; but it keeps its copies of the listening
sockets open until it exits, so the kernel keeps queueing new connections nobody will
accept, and the management listener keeps answering probes. So here:

- The kernel tells the worker at once: ``prctl(PR_SET_PDEATHSIG)`` sends it SIGTERM
  when its master dies, which gunicorn handles as a graceful stop (requests in flight
  are answered, within the graceful timeout).
- A worker that stops accepting for good (any stop: its master's, a reload,
  ``max_requests``, a dead master) closes its copies of the listening sockets, the
  management listener's included, at once. Where the master still holds them this
  changes nothing; where it is gone, the last worker to close them closes the
  sockets, and new connections are refused instead of queued.
- Without a master, nothing would kill a worker that overstays its graceful timeout
  (a request that never ends); the kernel does instead (``alarm``: SIGALRM, whose
  default action ends the process).
- Its probes fail from the moment the master is gone (``petsage.health.state``).
- Under memory pressure, the kernel's OOM killer should pick a worker, which the
  master replaces, before the master, whose death takes the instance with it: each
  worker raises its own ``oom_score_adj`` (raising needs no privilege).
"""

import ctypes
import logging
import math
import os
import signal
from types import FrameType
from typing import TYPE_CHECKING

from gunicorn.workers import gthread

if TYPE_CHECKING:
    from petsage.serving.probe_listener import ManagementListener

logger = logging.getLogger(__name__)

# <linux/prctl.h>: the signal this process gets when its parent dies.
PR_SET_PDEATHSIG = 1
# Added to the master's oom_score_adj (-1000 to 1000) in each worker: about half the
# memory limit's worth of badness, so a worker is chosen before a larger master.
OOM_SCORE_ADJ_OVER_MASTER = 500
OOM_SCORE_ADJ_MAX = 1000
OOM_SCORE_ADJ = "/proc/self/oom_score_adj"


def raise_oom_score_adj(by: int) -> None:
    """Raise this process's ``oom_score_adj`` by ``by``, at most to 1000."""
    try:
        with open(OOM_SCORE_ADJ, "r+", encoding="ascii") as adj:
            value = min(int(adj.read()) + by, OOM_SCORE_ADJ_MAX)
            adj.seek(0)
            adj.write(str(value))
    except OSError as error:
        logger.warning("Cannot raise this worker's oom_score_adj: %s", error)


def signal_when_parent_dies(signum: int) -> None:
    """Have the kernel send ``signum`` to this process when its parent exits."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_PDEATHSIG, signum, 0, 0, 0) != 0:
        error = ctypes.get_errno()
        logger.warning("prctl(PR_SET_PDEATHSIG) failed: %s", os.strerror(error))


class ThreadWorker(gthread.ThreadWorker):  # type: ignore[misc]
    """gunicorn's gthread worker that stops pretending once its master is gone."""

    # PetSage's management listener, when this worker serves one (set by
    # ``start_worker_services`` of petsage.serving.server).
    management_listener: "ManagementListener | None" = None
    # Whether it has closed its listening sockets (it is stopping).
    listeners_closed = False

    def init_process(self) -> None:
        """Raise this worker's OOM score over its master's, then start as gthread
        does. Done before gunicorn switches to the configured user: a process that
        changed its user may no longer write its own ``/proc`` files."""
        raise_oom_score_adj(OOM_SCORE_ADJ_OVER_MASTER)
        super().init_process()

    def init_signals(self) -> None:
        """gunicorn's signal handlers, and SIGTERM from the kernel when the master
        dies. Set here, after gunicorn switched to the configured user: a change of
        user clears it."""
        super().init_signals()
        signal_when_parent_dies(signal.SIGTERM)
        if self.master_gone():
            # It died before the kernel could be told: this worker never serves.
            self.handle_exit(signal.SIGTERM, None)

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        """SIGTERM: stop gracefully, as gthread does. From the kernel, the master
        being gone, the kernel also ends this worker should it still run a graceful
        timeout later (SIGALRM, whose default action ends the process), as the
        master would have; nothing else is done here, in a signal handler."""
        super().handle_exit(sig, frame)
        if self.master_gone():
            signal.alarm(self.graceful_timeout)

    @property
    def graceful_timeout(self) -> int:
        """PETSAGE_GRACEFUL_TIMEOUT, in whole seconds."""
        seconds: float = self.cfg.graceful_timeout
        return math.ceil(seconds)

    def master_gone(self) -> bool:
        """Whether the master that forked this worker has exited."""
        master: int = self.ppid
        return os.getppid() != master

    def set_accept_enabled(self, enabled: bool) -> None:
        """Stop or resume accepting; once stopped for good, let go of every
        listening socket."""
        super().set_accept_enabled(enabled)
        if not enabled and not self.alive and not self.listeners_closed:
            self.close_listeners()

    def close_listeners(self) -> None:
        """Close this worker's listening sockets: gunicorn's and the management
        listener's."""
        self.listeners_closed = True
        for listener in self.sockets:
            listener.close()
        if self.management_listener is not None:
            self.management_listener.stop_accepting()
        if self.master_gone():
            logger.error(
                "The master (pid %d) is gone: this worker stopped accepting, fails"
                " its probes, and exits once it has answered what it holds, in %d s"
                " at most (the graceful timeout)",
                self.ppid,
                self.graceful_timeout,
            )
