"""Input checks shared by every entry point; each failure names the field and the fix.

Nothing is written before these pass, so a bad input can never leave half a turn.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import re
import uuid
from typing import Any

from shared.errors import ContentTooLarge, InvalidInput

# A Redis stream entry id (what events are numbered with), optionally as the "-final"
# id a client was given when Postgres supplied the end of a stream.  Up to 19 digits a
# part: every id the pattern (also the gateway's published schema) accepts is a valid
# Redis stream id (each part < 2**64), so a schema-valid id is never refused.
EVENT_ID = re.compile(r"^(\d{1,19})-(\d{1,19})(\.\d{1,9})?(-final)?$")

# Printable ids: letters, digits and a few separators; no whitespace, no control characters.
_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:@\-]*$")


def check_id(field: str, value: object, max_length: int) -> str:
    if not isinstance(value, str):
        raise InvalidInput(field, f"must be a string, got {type(value).__name__}")
    if not value:
        raise InvalidInput(field, "must not be empty")
    if len(value) > max_length:
        raise InvalidInput(field, f"must be at most {max_length} characters (got {len(value)})")
    if not _ID.match(value):
        raise InvalidInput(
            field,
            "may contain only letters, digits and . _ : @ - "
            "(and must start with a letter or digit)",
        )
    return value


def check_content(value: object, max_bytes: int) -> str:
    if not isinstance(value, str):
        raise InvalidInput("content", f"must be a string, got {type(value).__name__}")
    if "\x00" in value:
        raise InvalidInput("content", "must not contain NUL characters")
    try:
        size = len(value.encode("utf-8"))
    except UnicodeEncodeError as exc:
        raise InvalidInput("content", "is not valid Unicode (lone surrogate characters)") from exc
    if not value.strip():
        raise InvalidInput("content", "must not be empty or whitespace only")
    if size > max_bytes:
        raise ContentTooLarge("content", f"is {size} bytes; the limit is {max_bytes} bytes")
    return value


def check_optional_key(field: str, value: object, max_length: int) -> str | None:
    if value is None:
        return None
    return check_id(field, value, max_length)


def check_turn_id(value: object) -> str:
    if not isinstance(value, str):
        raise InvalidInput("turn_id", f"must be a string, got {type(value).__name__}")
    try:
        return str(uuid.UUID(value))
    except ValueError as exc:
        raise InvalidInput("turn_id", "must be a UUID") from exc


def check_event_id(value: object) -> str:
    """The stream id to read after, from an event id this API sent ("0-0": the start)."""
    m = EVENT_ID.fullmatch(value) if isinstance(value, str) else None
    if m is None:
        raise InvalidInput(
            "last_event_id", "must be an event id this stream sent, e.g. 1732450000000-0"
        )
    return f"{m.group(1)}-{m.group(2)}{m.group(3) or ''}"


# --- content parts (Responses-API input content) ----------------------------------------
PART_TYPES = ("input_text", "input_image", "input_file")
MAX_PARTS = 32
MAX_URL_CHARS = 4096
_PART_KEYS = {
    "input_text": {"type", "text"},
    "input_image": {"type", "image_url", "file_id", "detail"},
    "input_file": {"type", "file_data", "file_url", "file_id", "filename"},
}
_SOURCES = {
    "input_image": ("image_url", "file_id"),
    "input_file": ("file_data", "file_url", "file_id"),
}
_DATA_URL = re.compile(r"^data:([a-z0-9.+\-]+/[a-z0-9.+\-]+);base64,([A-Za-z0-9+/=\s]*)$", re.I)
_IMAGE_TYPES = frozenset({"image/png", "image/jpeg", "image/gif", "image/webp"})
_FILENAME = re.compile(r"^[^\x00-\x1f/\\]{1,255}$")


def check_message(
    value: object, max_text_bytes: int, max_attachment_bytes: int
) -> tuple[str, list[dict[str, Any]] | None]:
    """A message: a string, or a list of content parts.  Returns (its text, its parts or
    None).  Text rules (no NUL, valid Unicode, not blank, at most ``max_text_bytes``)
    apply to the text parts together; images and files together may take
    ``max_attachment_bytes`` (ContentTooLarge beyond)."""
    if isinstance(value, str):
        return check_content(value, max_text_bytes), None
    if not isinstance(value, list):
        raise InvalidInput(
            "content", f"must be a string or a list of content parts, got {type(value).__name__}"
        )
    if not 1 <= len(value) <= MAX_PARTS:
        raise InvalidInput("content", f"must have 1 to {MAX_PARTS} parts (got {len(value)})")
    parts = [_check_part(i, part) for i, part in enumerate(value)]
    texts = [p["text"] for p in parts if p["type"] == "input_text"]
    text = "\n".join(texts)
    if texts:
        size = len(text.encode("utf-8"))
        if size > max_text_bytes:
            raise ContentTooLarge(
                "content", f"its text parts are {size} bytes; the limit is {max_text_bytes} bytes"
            )
    attached = sum(len(json.dumps(p)) for p in parts if p["type"] != "input_text")
    if attached > max_attachment_bytes:
        raise ContentTooLarge(
            "content",
            f"its images and files are {attached} bytes; the limit is {max_attachment_bytes}",
        )
    if not text.strip() and not attached:
        raise InvalidInput("content", "must not be empty or whitespace only")
    return _summary(parts), parts


def _check_part(index: int, part: object) -> dict[str, Any]:
    where = f"content[{index}]"
    if not isinstance(part, dict):
        raise InvalidInput(where, f"must be an object, got {type(part).__name__}")
    kind = part.get("type")
    if not isinstance(kind, str) or kind not in _PART_KEYS:  # {"type": {}} is unhashable
        raise InvalidInput(f"{where}.type", f"must be one of {', '.join(PART_TYPES)}")
    unknown = sorted(str(k)[:40] for k in part if k not in _PART_KEYS[kind])
    if unknown:
        raise InvalidInput(where, f"unknown field(s) for {kind}: {', '.join(unknown[:5])}")
    if kind == "input_text":
        text = part.get("text")
        if not isinstance(text, str):
            raise InvalidInput(f"{where}.text", "must be a string")
        _check_text(f"{where}.text", text)
        return {"type": kind, "text": text}
    present = [k for k in _SOURCES[kind] if part.get(k) is not None]
    if len(present) != 1:
        raise InvalidInput(where, f"{kind} needs exactly one of {', '.join(_SOURCES[kind])}")
    source = present[0]
    checked: dict[str, Any] = {"type": kind, source: _check_source(where, kind, source, part)}
    if kind == "input_image" and part.get("detail") is not None:
        if part["detail"] not in ("auto", "low", "high"):
            raise InvalidInput(f"{where}.detail", "must be auto, low or high")
        checked["detail"] = part["detail"]
    if kind == "input_file" and part.get("filename") is not None:
        name = part["filename"]
        if not isinstance(name, str) or not _FILENAME.match(name):
            raise InvalidInput(f"{where}.filename", "must be 1-255 characters, no / \\ or controls")
        checked["filename"] = name
    return checked


def _check_source(where: str, kind: str, source: str, part: dict[str, Any]) -> str:
    value = part[source]
    field = f"{where}.{source}"
    if not isinstance(value, str) or not value:
        raise InvalidInput(field, "must be a non-empty string")
    if source == "file_id":
        return check_id(field, value, 256)
    if source == "file_data":
        _check_data_url(field, value, None)
        return value
    if value.startswith("data:"):
        _check_data_url(field, value, _IMAGE_TYPES if kind == "input_image" else None)
        return value
    if len(value) > MAX_URL_CHARS or not value.startswith("https://"):
        raise InvalidInput(
            field, f"must be an https:// URL (at most {MAX_URL_CHARS} characters) or a data: URL"
        )
    if any(c.isspace() or ord(c) < 32 for c in value) or len(value) <= len("https://"):
        raise InvalidInput(field, "is not a valid URL (whitespace or control characters)")
    return value


def _check_data_url(field: str, value: str, allowed: frozenset[str] | None) -> None:
    m = _DATA_URL.match(value)
    if m is None:
        raise InvalidInput(field, "must be a base64 data URL: data:<type>/<subtype>;base64,<data>")
    if allowed is not None and m.group(1).lower() not in allowed:
        raise InvalidInput(field, f"images must be one of {', '.join(sorted(allowed))}")
    try:
        base64.b64decode("".join(m.group(2).split()), validate=True)
    except (binascii.Error, ValueError) as exc:
        raise InvalidInput(field, "is not valid base64") from exc


def _check_text(field: str, text: str) -> None:
    if "\x00" in text:
        raise InvalidInput(field, "must not contain NUL characters")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise InvalidInput(field, "is not valid Unicode (lone surrogate characters)") from exc


def _summary(parts: list[dict[str, Any]]) -> str:
    """The message as text, for people and logs-free displays: text parts, then a
    placeholder per image or file."""
    out = []
    for p in parts:
        if p["type"] == "input_text":
            out.append(p["text"])
        elif p["type"] == "input_image":
            out.append("[image]")
        else:
            out.append(f"[file: {p.get('filename') or 'attachment'}]")
    return "\n".join(out)


def check_metadata(value: object, max_bytes: int) -> dict[str, Any] | None:
    """Caller metadata: a JSON object of at most ``max_bytes`` (as JSON), nesting at most 8."""
    if value is None:
        return None
    if not isinstance(value, dict):
        raise InvalidInput("metadata", f"must be a JSON object, got {type(value).__name__}")
    _check_json("metadata", value, 0)
    size = len(json.dumps(value, ensure_ascii=False).encode("utf-8"))
    if size > max_bytes:
        raise ContentTooLarge("metadata", f"is {size} bytes as JSON; the limit is {max_bytes}")
    return value


def _check_json(field: str, value: object, depth: int) -> None:
    if depth > 8:
        raise InvalidInput(field, "nests deeper than 8 levels")
    if isinstance(value, dict):
        for k, v in value.items():
            if not isinstance(k, str):
                raise InvalidInput(field, "keys must be strings")
            _check_text(field, k)
            _check_json(field, v, depth + 1)
    elif isinstance(value, list):
        if len(value) > 1000:
            raise InvalidInput(field, "lists may hold at most 1000 values")
        for v in value:
            _check_json(field, v, depth + 1)
    elif isinstance(value, str):
        _check_text(field, value)
    elif isinstance(value, float) and not math.isfinite(value):
        raise InvalidInput(field, "numbers must be finite")
    elif value is not None and not isinstance(value, bool | int | float):
        raise InvalidInput(field, f"holds a {type(value).__name__}, which is not JSON")


def check_agent_name(value: object, max_length: int) -> str | None:
    """An agent name's shape (the registry then says whether the deployment has it)."""
    if value is None:
        return None
    if not isinstance(value, str) or not value.strip():
        raise InvalidInput("agent", "must be a non-empty string")
    if len(value) > max_length or any(ord(c) < 32 for c in value):
        raise InvalidInput("agent", f"must be at most {max_length} printable characters")
    _check_text("agent", value)
    return value


MAX_DECISIONS = 64


def check_decisions(value: object) -> list[tuple[str, bool, str | None]]:
    """Approval decisions: (call id, approve, message), 1 to 64, each call once."""
    if not isinstance(value, list) or not 1 <= len(value) <= MAX_DECISIONS:
        raise InvalidInput("decisions", f"must be a list of 1 to {MAX_DECISIONS} decisions")
    out: list[tuple[str, bool, str | None]] = []
    for i, d in enumerate(value):
        where = f"decisions[{i}]"
        if not isinstance(d, tuple | list) or len(d) != 3:
            raise InvalidInput(where, "must be (call_id, approve, message)")
        call_id, approve, message = d
        if not isinstance(call_id, str) or not 1 <= len(call_id) <= 256:
            raise InvalidInput(f"{where}.call_id", "must be a string of 1 to 256 characters")
        _check_text(f"{where}.call_id", call_id)
        if not isinstance(approve, bool):
            raise InvalidInput(f"{where}.approve", "must be true or false")
        if message is not None:
            if not isinstance(message, str) or len(message) > 4000:
                raise InvalidInput(f"{where}.message", "must be a string of at most 4000 chars")
            _check_text(f"{where}.message", message)
        out.append((call_id, approve, message))
    if len({c for c, _, _ in out}) != len(out):
        raise InvalidInput("decisions", "each call_id may be decided once per request")
    return out
