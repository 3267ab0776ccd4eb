"""``GET /``: the welcome message that tells a caller it reached PetSage."""

import marshmallow as ma
from flask_smorest import Blueprint

TAG = {
    "name": "Service",
    "description": "What this service is.",
}

bp = Blueprint("welcome", __name__, description=TAG["description"])


class WelcomeResponseSchema(ma.Schema):
    """The welcome message."""

    message = ma.fields.String(
        required=True,
        metadata={
            "description": "A greeting naming the service.",
            "example": "Welcome to the PetSage API",
        },
    )


WELCOME = {"message": "Welcome to the PetSage API"}


@bp.route("/", methods=["GET"], tags=[TAG["name"]])
@bp.response(200, WelcomeResponseSchema, description="The service's greeting.")
@bp.doc(operationId="getWelcome", security=[])
def welcome() -> dict[str, str]:
    """Greet the caller

    Names the service, so a caller knows it reached PetSage.
    """
    return WELCOME
