"""The methods every route answers, GET, HEAD and OPTIONS, and how it answers OPTIONS.

Load balancers check with any of the three (HAProxy's ``option httpchk`` sends
OPTIONS unless told otherwise), so every route answers them one way, whether Flask
answers it or a layer in front of Flask does: ``Allow`` names the methods in one order,
on an OPTIONS answer and on a 405 alike; OPTIONS answers ``200`` with no body and no
``Content-Type``. The probes alone answer OPTIONS with their verdict, as they answer
GET (petsage.health.endpoints): a probe's verdict must not depend on the method a
load balancer checks with.
"""

from collections.abc import Iterable
from typing import TYPE_CHECKING

from flask import Flask, Response
from flask.globals import request_ctx
from werkzeug.exceptions import MethodNotAllowed

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


class PetSageFlask(Flask):
    """Flask, answering OPTIONS on its routes as every PetSage route answers it."""

    def make_default_options_response(self) -> Response:
        """200, the route's methods in PetSage's order, no body and no Content-Type."""
        # Set: Flask matched the route with it before calling this.
        adapter = request_ctx.url_adapter
        return options_response(adapter.allowed_methods())  # type: ignore[union-attr]
