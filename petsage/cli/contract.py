"""Checking an HTTP response against an OpenAPI 3.0 document, for ``petsage smoke``.

A response's status and media type are looked up here; its body is checked against
the whole schema, every keyword OpenAPI 3.0 gives a schema (``format``, ``pattern``,
``minLength``, ``minimum``, ``maxItems`` as much as ``type``, ``nullable`` and
``$ref``), by openapi-schema-validator, the python-openapi project's validator of
OpenAPI schemas. It comes with the ``smoke`` extra: ``petsage smoke`` refuses to run
without it (``validator_missing``), and only this module imports it, when it checks a
body, so the service never loads it.
"""

import json
from collections.abc import Iterable
from typing import Any

# What to install for ``petsage smoke``: PetSage with its ``smoke`` extra (setup.cfg).
SMOKE_EXTRA = "petsage-backend[smoke]"
# A problem quotes the value it found: enough to see it, not a whole body.
LONGEST_PROBLEM = 300


def validator_missing() -> str | None:
    """Why bodies cannot be checked here (one line naming what to install), or None
    when the ``smoke`` extra is installed."""
    try:
        import openapi_schema_validator  # noqa: F401
    except ImportError as error:
        return (
            f"petsage smoke checks responses with openapi-schema-validator, which"
            f" cannot be imported here ({error}): pip install '{SMOKE_EXTRA}'"
        )
    return None


def resolve(document: dict[str, Any], node: dict[str, Any]) -> dict[str, Any]:
    """``node``, or what its local ``$ref`` (``#/...``) points at: for the document's
    responses, which the schema validator does not read."""
    for _ in range(32):
        reference = node.get("$ref")
        if reference is None:
            return node
        if not reference.startswith("#/"):
            raise ValueError(f"only local references are followed: {reference}")
        target: Any = document
        for part in reference[2:].split("/"):
            target = target[part.replace("~1", "/").replace("~0", "~")]
        node = target
    raise ValueError("too many nested references")


def located(where: str, path: Iterable[str | int]) -> str:
    """``where`` followed by a path within it: ``body.tags[0]``."""
    for part in path:
        where += f"[{part}]" if isinstance(part, int) else f".{part}"
    return where


def shortened(problem: str) -> str:
    """``problem`` cut to LONGEST_PROBLEM characters."""
    if len(problem) <= LONGEST_PROBLEM:
        return problem
    return problem[: LONGEST_PROBLEM - 1] + "…"


def schema_errors(
    document: dict[str, Any], schema: dict[str, Any], value: Any, where: str = "body"
) -> list[str]:
    """How ``value`` breaks ``schema``, one problem per line, each naming where in
    ``value`` (``body.status: 'x' is not one of ['ok']``); empty when it conforms.

    ``schema``'s ``$ref`` point into ``document``'s components. Checked as a client
    reads a response (OpenAPI's read context: a ``writeOnly`` property may not come),
    with every format the validator knows checked (``date-time``, ``date``,
    ``email``, ``uuid``, ``ipv4``, ``int32``...); one it does not know passes, as
    JSON Schema has it.
    """
    # Imported here, not with the module: the petsage command imports this module
    # for every subcommand, and only smoke needs the validator (validator_missing).
    from openapi_schema_validator import OAS30ReadValidator

    # The document's components beside the schema, where its "#/components/..."
    # references look for them.
    root = {**schema, "components": document.get("components", {})}
    try:
        OAS30ReadValidator.check_schema(root)
        validator = OAS30ReadValidator(
            root, format_checker=OAS30ReadValidator.FORMAT_CHECKER
        )
        errors = list(validator.iter_errors(value))
    except Exception as error:
        # The document is the service's: whatever the validator cannot make of its
        # schema (a keyword with a wrong value, a reference to nothing, an unknown
        # type) fails the check, not the command.
        detail = getattr(error, "message", None) or str(error).partition("\n")[0]
        return [shortened(f"{where}: the documented schema cannot be used: {detail}")]
    return [
        shortened(f"{located(where, error.absolute_path)}: {error.message}")
        for error in errors
    ]


def response_errors(
    document: dict[str, Any],
    path: str,
    status: int,
    content_type: str,
    body: bytes,
    method: str = "get",
) -> list[str]:
    """How a response to ``method path`` breaks the document: status, media, schema."""
    try:
        operation = document["paths"][path][method]
    except KeyError:
        return [f"{method.upper()} {path} is not in the OpenAPI document"]
    responses = operation.get("responses", {})
    documented = (
        responses.get(str(status))
        or responses.get(f"{str(status)[0]}XX")
        or responses.get("default")
    )
    if documented is None:
        return [f"status {status} is not documented for {method.upper()} {path}"]
    content = resolve(document, documented).get("content", {})
    media_type = content_type.split(";")[0].strip().lower()
    if not content:
        return []
    if media_type not in content:
        return [
            f"media type {media_type or 'none'} is not documented for {status};"
            f" expected one of {', '.join(sorted(content))}"
        ]
    schema = content[media_type].get("schema")
    if schema is None or not media_type.endswith("json"):
        return []
    try:
        value = json.loads(body)
    except ValueError:
        return [f"body is not JSON: {body[:80]!r}"]
    return schema_errors(document, schema, value)
