"""Input checks shared by every entry point; each failure names the field and the fix.

Nothing is written before these pass, so a bad input can never leave half a turn.
"""

from __future__ import annotations

import re
import uuid

from shared.errors import ContentTooLarge, InvalidInput

# A Redis stream entry id (what events are numbered with), optionally as the "-final"
# id a client was given when Postgres supplied the end of a stream.
_EVENT_ID = re.compile(r"^(\d{1,20})-(\d{1,20})(-final)?$")
_STREAM_ID_MAX = 2**64 - 1

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
    m = _EVENT_ID.fullmatch(value) if isinstance(value, str) else None
    if m is None or max(int(m.group(1)), int(m.group(2))) > _STREAM_ID_MAX:
        raise InvalidInput(
            "last_event_id", "must be an event id this stream sent, e.g. 1732450000000-0"
        )
    return f"{m.group(1)}-{m.group(2)}"
