"""PetSage's flask-smorest ``Api``: errors as problem JSON, documented as such."""

from typing import Any

import flask_smorest
from werkzeug.exceptions import HTTPException

from petsage.errors import PROBLEM_MEDIA_TYPE, ProblemSchema, problem_response


class PetSageApi(flask_smorest.Api):  # type: ignore[misc]
    """flask-smorest's Api with RFC 9457 error bodies, served and documented."""

    ERROR_SCHEMA = ProblemSchema

    def handle_http_exception(self, error: HTTPException) -> Any:
        """Answer every HTTP error, unhandled exceptions included, with problem JSON."""
        return problem_response(error)

    def _register_responses(self) -> None:
        """Document the error responses under ``application/problem+json``."""
        super()._register_responses()
        responses = self.spec.components.responses_lazy
        for response in responses.values():
            if "content" in response:
                schema = response["content"].pop(self.DEFAULT_RESPONSE_CONTENT_TYPE)
                response["content"][PROBLEM_MEDIA_TYPE] = schema

    def _register_pagination_header(self) -> None:
        """Leave flask-smorest's pagination header out: no PetSage operation pages."""
