"""Errors as RFC 9457 problem details (``application/problem+json``)."""

import json
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import marshmallow as ma
from flask import Response
from werkzeug.exceptions import HTTPException, NotFound

from petsage.wire import LISTENER_HEADER, MANAGEMENT_LISTENER

if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIEnvironment

PROBLEM_MEDIA_TYPE = "application/problem+json"
NOT_ON_THE_MANAGEMENT_LISTENER = (
    "Not served on the management listener (PETSAGE_MANAGEMENT_BIND); the API is on"
    " the public port (PETSAGE_BIND)."
)


class ProblemSchema(ma.Schema):
    """An RFC 9457 problem details object."""

    type = ma.fields.String(
        required=True,
        metadata={
            "description": "A URI reference that identifies the problem type;"
            " about:blank means the HTTP status says it all.",
            "example": "about:blank",
        },
    )
    title = ma.fields.String(
        required=True,
        metadata={
            "description": "The HTTP status phrase.",
            "example": "Method Not Allowed",
        },
    )
    status = ma.fields.Integer(
        required=True,
        metadata={"description": "The HTTP status code.", "example": 405},
    )
    detail = ma.fields.String(
        required=True,
        metadata={
            "description": "What went wrong, for a human; never internal details.",
            "example": "The method is not allowed for the requested URL.",
        },
    )
    errors = ma.fields.Dict(
        metadata={
            "description": "Validation errors by location and field, when the"
            " request's input was invalid.",
        },
    )


def problem_response(
    error: HTTPException, members: Mapping[str, Any] | None = None
) -> Response:
    """Render an HTTP error as problem JSON, keeping headers such as Allow; with
    ``members``, the problem's extension members (RFC 9457, section 3.2).

    Werkzeug's descriptions are fixed texts, so a 500 made from an unhandled exception
    says nothing about that exception.
    """
    status = error.code or 500
    problem: dict[str, Any] = {
        "type": "about:blank",
        "title": error.name,
        "status": status,
        "detail": error.description,
    }
    # flask-smorest's abort and webargs' validation put their details in error.data.
    data = getattr(error, "data", None) or {}
    if "message" in data:
        problem["detail"] = str(data["message"])
    if "messages" in data:
        problem["errors"] = data["messages"]
    problem.update(members or {})
    headers = [
        (name, value)
        for name, value in error.get_headers()
        if name.lower() != "content-type"
    ]
    # webargs passes headers=None when its error has none to add.
    headers.extend((data.get("headers") or {}).items())
    # Built without an app context: the health endpoints in front of Flask use it too.
    return Response(
        json.dumps(problem, separators=(",", ":")) + "\n",
        status,
        headers=headers,
        mimetype=PROBLEM_MEDIA_TYPE,
    )


def not_found(environ: "WSGIEnvironment", start_response: "StartResponse") -> Any:
    """Everything the management listener does not serve: a 404 problem that says
    where the API is, with a header that names the listener."""
    response = problem_response(NotFound(NOT_ON_THE_MANAGEMENT_LISTENER))
    response.headers[LISTENER_HEADER] = MANAGEMENT_LISTENER
    return response(environ, start_response)
