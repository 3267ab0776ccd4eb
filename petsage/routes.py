"""Which route template a request matched, noted in the WSGI environ for metrics.

Metrics label requests by template (``/readyz/<check>``), never by raw path, so that
their label values stay bounded whatever paths callers send.
"""

from flask import request

ROUTE_KEY = "petsage.route"


def note_flask_route() -> None:
    """Note the Flask rule the request matched (a ``before_request`` hook)."""
    rule = request.url_rule
    request.environ[ROUTE_KEY] = rule.rule if rule is not None else None
