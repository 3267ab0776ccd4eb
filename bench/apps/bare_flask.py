"""A bare Flask app with one route answering the smoke test's JSON.

What any Flask service pays per request before it does anything of its own: no
extensions, no schema, no hooks.
"""

from flask import Flask

from bench.apps import SMOKE_TEST_PATH

app = Flask(__name__)
# Flask sorts keys by default; PetSage keeps the schema's order, and so the same bytes.
app.json.sort_keys = False  # type: ignore[attr-defined]


@app.get(SMOKE_TEST_PATH)
def smoke_test() -> tuple[dict[str, str], dict[str, str]]:
    """The smoke test's body, as PetSage answers it."""
    return (
        {"status": "ok", "message": "PetSage smoke test successful!"},
        {"Cache-Control": "no-store"},
    )
