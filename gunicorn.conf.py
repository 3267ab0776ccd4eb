"""gunicorn settings for PetSage, read from PETSAGE_* variables (``petsage.config``)."""

import os
import sys
from typing import Any

from petsage.config import ConfigError, load_settings
from petsage.health.dependencies import dependencies_from
from petsage.instance.directory import metrics_directory_of, name_of_this_master

INSTANCE_NAME = name_of_this_master()
try:
    settings = load_settings(os.environ, warn_unknown=False)
    # Here, in the master: a bad dependency stops the start before any worker forks.
    dependencies_from(settings)
except ConfigError as error:
    # One line for the operator instead of gunicorn's "Failed to read config" traceback.
    sys.exit(f"petsage: {error}")

# PETSAGE_DATABASE_UPGRADE=start: the schema upgraded here, in the master, before any
# worker forks, over a connection closed before this returns; an instance starting
# beside this one waits for this upgrade (petsage.db.migrate). Never otherwise: the
# deploy step, petsage db upgrade, does it.
DATABASE_UPGRADED = ""
if settings["DATABASE_UPGRADE"] == "start":
    from petsage.db.engine import describe_failure
    from petsage.db.migrate import upgrade

    try:
        DATABASE_UPGRADED = upgrade(settings["DATABASE_URL"])[1].describe()
    except Exception as error:
        sys.exit(
            "petsage: the database upgrade at start failed: "
            + describe_failure(settings["DATABASE_URL"], error)
        )

# prometheus_client picks its multiprocess mode when first imported, and the modules
# below import it: the directory must be named before, so that every worker forked
# from this master writes its metrics where a scrape of any worker finds them.
os.environ["PROMETHEUS_MULTIPROC_DIR"] = metrics_directory_of(
    INSTANCE_NAME, settings["STATE_DIR"], os.environ
)

from petsage.config import warn_about_unknown_settings, worker_count  # noqa: E402
from petsage.health.state import Drain  # noqa: E402
from petsage.instance.directory import InstanceError, this_instance  # noqa: E402
from petsage.metrics.process import WORKER_RESTARTS  # noqa: E402
from petsage.serving.logs import ACCESS_LOG_FORMAT, logging_config  # noqa: E402
from petsage.serving.management_socket import (  # noqa: E402
    ManagementSocketError,
    hand_over,
    listening_socket,
)
from petsage.serving.server import (  # noqa: E402
    AddressInUseError,
    InstanceKeeper,
    ProbeQuietLogger,
    announce_management_listener,
    answer_gunicorn_errors_with_problems,
    assign_health_slot,
    close_listeners_in_forked_children,
    dispose_database_engines,
    drain_before_stopping,
    forget_worker_metrics,
    record_listeners,
    refuse_addresses_in_use,
    release_health_slot,
    reload_checker,
    start_worker_services,
    stop_checker,
)

try:
    # This master's memory (drain state, health) and directory (lock, record,
    # metrics). The directory is removed when the master exits, also after a start
    # that failed.
    instance = this_instance(
        settings["STATE_DIR"],
        INSTANCE_NAME,
        drain_file=os.environ.get("PETSAGE_DRAIN_FILE") and settings["DRAIN_FILE"],
        metrics_directory=os.environ["PROMETHEUS_MULTIPROC_DIR"],
        management_bind=settings["MANAGEMENT_BIND"],
    )
    # Kept over reloads: under --daemon the pid (and so the name worked out above)
    # changed since the instance was made.
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = instance.record.metrics_directory
    # The management listener's socket, opened here once, in the master: every
    # worker inherits it (petsage.serving.management_socket). Kept across reloads.
    listening_socket(settings["MANAGEMENT_BIND"])
except (InstanceError, ManagementSocketError) as error:
    sys.exit(f"petsage: {error}")

answer_gunicorn_errors_with_problems()

wsgi_app = "wsgi:app"
bind = [settings["BIND"]]
workers = settings["WORKERS"]
# Threads keep probes answered while slow requests or idle connections hold a worker;
# sync workers stall on as few idle sockets as there are workers. PetSage's gthread
# worker also stops pretending when its master dies (petsage.serving.worker).
worker_class = "petsage.serving.worker.ThreadWorker"
threads = settings["THREADS"]
timeout = settings["TIMEOUT"]
graceful_timeout = settings["GRACEFUL_TIMEOUT"]
keepalive = settings["KEEPALIVE"]
loglevel = settings["LOG_LEVEL"].lower()
accesslog = "-"
errorlog = "-"
access_log_format = ACCESS_LOG_FORMAT
logconfig_dict = logging_config(
    settings["LOG_FORMAT"], settings["LOG_LEVEL"], settings["LOG_BUFFER_LINES"]
)
proc_name = "petsage"
# The heartbeat file on tmpfs, so a stalled disk cannot get healthy workers killed.
worker_tmp_dir = "/dev/shm" if os.path.isdir("/dev/shm") else None
# The control socket sits at one path per user; a second instance on the host (tests,
# rolling restarts) would collide with it, and PetSage does not use it.
control_socket_disable = True

# Drain on SIGTERM, run checks in the checker process, keep successful probes out of
# the access log.
drain = Drain(instance.memory, instance.record.drain_file)
logger_class = ProbeQuietLogger


def on_starting(server: Any) -> None:
    """Stop at once when the address to listen on is taken (by the management
    listener too); log the worker count and why, and every PETSAGE_* variable that
    is ignored."""
    try:
        # Here, not above: only now are gunicorn's own -b/--bind options applied.
        refuse_addresses_in_use(server, settings["BIND"], settings["MANAGEMENT_BIND"])
    except AddressInUseError as error:
        # Logging is set up by now: the record goes to stdout, with every other one.
        server.log.error("%s", error)
        sys.exit(1)
    server.log.info("%s", worker_count(os.environ, server.cfg.workers)[1])
    warn_about_unknown_settings(os.environ)
    if instance.record.metrics_problem:
        server.log.error("Metrics are degraded: %s", instance.record.metrics_problem)
    if DATABASE_UPGRADED:
        server.log.info("Database schema at %s", DATABASE_UPGRADED)


def when_ready(server: Any) -> None:
    """Log the management listener's address; record where this instance listens;
    make SIGTERM drain before stopping; start the checker process, keep it and the
    instance's directory, and replace wedged workers; export the worker restart
    count from 0."""
    announce_management_listener(server)
    record_listeners(server, instance)
    drain_before_stopping(server, drain, settings["SHUTDOWN_DELAY"])
    InstanceKeeper(server, instance).install()
    WORKER_RESTARTS.start()


def on_reload(server: Any) -> None:
    """Record where this instance listens, and log the management listener's
    address, in case a reload changed it; start a checker of the new code."""
    announce_management_listener(server)
    record_listeners(server, instance)
    reload_checker(server)


def on_exit(server: Any) -> None:
    """Stop the checker process as the master stops."""
    stop_checker(server)


def pre_fork(server: Any, worker: Any) -> None:
    """Give the worker its slot in the instance's memory: its heartbeat; close any
    database connection of the master's, which a worker must not share."""
    assign_health_slot(server, worker, instance.memory)
    dispose_database_engines()


def post_fork(server: Any, worker: Any) -> None:
    """Keep the listening sockets out of any process the worker forks (a check's)."""
    close_listeners_in_forked_children(worker)


def post_worker_init(worker: Any) -> None:
    """Answer from the instance's health snapshot at once; open the probe listener."""
    start_worker_services(worker, settings["MANAGEMENT_BIND"], instance)


def pre_exec(server: Any) -> None:
    """Hand the management socket to the new master a SIGUSR2 upgrade starts."""
    hand_over(server.cfg.env_orig)


def child_exit(server: Any, worker: Any) -> None:
    """Count the worker's exit; empty its slot; fold its metrics into the instance's
    and drop its live gauges."""
    WORKER_RESTARTS.count()
    release_health_slot(worker, instance.memory)
    forget_worker_metrics(worker.pid)
