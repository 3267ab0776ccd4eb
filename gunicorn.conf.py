"""gunicorn settings for PetSage, read from PETSAGE_* variables (petsage/config.py)."""

import os
import sys
import tempfile
from typing import Any

# prometheus_client picks its multiprocess mode when first imported, and importing
# petsage imports it: the directory must be set before, so that every worker forked
# from this master writes its metrics where a scrape of any worker finds them.
if "PROMETHEUS_MULTIPROC_DIR" not in os.environ:
    shared_memory = "/dev/shm" if os.path.isdir("/dev/shm") else None
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(
        prefix="petsage-metrics-", dir=shared_memory
    )

from petsage.config import ConfigError, load_settings
from petsage.health.state import DrainMarker
from petsage.logs import ACCESS_LOG_FORMAT, logging_config
from petsage.server import (
    ProbeQuietLogger,
    answer_gunicorn_errors_with_problems,
    clear_metrics_directory,
    drain_before_stopping,
    forget_worker_metrics,
    start_worker_services,
)

try:
    settings = load_settings(os.environ)
except ConfigError as error:
    # One line for the operator instead of gunicorn's "Failed to read config" traceback.
    sys.exit(f"petsage: {error}")

answer_gunicorn_errors_with_problems()

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
access_log_format = ACCESS_LOG_FORMAT
logconfig_dict = logging_config(settings["LOG_FORMAT"], settings["LOG_LEVEL"])
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
    """Clear what an instance that did not stop cleanly left behind."""
    drain_marker.end()
    clear_metrics_directory()


def when_ready(server: Any) -> None:
    """Make SIGTERM drain for PETSAGE_SHUTDOWN_DELAY seconds before stopping."""
    drain_before_stopping(server, drain_marker, settings["SHUTDOWN_DELAY"])


def post_worker_init(worker: Any) -> None:
    """Run the first health check cycle as the worker boots; open the probe listener."""
    start_worker_services(worker, settings["PROBE_BIND"])


def child_exit(server: Any, worker: Any) -> None:
    """Drop a dead worker's in-flight and health gauges from the metrics."""
    forget_worker_metrics(worker.pid)


def on_exit(server: Any) -> None:
    """Leave no drain marker and no metrics files behind."""
    drain_marker.end()
    clear_metrics_directory(remove=True)
