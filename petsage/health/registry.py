"""A Flask application's health: its state with the built-in checks, and the checks
features add."""

from flask import Flask

from petsage.health.checks import Check
from petsage.health.dependencies import dependencies_from, dependency_check
from petsage.health.state import Health, new_health

EXTENSION = "petsage.health"


def init_health(app: Flask) -> Health:
    """Give ``app`` its health state with the built-in checks and those of the
    dependencies its settings name; raises ``ConfigError`` for a bad dependency."""
    config = app.config
    dependencies = dependencies_from(config)
    health = new_health(config["CHECK_PERIOD"], config["DRAIN_FILE"])
    for group, critical in (
        (dependencies.critical, True),
        (dependencies.optional, False),
    ):
        for dependency in group:
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
