"""The commands the README gives to test and to start the service."""

TEST_COMMAND = (
    "python3 -m venv .venv && .venv/bin/pip install -r requirements-test.txt -e ."
    " && .venv/bin/pytest"
)


START_COMMAND = (
    "python3 -m venv .venv && .venv/bin/pip install -r requirements.txt -e ."
    " && .venv/bin/gunicorn wsgi:app"
)
