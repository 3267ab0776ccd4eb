"""The ``petsage`` command, run on a deploy machine or beside an instance.

``commands`` is the command itself (``petsage drain``, ``probe``, ``smoke`` and
flask-smorest's ``openapi``); ``deploy_check`` is ``petsage smoke``, which checks a
deployed release over HTTP against its OpenAPI document with ``contract``.

Who may import whom (import-linter contracts in ``setup.cfg``, run by
``tests/test_layout.py``): this package may import the application (``petsage``, for
the OpenAPI document; ``health`` for the drain marker) and the modules shared by every
program (``config`` for settings, ``instance`` for the records of running instances).
Nothing in the application imports it, and it and ``petsage.serving`` never import
each other.
"""
