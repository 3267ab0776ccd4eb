"""A Flask application's health: its state with the built-in checks, and the checks
features add."""

import time

from flask import Flask

from petsage.health.checks import (
    Check,
    dependency_check,
    process_uptime_check,
)
from petsage.health.state import Health

EXTENSION = "petsage.health"


def init_health(app: Flask) -> Health:
    """Give ``app`` its health state with the built-in checks."""
    config = app.config
    health = Health([], config["CHECK_PERIOD"], config["DRAIN_FILE"])
    health.add_check(process_uptime_check(started=time.monotonic()))
    for setting, critical in (
        ("CRITICAL_DEPENDENCIES", True),
        ("OPTIONAL_DEPENDENCIES", False),
    ):
        for dependency in config[setting]:
            check = dependency_check(dependency, critical, config["CHECK_TIMEOUT"])
            health.add_check(check)
    app.extensions[EXTENSION] = health
    return health


def health_of(app: Flask) -> Health:
    """The health state of ``app``."""
    health: Health = app.extensions[EXTENSION]
    return health


def register_check(app: Flask, check: Check) -> None:
    """Add ``check`` to the checks ``app`` refreshes in the background."""
    health_of(app).add_check(check)
