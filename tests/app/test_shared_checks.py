"""The checks every route and operation must pass hold for an app with a resource.

tests.support.apps.resource adds, beside every PetSage route, a resource (POST 201
with Location, a list, GET, PATCH and DELETE 204 on /pets/<int:pet_id>, 404 for an
unknown id) and routes taking input from every location. The shared checks
(tests.support.route_checks), which the service's own tests call, pass on it as
they are: they take methods, statuses and path samples from its URL map and
document.
"""

from collections.abc import Iterator

import pytest
import schemathesis
from flask import Flask

from petsage.health import health_of
from tests.support.apps.resource import create_resource_app
from tests.support.route_checks import (
    broken_routes,
    client_asker,
    document_of,
    flask_routes,
    head_broken,
    incomplete_operations,
    operations,
    path_samples,
    probe_paths,
    routes,
    undocumented_operations,
    wait_until_ready,
)

PETS = "/api/v1/pets"


@pytest.fixture
def resource_app() -> Iterator[Flask]:
    """PetSage with the test resource; its health refresher stops after."""
    app = create_resource_app({"TESTING": True})
    yield app
    health_of(app).refresher.stop()


def test_the_checks_see_the_resource_as_it_is(resource_app: Flask) -> None:
    walked = routes(resource_app, "public", public_metrics=False)
    assert walked[PETS] == {"GET", "HEAD", "POST", "OPTIONS"}
    assert walked[f"{PETS}/1"] == {"GET", "HEAD", "PATCH", "DELETE", "OPTIONS"}
    successes = {
        (method, path): sorted(set(operation["responses"]) & {"200", "201", "204"})
        for path, method, operation in operations(document_of(resource_app))
        if path.startswith(PETS)
    }
    assert successes[("post", PETS)] == ["201"]
    assert successes[("delete", f"{PETS}/{{pet_id}}")] == ["204"]


def test_every_route_keeps_the_methods_rule(resource_app: Flask) -> None:
    ask = client_asker(resource_app.test_client())
    wait_until_ready(ask)
    paths = routes(resource_app, "public", public_metrics=False)
    assert broken_routes(ask, paths, probe_paths(resource_app)) == []


def test_head_answers_like_get_on_every_route(resource_app: Flask) -> None:
    ask = client_asker(resource_app.test_client())
    reads = [
        route.path
        for route in flask_routes(resource_app, document_of(resource_app))
        if "GET" in route.methods
    ]
    assert [broken for path in reads for broken in head_broken(ask, path)] == []


def test_every_operation_is_documented_and_complete(resource_app: Flask) -> None:
    document = document_of(resource_app)
    assert undocumented_operations(resource_app, document) == []
    assert incomplete_operations(document) == []


def test_every_operation_answers_as_documented_at_its_sample_path(
    resource_app: Flask,
) -> None:
    document = document_of(resource_app)
    schema = schemathesis.openapi.from_wsgi("/openapi.json", resource_app)
    client = resource_app.test_client()
    answered: dict[str, int] = {}
    for path, method, _ in operations(document):
        samples = path_samples(document, path, method)
        case = schema[path][method.upper()].Case(path_parameters=samples)
        response = case.call_and_validate()
        answered[f"{method.upper()} {path}"] = response.status_code
    assert answered[f"POST {PETS}"] == 422  # no body: the required name is missing
    assert answered[f"GET {PETS}/{{pet_id}}"] == 404
    assert client.post(PETS, json={"name": "Rex"}).headers["Location"] == f"{PETS}/1"
