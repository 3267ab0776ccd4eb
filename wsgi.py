"""The WSGI entry point: ``gunicorn wsgi:app``."""

from petsage import create_app

app = create_app()
