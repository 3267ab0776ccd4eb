"""PetSage's flask-smorest ``Api``: errors as problem JSON, served and documented."""

import hashlib
import json
from http import HTTPStatus
from typing import Any

import flask
import flask_smorest
from apispec import BasePlugin
from flask.typing import ResponseReturnValue
from werkzeug.exceptions import HTTPException, default_exceptions

from petsage.errors import PROBLEM_MEDIA_TYPE, ProblemSchema, problem_response

# Every operation can answer these, whatever it does: they are documented on all.
STATUSES_OF_EVERY_OPERATION = (405, 500)
ALLOW_HEADER = {
    "description": "The methods the resource answers.",
    "schema": {"type": "string", "example": "GET, HEAD, OPTIONS"},
}


class ErrorResponsesPlugin(BasePlugin):
    """Adds the errors any route can answer to every documented operation."""

    def operation_helper(
        self,
        path: str | None = None,
        operations: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        """Document 405 and 500 on each operation that does not already."""
        for operation in (operations or {}).values():
            responses = operation.setdefault("responses", {})
            for status in STATUSES_OF_EVERY_OPERATION:
                responses.setdefault(str(status), HTTPStatus(status).name)


def problem_example(status: int) -> dict[str, Any]:
    """The problem PetSage answers for ``status``."""
    error = default_exceptions[status]()
    return {
        "type": "about:blank",
        "title": error.name,
        "status": status,
        "detail": error.description,
    }


class PetSageApi(flask_smorest.Api):  # type: ignore[misc]
    """flask-smorest's Api with RFC 9457 error bodies and a document built once."""

    ERROR_SCHEMA = ProblemSchema

    def __init__(self, app: flask.Flask, **kwargs: Any) -> None:
        self._document: tuple[bytes, str] | None = None
        spec_kwargs = {"extra_plugins": [ErrorResponsesPlugin()]}
        super().__init__(app, spec_kwargs=spec_kwargs, **kwargs)

    def handle_http_exception(self, error: HTTPException) -> Any:
        """Answer every HTTP error, unhandled exceptions included, with problem JSON."""
        return problem_response(error)

    def _register_responses(self) -> None:
        """Document the error responses as problem JSON, with the body for each."""
        super()._register_responses()
        for name, response in self.spec.components.responses_lazy.items():
            if "content" not in response:
                continue
            content = response["content"].pop(self.DEFAULT_RESPONSE_CONTENT_TYPE)
            response["content"][PROBLEM_MEDIA_TYPE] = content
            status = HTTPStatus.__members__.get(name)
            if status is not None and status.value in default_exceptions:
                content["example"] = problem_example(status.value)
            if status == HTTPStatus.METHOD_NOT_ALLOWED:
                response["headers"] = {"Allow": ALLOW_HEADER}

    def _register_pagination_header(self) -> None:
        """Leave flask-smorest's pagination header out: no PetSage operation pages."""

    def _openapi_json(self) -> ResponseReturnValue:
        """Serve the document, built at the first request, with an ETag for 304s."""
        if self._document is None:
            body = json.dumps(self.spec.to_dict(), indent=2).encode() + b"\n"
            self._document = (body, hashlib.sha256(body).hexdigest()[:32])
        body, etag = self._document
        response = flask.current_app.response_class(body, mimetype="application/json")
        response.set_etag(etag)
        # Clients may keep it, but must revalidate: a deploy can change it.
        response.headers["Cache-Control"] = "no-cache"
        return response.make_conditional(flask.request)
