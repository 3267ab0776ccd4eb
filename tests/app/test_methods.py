"""Every route answers OPTIONS one way, and names its methods one way.

The routes are all of them: every rule of Flask's URL map, and every path answered in
front of Flask (the probes, /metrics, the management listener's document), on the
public port and on the management listener, through the test client and on a real
gunicorn. The rule (petsage/methods.py): OPTIONS answers 200 with ``Allow`` naming
the route's methods (its rules', with HEAD and OPTIONS; for a path in front of Flask,
its document's), no body and no Content-Type; a probe answers OPTIONS as it answers
GET (status, media type and body), with the same Allow; every other method is a 405
with that Allow. Paths, methods and path samples come from the URL map and the
documents (tests.support.route_checks), never from a list here.
"""

import re

import pytest
from flask import Flask
from werkzeug.test import Client

from petsage import PROBE_APP
from tests.support.gunicorn_process import GunicornFactory, http_request
from tests.support.management import Instance
from tests.support.route_checks import (
    Answer,
    Ask,
    broken_routes,
    client_asker,
    probe_paths,
    routes,
    wait_until_ready,
)

DOCUMENT = "/openapi.json"


def http_asker(port: int) -> Ask:
    """Requests over HTTP to 127.0.0.1:``port``."""

    def ask(method: str, path: str) -> Answer:
        result = http_request(port, method, path)
        headers = {name.lower(): value for name, value in result.headers.items()}
        return Answer(result.status, headers, result.body)

    return ask


def test_every_route_of_the_public_port_keeps_the_rule(app: Flask) -> None:
    ask = client_asker(app.test_client())
    wait_until_ready(ask)
    paths = routes(app, "public", public_metrics=False)
    assert broken_routes(ask, paths, probe_paths(app)) == []


def test_every_route_of_the_management_listener_keeps_the_rule(app: Flask) -> None:
    ask = client_asker(Client(app.extensions[PROBE_APP]))
    wait_until_ready(ask)
    paths = routes(app, "management", public_metrics=False)
    assert broken_routes(ask, paths, probe_paths(app)) == []


def test_the_walk_takes_in_every_operation_of_both_documents(app: Flask) -> None:
    for listener, client in (
        ("public", app.test_client()),
        ("management", Client(app.extensions[PROBE_APP])),
    ):
        walked = routes(app, listener, public_metrics=False)
        document = client.get(DOCUMENT).json
        assert isinstance(document, dict), f"no document on the {listener} listener"
        for path in document["paths"]:
            parts = re.split(r"\{[^}]+\}", path)
            template = re.compile("[^/]+".join(map(re.escape, parts)))
            assert any(template.fullmatch(route) for route in walked), (listener, path)


@pytest.mark.slow
@pytest.mark.routes
@pytest.mark.parametrize(
    "public_metrics", [False, True], ids=["defaults", "public metrics"]
)
def test_every_route_of_both_listeners_keeps_the_rule_on_gunicorn(
    app: Flask, start_gunicorn: GunicornFactory, public_metrics: bool
) -> None:
    # One worker: both listeners' probes then answer from one process's verdict, so a
    # probe's GET and OPTIONS answers cannot come from workers at different moments.
    instance = Instance(
        start_gunicorn, WORKERS="1", PUBLIC_METRICS=str(public_metrics).lower()
    )
    broken = []
    for listener, port in (
        ("public", instance.port),
        ("management", instance.management_port),
    ):
        ask = http_asker(port)
        wait_until_ready(ask)
        paths = routes(app, listener, public_metrics)
        broken += broken_routes(ask, paths, probe_paths(app))
    assert broken == []
