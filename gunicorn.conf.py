"""gunicorn settings for PetSage, read from PETSAGE_* variables (petsage/config.py)."""

import os
import sys
from typing import Any

from petsage.config import ConfigError, load_settings
from petsage.health.state import DrainMarker
from petsage.server import ProbeQuietLogger, drain_before_stopping, start_health_checks

try:
    settings = load_settings(os.environ)
except ConfigError as error:
    # One line for the operator instead of gunicorn's "Failed to read config" traceback.
    sys.exit(f"petsage: {error}")

wsgi_app = "wsgi:app"
bind = [settings["BIND"]]
workers = settings["WORKERS"]
# Threads keep probes answered while slow requests or idle connections hold a worker;
# sync workers stall on as few idle sockets as there are workers.
worker_class = "gthread"
threads = settings["THREADS"]
timeout = settings["TIMEOUT"]
graceful_timeout = settings["GRACEFUL_TIMEOUT"]
keepalive = settings["KEEPALIVE"]
loglevel = settings["LOG_LEVEL"].lower()
accesslog = "-"
errorlog = "-"
proc_name = "petsage"
# The heartbeat file on tmpfs, so a stalled disk cannot get healthy workers killed.
worker_tmp_dir = "/dev/shm" if os.path.isdir("/dev/shm") else None
# The control socket sits at one path per user; a second instance on the host (tests,
# rolling restarts) would collide with it, and PetSage does not use it.
control_socket_disable = True

# Drain on SIGTERM, start checks at boot, keep successful probes out of the access log.
drain_marker = DrainMarker(settings["DRAIN_FILE"])
logger_class = ProbeQuietLogger


def on_starting(server: Any) -> None:
    """Clear a drain marker left by an instance that did not stop cleanly."""
    drain_marker.end()


def when_ready(server: Any) -> None:
    """Make SIGTERM drain for PETSAGE_SHUTDOWN_DELAY seconds before stopping."""
    drain_before_stopping(server, drain_marker, settings["SHUTDOWN_DELAY"])


def post_worker_init(worker: Any) -> None:
    """Run the first health check cycle as the worker boots."""
    start_health_checks(worker)


def on_exit(server: Any) -> None:
    """Leave no drain marker behind."""
    drain_marker.end()
