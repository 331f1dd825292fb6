"""The published JSON Schemas of a turn's content parts, metadata and agent name.

    patch_turn_create(openapi["components"]["schemas"], agent_names=registry.names)

``shared.validation`` decides what is accepted and says why not; these schemas say the
same in JSON Schema, so that what a schema-driven client (or Schemathesis) builds from
the OpenAPI is accepted, and what breaks it is refused.  The runtime models stay loose
(``str | list``, ``dict``) so that the refusals are ``shared.validation``'s, naming the
part.  Only sizes (bytes of text, of attachments, of metadata: 413) are left unsaid.
"""

from __future__ import annotations

from typing import Any

from producer.gateway.models import CONTENT_PATTERN, ID_PATTERN
from shared.validation import MAX_PARTS, MAX_URL_CHARS

NO_NUL = r"^[^\x00]*$"
METADATA_DEPTH = 8  # shared.validation: nesting deeper than 8 levels is refused


def _any_case(word: str) -> str:
    return "".join(f"[{c.upper()}{c.lower()}]" if c.isalpha() else c for c in word)


_B64 = r"\s*[A-Za-z0-9+/]"  # whitespace anywhere is dropped before decoding
_BASE64 = rf"(?:(?:{_B64}){{4}})*(?:(?:{_B64}){{2}}\s*=\s*=|(?:{_B64}){{3}}\s*=)?\s*"
_MEDIA = r"[A-Za-z0-9.+\-]+/[A-Za-z0-9.+\-]+"
_IMAGES = "|".join(_any_case(t) for t in ("image/gif", "image/jpeg", "image/png", "image/webp"))
HTTPS_URL = r"^https://[^\s\x00-\x1f]+$"


def _data_url(media: str) -> str:
    return rf"^data:(?:{media});{_any_case('base64')},{_BASE64}$"


def _string(pattern: str, **extra: Any) -> dict[str, Any]:
    return {"type": "string", "pattern": pattern, **extra}


def _url(*patterns: str) -> dict[str, Any]:
    return {"anyOf": [_string(p, maxLength=MAX_URL_CHARS) for p in patterns]}


def _nullable(schema: dict[str, Any]) -> dict[str, Any]:
    return {"anyOf": [schema, {"type": "null"}]}


def _part(kind: str, sources: dict[str, Any], **optional: Any) -> dict[str, Any]:
    """A part with exactly one non-null source (a null one counts as absent)."""
    return {
        "type": "object",
        "title": kind,
        "properties": {
            "type": {"const": kind},
            **{k: _nullable(v) for k, v in {**sources, **optional}.items()},
        },
        "required": ["type"],
        "additionalProperties": False,
        "oneOf": [{"required": [k], "properties": {k: {"type": "string"}}} for k in sources],
    }


FILE_ID = _string(ID_PATTERN, minLength=1, maxLength=256)
TEXT_PART = {
    "type": "object",
    "title": "input_text",
    "properties": {"type": {"const": "input_text"}, "text": _string(NO_NUL)},
    "required": ["type", "text"],
    "additionalProperties": False,
}
IMAGE_PART = _part(
    "input_image",
    {"image_url": _url(HTTPS_URL, _data_url(_IMAGES)), "file_id": FILE_ID},
    detail={"enum": ["auto", "low", "high"]},
)
FILE_PART = _part(
    "input_file",
    {
        "file_data": _url(_data_url(_MEDIA)),
        "file_url": _url(HTTPS_URL, _data_url(_MEDIA)),
        "file_id": FILE_ID,
    },
    filename=_string(r"^[^\x00-\x1f/\\]{1,255}$"),
)
CONTENT = {
    "anyOf": [
        _string(CONTENT_PATTERN, minLength=1),
        {
            "type": "array",
            "minItems": 1,
            "maxItems": MAX_PARTS,
            "items": {"oneOf": [TEXT_PART, IMAGE_PART, FILE_PART]},
            # Not all blank: some text part has a non-blank text, or there is an attachment.
            "contains": {
                "anyOf": [
                    {
                        "properties": {
                            "type": {"const": "input_text"},
                            "text": _string(CONTENT_PATTERN),
                        }
                    },
                    {"properties": {"type": {"enum": ["input_image", "input_file"]}}},
                ],
            },
        },
    ],
}


def metadata_schemas() -> dict[str, dict[str, Any]]:
    """``Metadata`` and the ``MetadataValue{n}`` it nests (JSON, no NUL, at most 8 deep)."""
    schemas: dict[str, dict[str, Any]] = {}
    for depth in range(METADATA_DEPTH, 0, -1):
        inner: dict[str, Any] | None = (
            {"$ref": f"#/components/schemas/MetadataValue{depth + 1}"}
            if depth < METADATA_DEPTH
            else None
        )
        array: dict[str, Any] = {"type": "array"} if inner else {"type": "array", "maxItems": 0}
        obj: dict[str, Any] = {"type": "object", "propertyNames": {"pattern": NO_NUL}}
        if inner is None:
            obj["maxProperties"] = 0
        else:
            array["items"], obj["additionalProperties"] = inner, inner
        schemas[f"MetadataValue{depth}"] = {
            "anyOf": [
                _string(NO_NUL),
                {"type": "number"},
                {"type": "boolean"},
                {"type": "null"},
                array,
                obj,
            ]
        }
    schemas["Metadata"] = {
        "type": "object",
        "description": "a JSON object for your tools (the run context's metadata): no NUL "
        "characters, nested at most 8 deep, lists of at most 1000 values, at most "
        "TURNQ_MAX_METADATA_BYTES as JSON (413 beyond)",
        "propertyNames": {"pattern": NO_NUL},
        "additionalProperties": {"$ref": "#/components/schemas/MetadataValue1"},
    }
    return schemas


def patch_turn_create(schemas: dict[str, Any], agent_names: list[str] | None) -> None:
    """Write the precise schemas into ``TurnCreate`` (and its ``Metadata`` components);
    ``agent_names``: the deployment's entry agents (None: unknown, any string)."""
    body = schemas.get("TurnCreate")
    if body is None:
        return
    props = body["properties"]
    props["content"] = {**CONTENT, "description": props["content"].get("description", "")}
    schemas.update(metadata_schemas())
    props["metadata"] = {
        "anyOf": [{"$ref": "#/components/schemas/Metadata"}, {"type": "null"}],
        "description": props["metadata"].get("description", ""),
    }
    if agent_names is not None:
        props["agent"] = {
            "anyOf": [{"enum": list(agent_names)}, {"type": "null"}],
            "description": props["agent"].get("description", ""),
        }
