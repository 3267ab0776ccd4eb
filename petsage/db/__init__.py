"""The database features keep their records in: SQLite by default, PostgreSQL in
production, through SQLAlchemy 2, its schema made by Alembic's migrations.

- ``engine``: one engine per process and database, made when first asked for (never
  at import), SQLite's connections set up so that several workers write safely;
- ``model``: ``Base``, the declarative base every feature's tables derive from;
- ``sessions``: a session per request, removed at teardown, and the database's
  health check, given to an app by ``init_database``;
- ``migrate``: ``upgrade``, ``downgrade`` and ``current``, under a lock that lets
  two instances upgrade at once; ``migrations/`` holds Alembic's environment and
  the revisions.

Who may import whom (``setup.cfg``): this package sits beside the application's
other modules; the features use it, and the ``petsage db`` command and the gunicorn
master use ``engine`` and ``migrate``, which load neither Flask nor the application.
"""
