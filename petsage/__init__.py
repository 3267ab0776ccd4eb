"""PetSage Backend: the HTTP service behind PetSage.

Importing the package runs nothing: a program takes only the modules it uses, so the
``petsage`` command and gunicorn's config read settings and instance records without
loading Flask. ``from petsage import create_app`` still works; the factory lives in
``petsage.app`` and is loaded on first use (PEP 562).

The package holds three programs:

- the WSGI application: ``app`` (the factory), the layers in front of Flask
  (``middleware``, ``metrics``), the API (``api``, ``errors``, ``methods``,
  ``welcome``, ``docs``, ``json_provider``), ``features`` and ``health``;
- ``serving``: what runs only inside gunicorn;
- ``cli``: the ``petsage`` command.

A few modules serve all three: ``config`` (with ``cpu_quota``) for settings, and
``instance`` for an instance's identity on a host and the memory its master shares
with its workers.

Who may import whom, checked by import-linter (contracts in ``setup.cfg``):

- the application never imports ``serving`` or ``cli``, directly or through another
  module, and ``serving`` and ``cli`` never import each other;
- the shared modules import nothing of the application, so a program may use them
  without it;
- a feature never imports another feature.
"""

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from petsage.app import API_PREFIX, MANAGEMENT_API, PROBE_APP, create_app

__all__ = ["API_PREFIX", "MANAGEMENT_API", "PROBE_APP", "create_app"]


def __getattr__(name: str) -> Any:
    """The application's names, from ``petsage.app``, loaded when first asked for."""
    if name in __all__:
        from petsage import app

        return getattr(app, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
