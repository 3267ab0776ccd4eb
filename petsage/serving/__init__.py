"""PetSage inside gunicorn: what runs only in a gunicorn master or its workers.

``gunicorn.conf.py`` wires these in; nothing else does. ``server`` holds the hooks
(drain on SIGTERM, each drain logged once, worker start-up, no listener in what a worker
forks, quiet probe logs, gunicorn's own errors as problem JSON), ``probe_listener`` the
management listener every worker serves from the socket ``management_socket`` opens in
the master, and ``logs`` the logging setup gunicorn applies to its own records and
PetSage's alike.

Who may import whom (import-linter contracts in ``setup.cfg``, run by
``tests/test_layout.py``): this package may import the application (``petsage``, its
request path, ``features``, ``health``, ``metrics``) and the modules shared by every
program (``config``, ``instance``, ...). Nothing in the application imports it, and it
and ``petsage.cli`` never import each other.
"""
