"""The baselines PetSage is measured against, each answering the smoke test's bytes.

``bare_wsgi`` and ``bare_flask`` are served by gunicorn with PetSage's own
``gunicorn.conf.py``; ``fastapi_app`` by uvicorn with as many worker processes.
"""

#: The exact body PetSage's ``GET /api/v1/smoke-test`` answers.
SMOKE_TEST_BODY = b'{"status":"ok","message":"PetSage smoke test successful!"}\n'
SMOKE_TEST_PATH = "/api/v1/smoke-test"
