"""Which route template a request matched, noted in the WSGI environ for metrics.

Metrics label requests by template (``/readyz/<check>``), never by raw path, so that
their label values stay bounded whatever paths callers send.
"""

from flask import Request
from werkzeug.routing import Rule

ROUTE_KEY = "petsage.route"


class RouteNotingRequest(Request):
    """Flask's request, noting the rule Flask matched in the WSGI environ.

    Flask sets ``url_rule`` once it has matched the URL; noting the template as it
    is set costs a fraction of a ``before_request`` hook, which Flask would call on
    every request through its hook machinery (a coroutine check, context lookups).
    A request that matched no rule leaves the key unset: RequestMetrics labels it
    ``unmatched``.
    """

    _matched_rule: Rule | None = None

    @property
    def url_rule(self) -> Rule | None:
        """The rule that matched the request, or ``None``."""
        return self._matched_rule

    @url_rule.setter
    def url_rule(self, rule: Rule | None) -> None:
        self._matched_rule = rule
        self.environ[ROUTE_KEY] = rule.rule if rule is not None else None
