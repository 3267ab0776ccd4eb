"""Checking an HTTP response against an OpenAPI 3.0 document, with no library beyond
what PetSage installs, so that ``petsage smoke`` runs wherever PetSage does.

It covers what PetSage's document uses: ``$ref``, ``type``, ``nullable``, ``enum``,
``required``, ``properties``, ``additionalProperties``, ``items``, ``allOf``,
``anyOf`` and ``oneOf``.
"""

import json
from typing import Any

JSON_TYPES: dict[str, tuple[type, ...]] = {
    "object": (dict,),
    "array": (list,),
    "string": (str,),
    "integer": (int,),
    "number": (int, float),
    "boolean": (bool,),
}


def resolve(document: dict[str, Any], node: dict[str, Any]) -> dict[str, Any]:
    """``node``, or what its local ``$ref`` (``#/...``) points at."""
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


def schema_errors(
    document: dict[str, Any], schema: dict[str, Any], value: Any, where: str = "body"
) -> list[str]:
    """How ``value`` breaks ``schema``; empty when it conforms."""
    schema = resolve(document, schema)
    if value is None:
        return [] if schema.get("nullable") else [f"{where} is null"]
    errors: list[str] = []
    kind = schema.get("type")
    if kind is not None:
        expected = JSON_TYPES[kind]
        is_bool = isinstance(value, bool)
        if not isinstance(value, expected) or (is_bool and kind != "boolean"):
            return [f"{where} should be {kind}, not {type(value).__name__}"]
    if "enum" in schema and value not in schema["enum"]:
        errors.append(f"{where} is {value!r}, not one of {schema['enum']!r}")
    for sub in schema.get("allOf", []):
        errors += schema_errors(document, sub, value, where)
    for key in ("anyOf", "oneOf"):
        options = schema.get(key)
        if options and all(schema_errors(document, o, value, where) for o in options):
            errors.append(f"{where} matches none of its {key} schemas")
    if isinstance(value, dict):
        errors += object_errors(document, schema, value, where)
    if isinstance(value, list) and "items" in schema:
        for index, item in enumerate(value):
            errors += schema_errors(
                document, schema["items"], item, f"{where}[{index}]"
            )
    return errors


def object_errors(
    document: dict[str, Any], schema: dict[str, Any], value: dict[str, Any], where: str
) -> list[str]:
    """How an object breaks its schema's required, properties, additionalProperties."""
    errors = [
        f"{where}.{name} is missing"
        for name in schema.get("required", [])
        if name not in value
    ]
    properties = schema.get("properties", {})
    extra = schema.get("additionalProperties", True)
    for name, member in value.items():
        if name in properties:
            errors += schema_errors(
                document, properties[name], member, f"{where}.{name}"
            )
        elif extra is False:
            errors.append(f"{where}.{name} is not allowed")
        elif isinstance(extra, dict):
            errors += schema_errors(document, extra, member, f"{where}.{name}")
    return errors


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
