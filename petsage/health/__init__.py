"""The health subsystem: checks refreshed in the background, and the probe endpoints.

A feature adds a check from its blueprint, so that the factory needs no change::

    bp.record_once(lambda state: register_check(state.app, Check(...)))

Importing the package loads none of its modules: the names below come from them when
first asked for (PEP 562), so a program that needs only the drain state or the shared
snapshot (the ``petsage`` command, gunicorn's master) does not load Flask.
"""

from importlib import import_module
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from petsage.health.checks import Check, CheckFailed, Observation
    from petsage.health.endpoints import HealthEndpoints
    from petsage.health.registry import (
        EXTENSION,
        health_of,
        init_health,
        register_check,
    )
    from petsage.health.state import Health

# Each name this package offers, and the module that holds it.
EXPORTS = {
    "Check": "petsage.health.checks",
    "CheckFailed": "petsage.health.checks",
    "Observation": "petsage.health.checks",
    "HealthEndpoints": "petsage.health.endpoints",
    "EXTENSION": "petsage.health.registry",
    "health_of": "petsage.health.registry",
    "init_health": "petsage.health.registry",
    "register_check": "petsage.health.registry",
    "Health": "petsage.health.state",
}

__all__ = [
    "EXTENSION",
    "Check",
    "CheckFailed",
    "Health",
    "HealthEndpoints",
    "Observation",
    "health_of",
    "init_health",
    "register_check",
]


def __getattr__(name: str) -> Any:
    """One of the package's names, from its module, loaded when first asked for."""
    if name in EXPORTS:
        return getattr(import_module(EXPORTS[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
