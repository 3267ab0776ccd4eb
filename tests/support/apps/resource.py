"""PetSage with two test-only blueprints under /api/v1: input from every webargs
location, and a resource that keeps records.

``inputs`` takes one required whole number, ``age`` (0 to 30), from the query, a JSON
body, a form, a header (``X-Pet-Age``) or a cookie (``pet_age``), and echoes it.
``pets`` is a resource as a feature would write one: ``POST /pets`` (201 with
``Location``), ``GET /pets``, and ``GET``, ``PATCH`` and ``DELETE`` on
``/pets/<int:pet_id>`` (404 for an unknown id, 204 for a deletion), bodies validated
by marshmallow. Its records live in the app's memory: a test fixture only, never a
pattern for a feature (a worker's memory is not shared by the others).

gunicorn serves it as ``tests.support.apps.resource:create_resource_app()``.
"""

from collections.abc import Mapping
from typing import Any

import marshmallow as ma
from flask import Flask, current_app, url_for
from flask.views import MethodView
from flask_smorest import Blueprint, abort

from petsage import API_PREFIX, create_app

INPUTS_TAG = {"name": "Test inputs", "description": "Input from every location."}
PETS_TAG = {"name": "Test pets", "description": "A resource that keeps records."}
STORE = "tests.pets"
PUBLIC: dict[str, Any] = {"security": []}
AGE = ma.fields.Integer(
    required=True, validate=ma.validate.Range(0, 30), metadata={"example": 3}
)

inputs = Blueprint("test_inputs", __name__, description=INPUTS_TAG["description"])
pets = Blueprint("test_pets", __name__, description=PETS_TAG["description"])


class AgeSchema(ma.Schema):
    """A pet's age, in years."""

    age = AGE


class AgeHeaderSchema(ma.Schema):
    """A pet's age, in a header."""

    age = ma.fields.Integer(
        required=True, validate=ma.validate.Range(0, 30), data_key="X-Pet-Age"
    )


class AgeCookieSchema(ma.Schema):
    """A pet's age, in a cookie."""

    age = ma.fields.Integer(
        required=True, validate=ma.validate.Range(0, 30), data_key="pet_age"
    )


def echo_route(location: str, method: str, schema: type[ma.Schema]) -> None:
    """Add ``/inputs/<location>``, which answers the age it was given there."""

    def echo(arguments: dict[str, Any]) -> dict[str, Any]:
        return arguments

    echo.__name__ = f"echo_{location}"
    echo.__doc__ = f"Echo an age given in the {location}"
    echo = inputs.doc(
        operationId=f"echo{location.title()}",
        description=f"Answers the age given in the {location}.",
        **PUBLIC,
    )(echo)
    echo = inputs.response(200, AgeSchema, description="The age given.")(echo)
    echo = inputs.arguments(schema, location=location)(echo)
    inputs.route(f"/inputs/{location}", methods=[method], tags=[INPUTS_TAG["name"]])(
        echo
    )


for where, verb, given in (
    ("query", "GET", AgeSchema),
    ("json", "POST", AgeSchema),
    ("form", "POST", AgeSchema),
    ("headers", "GET", AgeHeaderSchema),
    ("cookies", "GET", AgeCookieSchema),
):
    echo_route(where, verb, given)


class PetSchema(ma.Schema):
    """A pet."""

    id = ma.fields.Integer(dump_only=True, metadata={"example": 1})
    name = ma.fields.String(
        required=True, validate=ma.validate.Length(1, 50), metadata={"example": "Rex"}
    )
    age = ma.fields.Integer(validate=ma.validate.Range(0, 30), metadata={"example": 3})


class PetChangesSchema(ma.Schema):
    """Changes to a pet: any of its fields."""

    name = ma.fields.String(validate=ma.validate.Length(1, 50))
    age = ma.fields.Integer(validate=ma.validate.Range(0, 30))


def store() -> dict[int, dict[str, Any]]:
    """The app's pets by id."""
    pets_by_id: dict[int, dict[str, Any]] = current_app.extensions[STORE]
    return pets_by_id


def pet_or_404(pet_id: int) -> dict[str, Any]:
    """The pet ``pet_id``, or a 404 problem."""
    if pet_id not in store():
        abort(404, message=f"No pet has the id {pet_id}.")
    return store()[pet_id]


@pets.route("/pets", tags=[PETS_TAG["name"]])
class Pets(MethodView):
    """The pets."""

    @pets.response(200, PetSchema(many=True), description="Every pet.")
    @pets.doc(operationId="listPets", description="Every pet, by id.", **PUBLIC)
    def get(self) -> list[dict[str, Any]]:
        """List the pets"""
        return list(store().values())

    @pets.arguments(PetSchema)
    @pets.response(201, PetSchema, description="The pet, as kept.")
    @pets.doc(operationId="createPet", description="Keeps a new pet.", **PUBLIC)
    def post(self, new: dict[str, Any]) -> tuple[dict[str, Any], dict[str, str]]:
        """Add a pet"""
        pet = {**new, "id": max(store(), default=0) + 1}
        store()[pet["id"]] = pet
        return pet, {"Location": url_for("test_pets.read_pet", pet_id=pet["id"])}


@pets.route("/pets/<int:pet_id>", methods=["GET"], tags=[PETS_TAG["name"]])
@pets.response(200, PetSchema, description="The pet.")
@pets.alt_response(404, response="NOT_FOUND")
@pets.doc(operationId="readPet", description="One pet, by id.", **PUBLIC)
def read_pet(pet_id: int) -> dict[str, Any]:
    """Read a pet"""
    return pet_or_404(pet_id)


@pets.route("/pets/<int:pet_id>", methods=["PATCH"], tags=[PETS_TAG["name"]])
@pets.arguments(PetChangesSchema)
@pets.response(200, PetSchema, description="The pet, changed.")
@pets.alt_response(404, response="NOT_FOUND")
@pets.doc(operationId="changePet", description="Changes the fields given.", **PUBLIC)
def change_pet(changes: dict[str, Any], pet_id: int) -> dict[str, Any]:
    """Change a pet"""
    pet = pet_or_404(pet_id)
    pet.update(changes)
    return pet


@pets.route("/pets/<int:pet_id>", methods=["DELETE"], tags=[PETS_TAG["name"]])
@pets.response(204, description="The pet is gone.")
@pets.alt_response(404, response="NOT_FOUND")
@pets.doc(operationId="deletePet", description="Forgets a pet.", **PUBLIC)
def delete_pet(pet_id: int) -> None:
    """Delete a pet"""
    pet_or_404(pet_id)
    del store()[pet_id]


def create_resource_app(config: Mapping[str, Any] | None = None) -> Flask:
    """PetSage, with ``config``, plus the test blueprints under /api/v1."""
    app = create_app(config)
    api = app.extensions["flask-smorest"]["apis"][""]["ext_obj"]
    # The factory's tag list replaces the one apispec would build (petsage.app).
    api.spec.options["tags"] += [INPUTS_TAG, PETS_TAG]
    for blueprint in (inputs, pets):
        api.register_blueprint(blueprint, url_prefix=API_PREFIX)
    app.extensions[STORE] = {}
    return app
