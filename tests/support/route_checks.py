"""What every route and every operation must do, for any PetSage app.

Nothing here lists a route, a method, a status or a parameter value: each check takes
them from the app's URL map and its OpenAPI document, so a feature that adds routes
(a resource with ``POST``, ``PATCH``, ``DELETE`` and ``/<int:id>``) passes them as it
is. The shared tests call these with the real app; ``tests.support.apps.resource``
proves them on an app with a resource.

- A rule's template reads as the document writes it: ``<int:pet_id>`` is
  ``{pet_id}`` (``openapi_path``).
- A path parameter's sample is its documented ``example``, else its enum's first
  value, else ``1`` for a whole number and ``"x"`` for the rest
  (``sample_value``); an undocumented rule's, by its converter.
- A route answers its rules' methods, with ``HEAD`` and ``OPTIONS`` as Flask adds
  them; ``Allow`` lists them in one order: GET, HEAD, POST, PUT, PATCH, DELETE,
  OPTIONS. Every other method is a 405 with that ``Allow``.
- An operation's success status is the one its document gives (200, 201 or 204).
"""

import re
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from flask import Flask
from werkzeug.routing import Rule
from werkzeug.test import Client, TestResponse

from petsage import PROBE_APP
from petsage.health import health_of

# The methods an OpenAPI path item may hold an operation for.
OPERATION_METHODS = (
    "get",
    "put",
    "post",
    "delete",
    "options",
    "head",
    "patch",
    "trace",
)
# Allow's order (the contract page, petsage.methods); a 405 answers for each method of
# these that a route does not.
ALLOW_ORDER = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")
SUCCESS_STATUSES = ("200", "201", "204")
# Statuses whose answers never have a body (RFC 9110, 15.3.5 and 15.4.5): a 304 is
# a conditional GET's (flask-smorest's ETag).
BODILESS_STATUSES = ("204", "304")
# Served, but not operations of the API: the document itself and the docs pages.
SERVED_ONLY = (
    "/openapi.json",
    "/docs/",
    "/docs/<path:path>",
    "/static/<path:filename>",
)
PROBES = ("/livez", "/readyz", "/health")
METRICS = "/metrics"
DOCUMENT = "/openapi.json"
# Far longer than the first check cycle takes on a busy machine.
READY_TIMEOUT = 60.0
# Every operation can answer these (petsage.api.STATUSES_OF_EVERY_OPERATION).
STATUSES_OF_EVERY_OPERATION = ("405", "500")
# A rule's argument: its converter (with its arguments, if any) and its name.
RULE_ARGUMENT = re.compile(r"<(?:([^:<>]+):)?([^<>]+)>")
NUMERIC_CONVERTERS = ("int", "float")


def openapi_path(rule: str) -> str:
    """A Flask rule's template as the document writes it: ``<int:x>`` is ``{x}``."""
    return RULE_ARGUMENT.sub(r"{\2}", rule)


def document_of(app: Flask) -> dict[str, Any]:
    """The document the app's public port serves."""
    document = app.test_client().get("/openapi.json").json
    assert isinstance(document, dict), "no OpenAPI document at /openapi.json"
    return document


def operations(document: dict[str, Any]) -> Iterator[tuple[str, str, dict[str, Any]]]:
    """Every operation of ``document``: its path, method (lower case) and body."""
    for path, item in document["paths"].items():
        for method, operation in item.items():
            if method in OPERATION_METHODS:
                yield path, method, operation


def path_parameters(
    document: dict[str, Any], path: str, method: str | None = None
) -> dict[str, dict[str, Any]]:
    """The schema of each path parameter of ``path`` (of its ``method`` operation, or
    of any), from the path item and its operations."""
    item = document["paths"].get(path, {})
    listed = list(item.get("parameters", []))
    for name, operation in item.items():
        if name in OPERATION_METHODS and method in (None, name):
            listed += operation.get("parameters", [])
    resolved = [resolve(document, parameter) for parameter in listed]
    return {
        parameter["name"]: parameter.get("schema", {})
        for parameter in resolved
        if parameter["in"] == "path"
    }


def resolve(document: dict[str, Any], item: dict[str, Any]) -> dict[str, Any]:
    """``item``, or the component its ``$ref`` names (flask-smorest refers to the
    parameters it shares, such as ``If-Match``, by reference)."""
    reference = item.get("$ref")
    if reference is None:
        return item
    found: Any = document
    for part in reference.removeprefix("#/").split("/"):
        found = found[part]
    return resolve(document, found)


def sample_value(schema: dict[str, Any]) -> str:
    """A value a path parameter with ``schema`` takes."""
    if "example" in schema:
        return str(schema["example"])
    if schema.get("enum"):
        return str(schema["enum"][0])
    if schema.get("type") in ("integer", "number"):
        return str(max(1, schema.get("minimum", 1)))
    return "x"


def path_samples(
    document: dict[str, Any], path: str, method: str | None = None
) -> dict[str, str]:
    """A sample value for each path parameter of the document's ``path``."""
    return {
        name: sample_value(schema)
        for name, schema in path_parameters(document, path, method).items()
    }


def sample_path(rule: Rule, document: dict[str, Any]) -> str:
    """A path ``rule`` matches: each argument its documented sample, or its
    converter's (a number 1, any other text ``x``) where the rule is undocumented."""
    documented = path_samples(document, openapi_path(rule.rule))

    def value(argument: re.Match[str]) -> str:
        converter, name = argument.group(1) or "", argument.group(2)
        if name in documented:
            return documented[name]
        return "1" if converter.startswith(NUMERIC_CONVERTERS) else "x"

    return RULE_ARGUMENT.sub(value, rule.rule)


def allow(methods: Iterable[str]) -> str:
    """``Allow`` for ``methods``, in the contract's order."""
    return ", ".join(method for method in ALLOW_ORDER if method in set(methods))


@dataclass(frozen=True)
class Route:
    """A route: its template, a path it matches, and the methods it answers."""

    template: str
    path: str
    methods: frozenset[str]

    @property
    def refused(self) -> list[str]:
        """The methods it answers with a 405."""
        return [method for method in ALLOW_ORDER if method not in self.methods]


def flask_routes(app: Flask, document: dict[str, Any]) -> list[Route]:
    """Every route of the URL map, its rules' methods joined (a template may have a
    rule per method), with a sample path."""
    rules: dict[str, list[Rule]] = {}
    for rule in app.url_map.iter_rules():
        rules.setdefault(rule.rule, []).append(rule)
    return [
        Route(
            template,
            sample_path(same[0], document),
            frozenset(method for rule in same for method in rule.methods or ()),
        )
        for template, same in rules.items()
    ]


def documented_methods(document: dict[str, Any], path: str) -> frozenset[str]:
    """The methods the document gives the template that ``path`` matches, with HEAD
    and OPTIONS; GET alone for a path it leaves out (the document itself)."""
    for template, item in document["paths"].items():
        parts = re.split(r"\{[^}]+\}", template)
        if re.fullmatch("[^/]+".join(map(re.escape, parts)), path):
            methods = {method.upper() for method in item if method in OPERATION_METHODS}
            break
    else:
        methods = {"GET"}
    if "GET" in methods:
        methods.add("HEAD")
    return frozenset(methods | {"OPTIONS"})


def undocumented_operations(app: Flask, document: dict[str, Any]) -> list[str]:
    """``METHOD template`` for each method of a Flask rule the document lacks, but
    the rules ``SERVED_ONLY`` (the document itself, the docs pages)."""
    methods = {(path, method.upper()) for path, method, _ in operations(document)}
    return sorted(
        f"{method} {route.template}"
        for route in flask_routes(app, document)
        if route.template not in SERVED_ONLY
        for method in route.methods - {"HEAD", "OPTIONS"}
        if (openapi_path(route.template), method) not in methods
    )


def incomplete_operations(document: dict[str, Any]) -> list[str]:
    """How each operation falls short: ids, summary, description and tags; a success
    status of its own; 405 and 500; a schema for every response; every path parameter
    of its template."""
    wrong = []
    for path, method, operation in operations(document):
        where = f"{method.upper()} {path}"
        for member in ("operationId", "summary", "description", "tags"):
            if not operation.get(member):
                wrong.append(f"{where} lacks {member}")
        responses = set(operation["responses"])
        if not responses & set(SUCCESS_STATUSES):
            wrong.append(
                f"{where} documents no success ({', '.join(SUCCESS_STATUSES)})"
            )
        for status in set(STATUSES_OF_EVERY_OPERATION) - responses:
            wrong.append(f"{where} lacks {status}")
        for status in schemaless_responses(document, operation):
            wrong.append(f"{where} documents {status} without a schema")
        named = set(re.findall(r"\{([^}]+)\}", path))
        if named != set(path_parameters(document, path, method)):
            wrong.append(f"{where} documents path parameters other than {named}")
    return wrong


def schemaless_responses(
    document: dict[str, Any], operation: dict[str, Any]
) -> list[str]:
    """The statuses ``operation`` documents without a schema for each media type
    (a 204 or a 304, which have no body, without content)."""
    schemaless = []
    for status, response in operation["responses"].items():
        if "$ref" in response:
            name = response["$ref"].rpartition("/")[2]
            response = document["components"]["responses"][name]
        content = response.get("content", {})
        if status in BODILESS_STATUSES:
            wanted = not content
        else:
            wanted = bool(content) and all(
                "schema" in kind for kind in content.values()
            )
        if not wanted:
            schemaless.append(status)
    return schemaless


@dataclass(frozen=True)
class Answer:
    """An answer, whichever client got it; header names in lower case."""

    status: int
    headers: dict[str, str]
    body: bytes


Ask = Callable[[str, str], Answer]


def options_broken(ask: Ask, path: str, methods: frozenset[str]) -> list[str]:
    """How ``path``, a route that is not a probe, breaks the rule for OPTIONS: 200,
    ``Allow``, no body and no Content-Type."""
    options = ask("OPTIONS", path)
    broken = []
    if options.headers.get("allow") != allow(methods):
        broken.append(f"OPTIONS {path}: Allow {options.headers.get('allow')!r}")
    seen = (
        options.status,
        options.headers.get("content-type"),
        options.headers.get("content-length"),
        options.body,
    )
    if seen != (200, None, "0", b""):
        broken.append(
            f"OPTIONS {path}: status, Content-Type, Content-Length and body {seen!r}"
        )
    return broken


def refusals_broken(ask: Ask, path: str, methods: frozenset[str]) -> list[str]:
    """How ``path`` breaks the rule for the methods it does not answer: 405, with
    its ``Allow``."""
    broken = []
    for method in ALLOW_ORDER:
        if method in methods:
            continue
        refused = ask(method, path)
        if (refused.status, refused.headers.get("allow")) != (405, allow(methods)):
            broken.append(
                f"{method} {path}: {refused.status}, Allow"
                f" {refused.headers.get('allow')!r}"
            )
    return broken


def head_broken(ask: Ask, path: str) -> list[str]:
    """How HEAD on ``path`` differs from GET: status and headers (but the request
    id), and no body."""
    get, head = ask("GET", path), ask("HEAD", path)
    broken = []
    if head.status != get.status or head.body != b"":
        broken.append(
            f"HEAD {path}: {head.status} {head.body[:60]!r}, GET {get.status}"
        )
    for name in set(get.headers) | set(head.headers):
        if name != "x-request-id" and get.headers.get(name) != head.headers.get(name):
            broken.append(f"HEAD {path}: {name} {head.headers.get(name)!r}")
    return broken


def flask_routes_broken(ask: Ask, app: Flask) -> list[str]:
    """Every way the app's Flask routes break the rules for methods: OPTIONS and
    ``Allow``, 405 for the rest, HEAD like GET."""
    broken = []
    for route in flask_routes(app, document_of(app)):
        broken += options_broken(ask, route.path, route.methods)
        broken += refusals_broken(ask, route.path, route.methods)
        if "GET" in route.methods:
            broken += head_broken(ask, route.path)
    return broken


def client_asker(client: Client) -> Ask:
    """Requests through a werkzeug test client."""

    def ask(method: str, path: str) -> Answer:
        response: TestResponse = client.open(path, method=method)
        headers = {name.lower(): value for name, value in response.headers.items()}
        return Answer(response.status_code, headers, response.data)

    return ask


def probe_paths(app: Flask) -> list[str]:
    """The probes, with every item of /livez and /readyz."""
    health = health_of(app)
    items = {"livez": health.liveness().names, "readyz": health.readiness().names}
    return [
        *PROBES,
        *(f"/{probe}/{item}" for probe, names in items.items() for item in names),
    ]


def management_document(app: Flask) -> dict[str, Any]:
    """The document the management listener serves."""
    document = Client(app.extensions[PROBE_APP]).get(DOCUMENT).json
    assert isinstance(document, dict)
    return document


def routes(
    app: Flask, listener: str, public_metrics: bool
) -> dict[str, frozenset[str]]:
    """Every path ``listener`` answers, with its methods: Flask's URL map and the
    probes on the public port, /metrics with PETSAGE_PUBLIC_METRICS; the probes,
    /metrics and the document on the management listener."""
    management = listener == "management"
    document = management_document(app) if management else document_of(app)
    front = probe_paths(app)
    front += [METRICS] if public_metrics or management else []
    front += [DOCUMENT] if management else []
    answered = {path: documented_methods(document, path) for path in front}
    if not management:
        answered |= {route.path: route.methods for route in flask_routes(app, document)}
    return answered


def rule_broken(ask: Ask, path: str, methods: frozenset[str], probe: bool) -> list[str]:
    """How ``path`` breaks the rule for OPTIONS and Allow; empty when it keeps it."""
    if not probe:
        return options_broken(ask, path, methods) + refusals_broken(ask, path, methods)
    broken = []
    options, get = ask("OPTIONS", path), ask("GET", path)
    if options.headers.get("allow") != allow(methods):
        broken.append(f"OPTIONS {path}: Allow {options.headers.get('allow')!r}")
    seen = (options.status, options.headers.get("content-type"), options.body)
    expected = (get.status, get.headers.get("content-type"), get.body)
    if seen != expected:
        broken.append(f"OPTIONS {path}: {seen!r}, GET answers {expected!r}")
    return broken + refusals_broken(ask, path, methods)


def broken_routes(
    ask: Ask, paths: dict[str, frozenset[str]], probes: list[str]
) -> list[str]:
    """Every way the routes ``paths`` break the rule."""
    return [
        broken
        for path, methods in paths.items()
        for broken in rule_broken(ask, path, methods, path in probes)
    ]


def wait_until_ready(ask: Ask) -> None:
    """Wait for /readyz 200: a probe's verdict must not change while it is compared."""
    deadline = time.monotonic() + READY_TIMEOUT
    while ask("GET", "/readyz").status != 200:
        assert time.monotonic() < deadline, "/readyz never answered 200"
        time.sleep(0.05)
