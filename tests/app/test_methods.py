"""Every route answers OPTIONS one way, and names its methods one way.

The routes are all of them: every rule of Flask's URL map, and every path answered in
front of Flask (the probes, /metrics, the management listener's document), on the
public port and on the management listener, through the test client and on a real
gunicorn. The rule (petsage/methods.py): OPTIONS answers 200 with ``Allow: GET, HEAD,
OPTIONS``, no body and no Content-Type; a probe answers OPTIONS as it answers GET
(status, media type and body), with the same Allow; every 405 carries that Allow too.
"""

import re
import time
from collections.abc import Callable
from dataclasses import dataclass

import pytest
from flask import Flask
from werkzeug.routing import Rule
from werkzeug.test import Client, TestResponse

from petsage import PROBE_APP
from petsage.health import health_of
from tests.support.gunicorn_process import GunicornFactory, http_request
from tests.support.management import Instance

ALLOW = "GET, HEAD, OPTIONS"
REFUSED_METHODS = ("POST", "DELETE")
# A value for each argument of a Flask rule: one of Swagger UI's files under /docs/,
# any name under Flask's /static/ (a route answers OPTIONS whatever the value).
ARGUMENTS = {"path": "swagger-ui.css", "filename": "petsage.css"}
PROBES = ("/livez", "/readyz", "/health")
METRICS = "/metrics"
DOCUMENT = "/openapi.json"
# Far longer than the first check cycle takes on a busy machine.
READY_TIMEOUT = 60.0


@dataclass(frozen=True)
class Answer:
    """An answer, whichever client got it; header names in lower case."""

    status: int
    headers: dict[str, str]
    body: bytes


Ask = Callable[[str, str], Answer]


def path_of(rule: Rule) -> str:
    """A path that ``rule`` matches, its arguments filled in from ARGUMENTS."""

    def value(argument: re.Match[str]) -> str:
        name = argument.group(1)
        assert name in ARGUMENTS, f"give {rule.rule}'s argument {name} a value"
        return ARGUMENTS[name]

    return re.sub(r"<(?:[^:<>]+:)?([^<>]+)>", value, rule.rule)


def probe_paths(app: Flask) -> list[str]:
    """The probes, with every item of /livez and /readyz."""
    health = health_of(app)
    items = {"livez": health.liveness().names, "readyz": health.readiness().names}
    return [
        *PROBES,
        *(f"/{probe}/{item}" for probe, names in items.items() for item in names),
    ]


def routes(app: Flask, listener: str, public_metrics: bool) -> list[str]:
    """Every path ``listener`` answers: Flask's URL map and the probes on the public
    port, /metrics with PETSAGE_PUBLIC_METRICS; the probes, /metrics and the
    document on the management listener."""
    if listener == "management":
        return [*probe_paths(app), METRICS, DOCUMENT]
    flask = [path_of(rule) for rule in app.url_map.iter_rules()]
    return [*flask, *probe_paths(app), *([METRICS] if public_metrics else [])]


def rule_broken(ask: Ask, path: str, probe: bool) -> list[str]:
    """How ``path`` breaks the rule for OPTIONS and Allow; empty when it keeps it."""
    broken = []
    options = ask("OPTIONS", path)
    if options.headers.get("allow") != ALLOW:
        broken.append(f"OPTIONS {path}: Allow {options.headers.get('allow')!r}")
    if probe:
        get = ask("GET", path)
        seen = (options.status, options.headers.get("content-type"), options.body)
        expected = (get.status, get.headers.get("content-type"), get.body)
        if seen != expected:
            broken.append(f"OPTIONS {path}: {seen!r}, GET answers {expected!r}")
    else:
        seen_empty = (
            options.status,
            options.headers.get("content-type"),
            options.headers.get("content-length"),
            options.body,
        )
        if seen_empty != (200, None, "0", b""):
            broken.append(
                f"OPTIONS {path}: status, Content-Type, Content-Length and body"
                f" {seen_empty!r}"
            )
    for method in REFUSED_METHODS:
        refused = ask(method, path)
        if (refused.status, refused.headers.get("allow")) != (405, ALLOW):
            broken.append(
                f"{method} {path}: {refused.status}, Allow"
                f" {refused.headers.get('allow')!r}"
            )
    return broken


def broken_routes(ask: Ask, paths: list[str], probes: list[str]) -> list[str]:
    """Every way the routes ``paths`` break the rule."""
    return [
        broken for path in paths for broken in rule_broken(ask, path, path in probes)
    ]


def client_asker(client: Client) -> Ask:
    """Requests through a werkzeug test client."""

    def ask(method: str, path: str) -> Answer:
        response: TestResponse = client.open(path, method=method)
        headers = {name.lower(): value for name, value in response.headers.items()}
        return Answer(response.status_code, headers, response.data)

    return ask


def http_asker(port: int) -> Ask:
    """Requests over HTTP to 127.0.0.1:``port``."""

    def ask(method: str, path: str) -> Answer:
        result = http_request(port, method, path)
        headers = {name.lower(): value for name, value in result.headers.items()}
        return Answer(result.status, headers, result.body)

    return ask


def wait_until_ready(ask: Ask) -> None:
    """Wait for /readyz 200: a probe's verdict must not change while it is compared."""
    deadline = time.monotonic() + READY_TIMEOUT
    while ask("GET", "/readyz").status != 200:
        assert time.monotonic() < deadline, "/readyz never answered 200"
        time.sleep(0.05)


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
