"""PetSage's flask-smorest ``Api``: errors as problem JSON, served and documented.

Each listener has a document of its own, describing what that listener answers and
nothing else: the public port serves its ``Api``'s at /openapi.json, through Flask; the
management listener serves another ``Api``'s there, through ``DocumentEndpoint``.
"""

import functools
import hashlib
import hmac
import json
from collections.abc import Callable, Iterable
from http import HTTPStatus
from typing import TYPE_CHECKING, Any

import flask
import flask_smorest
from apispec import APISpec, BasePlugin
from flask.typing import ResponseReturnValue
from werkzeug.datastructures import WWWAuthenticate
from werkzeug.exceptions import (
    HTTPException,
    MethodNotAllowed,
    Unauthorized,
    default_exceptions,
)
from werkzeug.wrappers import Response

from petsage.errors import PROBLEM_MEDIA_TYPE, ProblemSchema, problem_response
from petsage.methods import ROUTE_METHODS, allow, other_method_response

if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIApplication, WSGIEnvironment

DOCUMENT_PATH = "/openapi.json"
# flask-smorest's name for the pagination header's component, and the header as it
# is sent: JSON text (flask-smorest documents an object, which a client would read as
# OpenAPI's comma-separated form).
PAGINATION = "PAGINATION"
PAGINATION_HEADER = {
    "description": "The pages, as a JSON object: total (items), total_pages,"
    " first_page, last_page, page, previous_page and next_page (the last five"
    " when there are items; previous and next when there are such pages).",
    "schema": {
        "type": "string",
        "example": '{"total": 42, "total_pages": 3, "first_page": 1, "last_page": 3,'
        ' "page": 1, "next_page": 2}',
    },
}
# Every operation can answer these, whatever it does: they are documented on all.
STATUSES_OF_EVERY_OPERATION = (405, 500)
# An operation that reads a body can also find it malformed or too long
# (PETSAGE_MAX_BODY_BYTES).
STATUSES_OF_A_BODY = (400, 413)
ALLOW_HEADER = {
    "description": "The methods the resource answers.",
    "schema": {"type": "string", "example": allow(ROUTE_METHODS)},
}
# The API token (PETSAGE_API_TOKEN) as OpenAPI's bearer scheme, beside the health
# token's: every write of a feature's records requires it.
API_TOKEN_SCHEME_NAME = "apiToken"  # nosec B105: the scheme's name, not a secret
API_TOKEN_SCHEME = {
    "type": "http",
    "scheme": "bearer",
    "description": "The API token, PETSAGE_API_TOKEN, sent as `Authorization: Bearer"
    " <token>`. Every write (POST, PATCH, DELETE of a feature's records) requires it:"
    " without it, or with another, 401; with no token configured, writes are off and"
    " every write is a 401 saying so."
    " Reads are public. It is never the health token.",
}
API_TOKEN_REQUIRED: list[dict[str, list[str]]] = [{API_TOKEN_SCHEME_NAME: []}]
# What a refused write is told: messages, not secrets.
NO_API_TOKEN = (
    "Writes are off: this instance has no API token (PETSAGE_API_TOKEN is not set)."  # nosec B105
)
WRONG_API_TOKEN = (
    "This write needs the API token, sent as `Authorization: Bearer <token>`."  # nosec B105
)
CHALLENGE = WWWAuthenticate("bearer", {"realm": "petsage"})


class ErrorResponsesPlugin(BasePlugin):
    """Adds the errors any route can answer to every documented operation."""

    def operation_helper(
        self,
        path: str | None = None,
        operations: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        """Document 405 and 500 on each operation that does not already, and 400
        and 413 on each that reads a body."""
        for operation in (operations or {}).values():
            responses = operation.setdefault("responses", {})
            statuses: tuple[int, ...] = STATUSES_OF_EVERY_OPERATION
            if "requestBody" in operation:
                statuses += STATUSES_OF_A_BODY
            for status in statuses:
                responses.setdefault(str(status), HTTPStatus(status).name)


class PaginationHeaderPlugin(BasePlugin):
    """Documents flask-smorest's ``X-Pagination`` header once an operation pages: a
    document with none has none."""

    def init_spec(self, spec: APISpec) -> None:
        """Keep the spec, to register the header in."""
        self.spec = spec

    def operation_helper(
        self,
        path: str | None = None,
        operations: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        """Register the header the first time an operation's response names it."""
        components = self.spec.components
        for operation in (operations or {}).values():
            for response in operation.get("responses", {}).values():
                headers = (
                    response.get("headers", {}) if isinstance(response, dict) else {}
                )
                if (
                    PAGINATION in headers.values()
                    and PAGINATION not in components.headers
                ):
                    components.header(PAGINATION, PAGINATION_HEADER)


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

    def __init__(
        self,
        app: flask.Flask,
        spec_kwargs: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        self._document: tuple[bytes, str] | None = None
        spec_kwargs = {
            **(spec_kwargs or {}),
            "extra_plugins": [ErrorResponsesPlugin(), PaginationHeaderPlugin()],
        }
        super().__init__(app, spec_kwargs=spec_kwargs, **kwargs)

    def handle_http_exception(self, error: HTTPException) -> Any:
        """Answer every HTTP error, unhandled exceptions included, with problem JSON."""
        response = problem_response(error)
        if isinstance(error, MethodNotAllowed) and error.valid_methods:
            # Werkzeug's routing lists a route's methods in a set's order.
            response.headers["Allow"] = allow(error.valid_methods)
        return response

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
        """Leave the pagination header to ``PaginationHeaderPlugin``: flask-smorest's
        registers its schema in every document, paging or not."""

    def document_response(self, environ: "WSGIEnvironment") -> Response:
        """The document, built at the first request, with an ETag for 304s."""
        if self._document is None:
            body = json.dumps(self.spec.to_dict(), indent=2).encode() + b"\n"
            self._document = (body, hashlib.sha256(body).hexdigest()[:32])
        body, etag = self._document
        response = flask.Response(body, mimetype="application/json")
        response.set_etag(etag)
        # Clients may keep it, but must revalidate: a deploy can change it.
        response.headers["Cache-Control"] = "no-cache"
        return response.make_conditional(environ)

    def _openapi_json(self) -> ResponseReturnValue:
        """Serve the document on the public port."""
        return self.document_response(flask.request.environ)


class DocumentEndpoint:
    """WSGI middleware: answers /openapi.json with ``api``'s document, passes the rest
    on; the management listener's document, served without Flask."""

    def __init__(self, app: "WSGIApplication", api: PetSageApi) -> None:
        self.app = app
        self.api = api

    def __call__(
        self, environ: "WSGIEnvironment", start_response: "StartResponse"
    ) -> Iterable[bytes]:
        if environ.get("PATH_INFO") != DOCUMENT_PATH:
            return self.app(environ, start_response)
        response = other_method_response(environ) or self.api.document_response(environ)
        return response(environ, start_response)


def check_api_token() -> None:
    """Let a write through only with the API token, compared in constant time: any
    other request is a 401 problem. While the instance has no token, writes are off:
    the 401's detail says so (no credential can be right). Never a 5xx: nothing is
    down, and a 5xx would page operators and invite clients to retry; never a status
    of its own, which would make the caller's credentials matter when none can."""
    expected: str = flask.current_app.config["API_TOKEN"]
    authorization = flask.request.authorization
    given = authorization.token if authorization is not None else None
    if not expected:
        raise Unauthorized(NO_API_TOKEN, www_authenticate=CHALLENGE)
    if (
        authorization is None
        or authorization.type != "bearer"
        or given is None
        or not hmac.compare_digest(given.encode(), expected.encode())
    ):
        raise Unauthorized(WRONG_API_TOKEN, www_authenticate=CHALLENGE)


def register_api_token_scheme(state: flask.blueprints.BlueprintSetupState) -> None:
    """Put the API token's scheme in the document of the app ``state`` names, once."""
    api: PetSageApi = state.app.extensions["flask-smorest"]["apis"][""]["ext_obj"]
    if API_TOKEN_SCHEME_NAME not in api.spec.components.security_schemes:
        api.spec.components.security_scheme(API_TOKEN_SCHEME_NAME, API_TOKEN_SCHEME)


View = Callable[..., Any]


def writes_need_the_api_token(
    blueprint: flask_smorest.Blueprint,
) -> Callable[[View], View]:
    """A decorator for a view of ``blueprint`` that writes: the API token checked
    before anything else (the body is not read without it), and documented: the
    security requirement and the 401. Put it right under ``@blueprint.route``."""
    blueprint.record_once(register_api_token_scheme)

    def decorate(view: View) -> View:
        @functools.wraps(view)
        def checked(*args: Any, **kwargs: Any) -> Any:
            check_api_token()
            return view(*args, **kwargs)

        documented = blueprint.alt_response(
            401,
            response="UNAUTHORIZED",
            description="No API token, or another; or none is configured, and"
            " writes are off (the detail says which).",
        )(checked)
        result: View = blueprint.doc(security=API_TOKEN_REQUIRED)(documented)
        return result

    return decorate
