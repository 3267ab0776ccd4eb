"""What probes rely on, on every route: HEAD answers like GET, OPTIONS names methods.

Every route of the URL map, each at a path its rule matches, with its rule's methods
(tests.support.route_checks): none is listed here.
"""

from flask import Flask

from tests.support.route_checks import (
    client_asker,
    document_of,
    flask_routes,
    head_broken,
)


def test_the_service_has_its_routes(app: Flask) -> None:
    templates = {route.template for route in flask_routes(app, document_of(app))}
    assert {"/", "/api/v1/smoke-test", "/openapi.json"} <= templates


def test_head_answers_like_get_without_a_body(app: Flask) -> None:
    ask = client_asker(app.test_client())
    reads = [
        route for route in flask_routes(app, document_of(app)) if "GET" in route.methods
    ]
    assert reads
    assert [broken for route in reads for broken in head_broken(ask, route.path)] == []


def test_options_lists_the_allowed_methods(app: Flask) -> None:
    client = app.test_client()
    listed = {
        route.template: set(client.options(route.path).headers["Allow"].split(", "))
        for route in flask_routes(app, document_of(app))
    }
    assert listed == {
        route.template: set(route.methods)
        for route in flask_routes(app, document_of(app))
    }
