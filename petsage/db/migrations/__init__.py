"""Alembic's environment (``env.py``), the template of a new revision
(``script.py.mako``) and the revisions (``versions/``), chained from the base."""
