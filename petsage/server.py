"""PetSage inside gunicorn: drain on SIGTERM, start checks at boot, quiet probe logs.

``gunicorn.conf.py`` wires these in; nothing here runs outside gunicorn.
"""

import logging
import os
import signal
import threading
import time
from typing import Any

import gunicorn.util
from flask import Flask
from gunicorn.glogging import Logger
from prometheus_client import multiprocess

from petsage import PROBE_APP
from petsage.health import EXTENSION, health_of
from petsage.health.state import DrainMarker
from petsage.probe_listener import start_probe_listener
from petsage.security import problem_error_bytes

logger = logging.getLogger(__name__)

PROBE_PATHS = ("/livez", "/readyz")


def drain_before_stopping(arbiter: Any, marker: DrainMarker, delay: float) -> None:
    """Make the master's first SIGTERM drain for ``delay`` seconds before stopping.

    gunicorn closes its listeners as soon as it handles SIGTERM, so connections a load
    balancer still sends are reset rather than answered. Instead, the first SIGTERM
    creates the drain marker (readiness 503 in every worker while they keep serving)
    and schedules the real SIGTERM for when the delay, counted from when draining
    began (``petsage drain`` may have begun it earlier), has passed. A second SIGTERM
    stops at once, gracefully; SIGINT and SIGQUIT keep their quick shutdown.
    """
    graceful_stop = arbiter.handle_term
    draining = threading.Event()

    def handle_term() -> None:
        if draining.is_set():
            graceful_stop()
            return
        draining.set()
        remaining = marker.begin() + delay - time.time()
        if remaining <= 0:
            graceful_stop()
            return
        arbiter.log.info(
            "Draining: readiness fails now; shutting down in %.1f s", remaining
        )
        timer = threading.Timer(remaining, os.kill, (os.getpid(), signal.SIGTERM))
        timer.daemon = True
        timer.start()

    arbiter.handle_term = handle_term


METRICS_DIRECTORY_PREFIX = "petsage-metrics-"


def answer_gunicorn_errors_with_problems() -> None:
    """Make the errors gunicorn answers itself (a bad request line, headers over its
    limits) problem JSON like PetSage's, instead of its HTML page.

    gunicorn writes them through ``gunicorn.util.write_error`` and offers no setting
    for it, so PetSage replaces that one function, in the master before it forks.
    """

    def write_problem(sock: Any, status_int: int, reason: str, mesg: str) -> None:
        # ``mesg`` may quote the request; the problem says nothing of it.
        gunicorn.util.write_nonblock(sock, problem_error_bytes(status_int, reason))

    gunicorn.util.write_error = write_problem


def clear_metrics_directory(remove: bool = False) -> None:
    """Delete the metrics files of an earlier run, and the directory if ours and asked.

    prometheus_client's multiprocess files must not outlive a run: counts of a dead
    run would be summed into the new one.
    """
    directory = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if not directory or not os.path.isdir(directory):
        return
    for name in os.listdir(directory):
        if name.endswith(".db"):
            os.unlink(os.path.join(directory, name))
    if remove and os.path.basename(directory).startswith(METRICS_DIRECTORY_PREFIX):
        os.rmdir(directory)


def forget_worker_metrics(pid: int) -> None:
    """Drop a dead worker's live gauges (in flight, health, readiness)."""
    if "PROMETHEUS_MULTIPROC_DIR" in os.environ:
        multiprocess.mark_process_dead(pid)  # type: ignore[no-untyped-call]


def start_worker_services(worker: Any, probe_bind: str) -> None:
    """Run the first check cycle as the worker boots, not at its first request, and
    open the probe listener when ``probe_bind`` is set.

    Another application served with this config (a benchmark baseline) has no health
    state, and is left alone.
    """
    app = worker.wsgi
    if isinstance(app, Flask) and EXTENSION in app.extensions:
        health_of(app).start()
        if probe_bind:
            start_probe_listener(probe_bind, app.extensions[PROBE_APP])


class ProbeQuietLogger(Logger):  # type: ignore[misc]
    """gunicorn's logger, leaving successful liveness and readiness probes unlogged.

    Probes arrive every few seconds from every load balancer and kubelet; a failing
    probe, and every other request, is still logged.
    """

    def access(self, resp: Any, req: Any, environ: Any, request_time: Any) -> None:
        """Log the request unless it is a probe that succeeded."""
        status = getattr(resp, "status_code", None)
        path = environ.get("PATH_INFO", "")
        if (
            status is not None
            and status < 400
            and (path in PROBE_PATHS or path.startswith(("/livez/", "/readyz/")))
        ):
            return
        super().access(resp, req, environ, request_time)
