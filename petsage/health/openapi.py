"""The health endpoints in the OpenAPI document, with their schemas and examples."""

from typing import Any

import marshmallow as ma
from apispec import APISpec
from werkzeug.routing import Map, Rule

from petsage.errors import PROBLEM_MEDIA_TYPE, ProblemSchema
from petsage.health.endpoints import HEALTH_MEDIA_TYPE
from petsage.health.state import Health

TAG = {
    "name": "Health",
    "description": "Liveness, readiness, the health document and metrics: for load"
    " balancers, the kubelet, deploy pipelines, dashboards and Prometheus. Answers come"
    " from state cached in memory; no check runs inside a request.",
}

# The health token as OpenAPI's bearer scheme, so Swagger UI offers Authorize and a
# generated client can send it.
TOKEN_SCHEME_NAME = "healthToken"  # nosec B105: the scheme's name, not a secret
TOKEN_SCHEME = {
    "type": "http",
    "scheme": "bearer",
    "description": "The health token, PETSAGE_HEALTH_TOKEN, sent as `Authorization:"
    " Bearer <token>`. It shows check details and `?verbose` on the health endpoints,"
    " and opens /metrics where a token restricts it. With no token configured,"
    " nothing accepts it and sending one changes nothing.",
}
# Anyone may call; the token, where one is configured, adds details.
TOKEN_OPTIONAL: list[dict[str, list[str]]] = [{}, {TOKEN_SCHEME_NAME: []}]
TOKEN_REQUIRED: list[dict[str, list[str]]] = [{TOKEN_SCHEME_NAME: []}]
# Who sees what is the same on every health endpoint; the status never depends on it.
WHO_SEES_DETAILS = (
    " Security: public; the status code never depends on the caller. With the health"
    " token (PETSAGE_HEALTH_TOKEN) set and sent, the answer adds details; on the"
    " management listener (PETSAGE_MANAGEMENT_BIND) callers connecting from"
    " PETSAGE_TRUSTED_NETWORKS get them without it (a forwarded address never counts)."
)

STATUS = ma.fields.String(
    required=True,
    validate=ma.validate.OneOf(["pass", "warn", "fail"]),
    metadata={
        "description": "pass or warn: healthy (HTTP 200); fail: unhealthy (HTTP 503).",
        "example": "pass",
    },
)


class ProbeStatusSchema(ma.Schema):
    """A probe's verdict (IETF draft-inadarei-api-health-check)."""

    status = STATUS
    output = ma.fields.String(
        metadata={
            "description": "Why the status is not pass, item by item; only for callers"
            " with the health token.",
            "example": "shutdown: draining",
        }
    )


class HealthCheckSchema(ma.Schema):
    """One check's latest result."""

    componentId = ma.fields.String(  # noqa: N815 (IETF member name)
        required=True, metadata={"description": "The check's name.", "example": "db"}
    )
    componentType = ma.fields.String(  # noqa: N815
        required=True,
        metadata={
            "description": "system, datastore or component.",
            "example": "system",
        },
    )
    critical = ma.fields.Boolean(
        required=True,
        metadata={"description": "Whether its failure fails readiness (else warns)."},
    )
    observedValue = ma.fields.Raw(  # noqa: N815
        metadata={"description": "What the check measured.", "example": 3.2}
    )
    observedUnit = ma.fields.String(  # noqa: N815
        metadata={"description": "The unit of observedValue.", "example": "ms"}
    )
    status = STATUS
    time = ma.fields.String(
        metadata={
            "description": "When the result was observed (ISO 8601).",
            "example": "2026-11-25T19:00:00.000+00:00",
        }
    )
    durationMs = ma.fields.Float(  # noqa: N815
        metadata={"description": "How long the check took, in milliseconds."}
    )
    consecutiveFailures = ma.fields.Integer(  # noqa: N815
        metadata={"description": "Results in a row that were not pass."}
    )
    output = ma.fields.String(
        metadata={"description": "Why the check did not pass.", "example": "HTTP 503"}
    )
    links = ma.fields.Dict(
        keys=ma.fields.String(),
        values=ma.fields.String(),
        metadata={"description": "about: where the check looks, without credentials."},
    )


class HealthSchema(ma.Schema):
    """The health document (IETF draft-inadarei-api-health-check)."""

    status = STATUS
    version = ma.fields.String(
        required=True,
        metadata={"description": "The API's public major version.", "example": "1"},
    )
    releaseId = ma.fields.String(  # noqa: N815
        required=True,
        metadata={
            "description": "The release this instance runs (PETSAGE_RELEASE_ID).",
            "example": "1.0.0",
        },
    )
    serviceId = ma.fields.String(  # noqa: N815
        required=True,
        metadata={"description": "The service.", "example": "petsage-backend"},
    )
    description = ma.fields.String(
        required=True,
        metadata={
            "description": "What the service is.",
            "example": "PetSage Backend API",
        },
    )
    output = ma.fields.String(
        metadata={"description": "Why the status is not pass; with the health token."}
    )
    checks = ma.fields.Dict(
        keys=ma.fields.String(),
        values=ma.fields.List(ma.fields.Nested(HealthCheckSchema)),
        metadata={
            "description": "Checks keyed component:measurement; with the health token.",
        },
    )


class UnknownItemsProblemSchema(ProblemSchema):
    """A problem naming the probe items asked for that the probe does not have, and
    listing those it has."""

    # Not named unknown in Python: that is marshmallow's own Schema attribute.
    unknown_items = ma.fields.List(
        ma.fields.String(),
        data_key="unknown",
        metadata={
            "description": "The items asked for (in the path, or with exclude) that"
            " the probe does not have.",
            "example": ["db2"],
        },
    )
    known = ma.fields.List(
        ma.fields.String(),
        metadata={
            "description": "The items the probe has, by name.",
            "example": ["db", "refresher", "shutdown", "startup", "uptime"],
        },
    )


UNKNOWN_ITEMS_EXAMPLE = {
    "type": "about:blank",
    "title": "Not Found",
    "status": 404,
    "detail": "/readyz has no item 'db2'; its items are db, refresher, shutdown,"
    " startup, uptime.",
    "unknown": ["db2"],
    "known": ["db", "refresher", "shutdown", "startup", "uptime"],
}
# A probe's 400: a parameter it does not take, or an item it does not have.
PROBE_BAD_REQUEST = {
    "description": "A query parameter other than verbose and exclude, verbose with a"
    " value other than true, or exclude naming an item the probe does not have: then"
    " the problem names it in unknown and lists the probe's items in known.",
    "content": {
        PROBLEM_MEDIA_TYPE: {
            "schema": UnknownItemsProblemSchema,
            "example": {
                **UNKNOWN_ITEMS_EXAMPLE,
                "title": "Bad Request",
                "status": 400,
                "detail": "exclude names an item /readyz does not have: 'db2'; its"
                " items are db, refresher, shutdown, startup, uptime.",
            },
        }
    },
}
UNKNOWN_ITEM = {
    "description": "The probe has no item by that name: the problem names it in"
    " unknown and lists the probe's items in known.",
    "content": {
        PROBLEM_MEDIA_TYPE: {
            "schema": UnknownItemsProblemSchema,
            "example": UNKNOWN_ITEMS_EXAMPLE,
        }
    },
}

VERBOSE = {
    "name": "verbose",
    "in": "query",
    "required": False,
    "allowEmptyValue": True,
    "schema": {"type": "string", "enum": ["", "true"]},
    "description": "With the health token: answer text/plain, one line per item,"
    " [+]name ok, [!]name warn: why, or [-]name failed: why. Without it the"
    " parameter is ignored.",
}


def exclude_parameter(items: list[str]) -> dict[str, Any]:
    """``?exclude=<item>``, repeatable, for a probe with ``items``."""
    return {
        "name": "exclude",
        "in": "query",
        "required": False,
        "schema": {"type": "array", "items": {"type": "string", "enum": items}},
        "style": "form",
        "explode": True,
        "description": "Items to leave out of the verdict; an unknown name is a 400"
        " problem that names it and lists the items.",
    }


def item_parameter(items: list[str]) -> dict[str, Any]:
    """The ``{check}`` path parameter of a probe with ``items``."""
    return {
        "name": "check",
        "in": "path",
        "required": True,
        "schema": {"type": "string", "enum": items},
        "description": "One item of the probe; an unknown name is a 404 problem that"
        " lists the items.",
    }


NO_STORE = {
    "Cache-Control": {
        "description": "Always no-store: a probe answer must never be cached.",
        "schema": {"type": "string", "example": "no-store"},
    }
}
RETRY_AFTER = {
    "Retry-After": {
        "description": "Seconds after which the answer may have changed.",
        "schema": {"type": "integer", "example": 5},
    }
}
HEALTH_EXAMPLE = {
    "status": "pass",
    "version": "1",
    "releaseId": "1.0.0",
    "serviceId": "petsage-backend",
    "description": "PetSage Backend API",
}
VERBOSE_EXAMPLE = "[+]startup ok\n[-]shutdown failed: draining\nreadyz check failed\n"


def probe_operation(
    operation_id: str, summary: str, description: str
) -> dict[str, Any]:
    """A GET operation answering a ProbeStatus, or text with ?verbose."""

    def content(example: dict[str, str]) -> dict[str, Any]:
        return {
            HEALTH_MEDIA_TYPE: {"schema": ProbeStatusSchema, "example": example},
            "text/plain": {"schema": {"type": "string"}, "example": VERBOSE_EXAMPLE},
        }

    return {
        "tags": [TAG["name"]],
        "operationId": operation_id,
        "summary": summary,
        "description": description + WHO_SEES_DETAILS,
        "security": TOKEN_OPTIONAL,
        "responses": {
            "200": {
                "description": "pass or warn.",
                "headers": NO_STORE,
                "content": content({"status": "pass"}),
            },
            "503": {
                "description": "fail.",
                "headers": {**NO_STORE, **RETRY_AFTER},
                "content": content({"status": "fail"}),
            },
            "400": "BAD_REQUEST",
            "default": "DEFAULT_ERROR",
        },
    }


def document_health(spec: APISpec, health: Health) -> None:
    """Add the health endpoints of ``health`` to ``spec``, and the token's scheme."""
    spec.components.security_scheme(TOKEN_SCHEME_NAME, TOKEN_SCHEME)
    items = {
        "livez": sorted(health.liveness().names),
        "readyz": sorted(health.readiness().names),
    }
    for probe, operation_id, summary, description in (
        (
            "livez",
            "getLiveness",
            "Liveness: is the process fit to keep running?",
            "No I/O and no dependency checks: fails only when the process itself is"
            " broken (an application-set broken state, or its check refresher wedged)."
            " For livenessProbe and startupProbe.",
        ),
        (
            "readyz",
            "getReadiness",
            "Readiness: should this instance get traffic?",
            "Fails while starting, from the moment draining begins, when a critical"
            " check fails, and when the cached check results are stale. A failing"
            " non-critical check only warns. For readinessProbe and load balancers.",
        ),
    ):
        operation = probe_operation(operation_id, summary, description)
        operation["parameters"] = [VERBOSE, exclude_parameter(items[probe])]
        operation["responses"]["400"] = PROBE_BAD_REQUEST
        add_path(spec, f"/{probe}", operation)
        item = probe_operation(
            operation_id + "Item",
            f"{summary.split(':')[0]} of one item",
            f"The verdict of one item of /{probe}; for an unknown name, a 404"
            " problem that lists the items.",
        )
        item["parameters"] = [VERBOSE]
        item["responses"]["404"] = UNKNOWN_ITEM
        add_path(spec, f"/{probe}/<check>", item, [item_parameter(items[probe])])
    add_path(
        spec,
        "/health",
        {
            "tags": [TAG["name"]],
            "operationId": "getHealth",
            "summary": "The health document",
            "description": "Liveness and readiness together, with the release this"
            " instance runs; with the health token (Authorization: Bearer), every"
            " check's latest result." + WHO_SEES_DETAILS,
            "security": TOKEN_OPTIONAL,
            "responses": {
                "200": {
                    "description": "pass or warn.",
                    "headers": NO_STORE,
                    "content": {
                        HEALTH_MEDIA_TYPE: {
                            "schema": HealthSchema,
                            "example": HEALTH_EXAMPLE,
                        }
                    },
                },
                "503": {
                    "description": "fail.",
                    "headers": {**NO_STORE, **RETRY_AFTER},
                    "content": {
                        HEALTH_MEDIA_TYPE: {
                            "schema": HealthSchema,
                            "example": {**HEALTH_EXAMPLE, "status": "fail"},
                        }
                    },
                },
                "400": "BAD_REQUEST",
                "default": "DEFAULT_ERROR",
            },
        },
    )


def add_path(
    spec: APISpec,
    rule: str,
    operation: dict[str, Any],
    parameters: list[dict[str, Any]] | None = None,
) -> None:
    """Document a GET answered in front of Flask, as flask-smorest documents a route."""
    # flask-smorest's FlaskPlugin takes paths as Werkzeug rules, bound to a map.
    (flask_rule,) = Map([Rule(rule, defaults={})]).iter_rules()
    spec.path(
        rule=flask_rule, operations={"get": operation}, parameters=parameters or []
    )
