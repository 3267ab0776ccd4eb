"""gunicorn settings for PetSage, read from PETSAGE_* variables (petsage/config.py)."""

import os
import sys

from petsage.config import ConfigError, load_settings

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
