"""The smoke test's response schema, as the original specification gives it."""

import marshmallow as ma


class SmokeTestResponseSchema(ma.Schema):
    """The body of a successful smoke test."""

    status = ma.fields.String(
        required=True,
        metadata={
            "description": "The operational status of the service.",
            "example": "ok",
        },
    )
    message = ma.fields.String(
        required=True,
        metadata={
            "description": "A confirmation message indicating the test passed.",
            "example": "PetSage smoke test successful!",
        },
    )
