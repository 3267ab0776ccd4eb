"""The documents' security is true in every configuration, on a real gunicorn.

For each configuration (health token set or not, /metrics on the public port or not,
trusted networks), a gunicorn with a management listener serves a document on each
listener; every operation of each document is called on its listener, without a
token, with a wrong one and with the right one, and schemathesis checks each answer
against the document, ``ignored_auth`` included (an operation requiring the token
must refuse callers without it).
"""

import json
from collections.abc import Callable
from typing import Any

import pytest
import schemathesis

from tests.support.gunicorn_process import GunicornFactory, HttpResult
from tests.support.management import Instance
from tests.support.route_checks import operations, path_samples

# Real processes: not in the fast tier. Every operation of the URL map: the
# feature pipeline runs it with new features.
pytestmark = [pytest.mark.slow, pytest.mark.routes]

TOKEN = "security-token"
SCHEME = "healthToken"
OPTIONAL: list[dict[str, list[str]]] = [{}, {SCHEME: []}]
REQUIRED: list[dict[str, list[str]]] = [{SCHEME: []}]
# Settings without the PETSAGE_ prefix, by the configuration's name.
CONFIGURATIONS: dict[str, dict[str, str]] = {
    "defaults": {},
    "token": {"HEALTH_TOKEN": TOKEN},
    "token, public metrics": {"HEALTH_TOKEN": TOKEN, "PUBLIC_METRICS": "true"},
    "public metrics, no token": {"PUBLIC_METRICS": "true"},
    # 127.0.0.1, where the test calls from, is not in it: the network only refuses.
    "trusted networks, no token": {"TRUSTED_NETWORKS": "192.0.2.0/24"},
}
CREDENTIALS = {
    "none": {},
    "wrong token": {"Authorization": "Bearer not-the-token"},
    "token": {"Authorization": f"Bearer {TOKEN}"},
}


def document_of(listener: Callable[[str], HttpResult]) -> dict[str, Any]:
    """The document a listener serves (``instance.public``, ``instance.management``)."""
    answer = listener("/openapi.json")
    assert answer.status == 200
    document: dict[str, Any] = json.loads(answer.body)
    return document


@pytest.fixture(params=list(CONFIGURATIONS), ids=list(CONFIGURATIONS))
def configured(
    request: pytest.FixtureRequest, start_gunicorn: GunicornFactory
) -> tuple[dict[str, str], Instance]:
    """A gunicorn with a management listener in one configuration."""
    settings = CONFIGURATIONS[request.param]
    environ = {f"PETSAGE_{name}": value for name, value in settings.items()}
    return settings, Instance(start_gunicorn, environ)


def expected_security(
    listener: str, settings: dict[str, str]
) -> dict[str, list[dict[str, list[str]]]]:
    """The security of each of PetSage's own GET operations on the listener, as
    ``settings`` make it: /metrics only where it is served; the welcome page public.
    A feature's operations declare their own, which the calls hold to."""
    health = dict.fromkeys(
        ("/livez", "/livez/{check}", "/readyz", "/readyz/{check}", "/health"),
        OPTIONAL,
    )
    metrics = {"/metrics": REQUIRED if "HEALTH_TOKEN" in settings else []}
    if listener == "management":
        return {**health, **metrics}
    public = {"/": [], **health}
    return {**public, **metrics} if settings.get("PUBLIC_METRICS") == "true" else public


def assert_security_declared(
    document: dict[str, Any], listener: str, settings: dict[str, str]
) -> None:
    """The bearer scheme; every operation's security declared, with the document's
    schemes; PetSage's own operations' as ``settings`` make it."""
    schemes = document["components"]["securitySchemes"]
    scheme = schemes[SCHEME]
    assert (scheme["type"], scheme["scheme"]) == ("http", "bearer")
    undeclared = [
        f"{method.upper()} {path}"
        for path, method, operation in operations(document)
        if "security" not in operation
    ]
    assert undeclared == [], (
        f"{', '.join(undeclared)} declares no security: give the view"
        " @bp.doc(security=[]) if it is public"
    )
    for path, method, operation in operations(document):
        for requirement in operation["security"]:
            assert set(requirement) <= set(schemes), (method, path, requirement)
    expected = expected_security(listener, settings)
    security = {
        path: item["get"]["security"]
        for path, item in document["paths"].items()
        if path in expected
    }
    assert security == expected


def test_every_answer_in_every_configuration_matches_the_document(
    configured: tuple[dict[str, str], Instance],
) -> None:
    settings, instance = configured
    listeners = {
        "public": (instance.public, instance.port),
        "management": (instance.management, instance.management_port),
    }
    token_set = "HEALTH_TOKEN" in settings
    statuses: dict[tuple[str, str, str], int] = {}
    for where, (listener, port) in listeners.items():
        document = document_of(listener)
        assert_security_declared(document, where, settings)
        schema = schemathesis.openapi.from_dict(document)
        for path, method, operation in operations(document):
            samples = path_samples(document, path, method)
            for credential, headers in CREDENTIALS.items():
                case = schema[path][method.upper()].Case(path_parameters=samples)
                response = case.call_and_validate(
                    base_url=f"http://127.0.0.1:{port}", headers=headers
                )
                statuses[f"{method} {path}", where, credential] = response.status_code
                if path == "/health":
                    # The token adds details, and only where one is configured.
                    details = b'"checks"' in response.content
                    assert details == (token_set and credential == "token")
                if operation["security"] != REQUIRED:
                    # Public or token-optional: the status never depends on the caller.
                    assert (
                        response.status_code
                        == statuses[f"{method} {path}", where, "none"]
                    ), (method, path, where, credential)
    for credential, headers in CREDENTIALS.items():
        # Where the public document leaves /metrics out, the public port must too.
        statuses.setdefault(
            ("get /metrics", "public", credential),
            instance.public("/metrics", headers).status,
        )
    metrics = {
        (where, credential): statuses["get /metrics", where, credential]
        for where in ("public", "management")
        for credential in CREDENTIALS
    }
    assert metrics == expected_metrics_statuses(settings)


def expected_metrics_statuses(settings: dict[str, str]) -> dict[tuple[str, str], int]:
    """What /metrics answers by listener and credential, as its description says."""
    token_set = "HEALTH_TOKEN" in settings
    if token_set:
        management = {"none": 401, "wrong token": 401, "token": 200}
    elif "TRUSTED_NETWORKS" in settings:
        management = dict.fromkeys(CREDENTIALS, 403)
    else:
        management = dict.fromkeys(CREDENTIALS, 200)
    if settings.get("PUBLIC_METRICS") != "true":
        public = dict.fromkeys(CREDENTIALS, 404)
    elif token_set:
        public = {"none": 401, "wrong token": 401, "token": 200}
    else:
        public = dict.fromkeys(CREDENTIALS, 200)
    return {
        **{("public", credential): status for credential, status in public.items()},
        **{
            ("management", credential): status
            for credential, status in management.items()
        },
    }
