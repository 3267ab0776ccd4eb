"""How every route answers OPTIONS, and names its methods in ``Allow``.

Every route answers HEAD where it answers GET, and OPTIONS: load balancers check with
any of the three (HAProxy's ``option httpchk`` sends OPTIONS unless told otherwise),
so every route answers them one way, whether Flask answers it or a layer in front of
Flask does (those answer GET, HEAD and OPTIONS alone): ``Allow`` names the route's
methods, a feature's writes included, in one order,
on an OPTIONS answer and on a 405 alike; OPTIONS answers ``200`` with no body and no
``Content-Type``. The probes alone answer OPTIONS with their verdict, as they answer
GET (petsage.health.endpoints): a probe's verdict must not depend on the method a
load balancer checks with.

Werkzeug's routing redirects (a path without the trailing slash its route has, such
as /docs, or with doubled slashes) are answered in JSON too, like every other answer
but Swagger UI's pages: ``redirect_response``.
"""

import json
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit, urlunsplit

from flask import Flask, Response
from flask.globals import request_ctx
from werkzeug.exceptions import HTTPException, MethodNotAllowed
from werkzeug.routing import RequestRedirect

from petsage.errors import problem_response

if TYPE_CHECKING:
    from _typeshed.wsgi import WSGIEnvironment

ROUTE_METHODS = ("GET", "HEAD", "OPTIONS")
# Allow's order, whatever order Werkzeug found the methods in (a set's): reads first,
# writes next, OPTIONS last; a method not listed comes before OPTIONS, by name.
METHOD_ORDER = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE")


def allow(methods: Iterable[str]) -> str:
    """The value of ``Allow`` for ``methods``, in PetSage's one order."""

    def position(method: str) -> tuple[int, str]:
        if method in METHOD_ORDER:
            return METHOD_ORDER.index(method), ""
        return len(METHOD_ORDER) + (method == "OPTIONS"), method

    return ", ".join(sorted(set(methods), key=position))


def options_response(methods: Iterable[str] = ROUTE_METHODS) -> Response:
    """The answer to OPTIONS on a route that is not a probe: 200, Allow, no body."""
    response = Response(headers={"Allow": allow(methods)})
    # Werkzeug labels every response text/html unless told otherwise; there is no body.
    del response.headers["Content-Type"]
    return response


def other_method_response(environ: "WSGIEnvironment") -> Response | None:
    """For a GET route answered in front of Flask: the answer to OPTIONS, or the 405
    problem for any other method but GET and HEAD; ``None`` for GET and HEAD."""
    method = environ.get("REQUEST_METHOD")
    if method == "OPTIONS":
        return options_response()
    if method not in ROUTE_METHODS:
        return problem_response(MethodNotAllowed(valid_methods=list(ROUTE_METHODS)))
    return None


def redirect_response(redirect: RequestRedirect) -> Response:
    """A routing redirect with a JSON body instead of Werkzeug's HTML page.

    ``Location`` is relative (RFC 9110 allows it): Werkzeug's absolute URL names the
    host and scheme the request claimed, which behind a proxy are not the client's.
    Its path starts with exactly one slash, so that it can never read as another
    host (``//host/...``).
    """
    parts = urlsplit(redirect.new_url)
    location = urlunsplit(("", "", "/" + parts.path.lstrip("/"), parts.query, ""))
    status = redirect.code
    body = {
        "title": redirect.name,
        "status": status,
        "detail": f"This resource is at {location}.",
        "location": location,
    }
    return Response(
        json.dumps(body, separators=(",", ":")) + "\n",
        status,
        headers={"Location": location},
        mimetype="application/json",
    )


class PetSageFlask(Flask):
    """Flask, answering OPTIONS on its routes as every PetSage route answers it, and
    its routing redirects in JSON."""

    def handle_http_exception(self, e: HTTPException) -> Any:
        """Flask answers a routing redirect with Werkzeug's HTML page, before any
        error handler: answer it in JSON instead."""
        if isinstance(e, RequestRedirect):
            return redirect_response(e)
        return super().handle_http_exception(e)

    def make_default_options_response(self) -> Response:
        """200, the route's methods in PetSage's order, no body and no Content-Type."""
        # Set: Flask matched the route with it before calling this.
        adapter = request_ctx.url_adapter
        return options_response(adapter.allowed_methods())  # type: ignore[union-attr]
