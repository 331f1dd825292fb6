"""Structured logs: JSON lines with context fields, no content, no secrets."""

from __future__ import annotations

import asyncio
import io
import json
import logging
from collections.abc import Iterator
from typing import Any

import pytest

from shared.logging import (
    JsonFormatter,
    TextFormatter,
    bind_log_context,
    configure_logging,
    redact,
    set_log_context,
)
from shared.settings import Settings


@pytest.fixture
def captured() -> Iterator[io.StringIO]:
    root = logging.getLogger()
    saved = (list(root.handlers), root.level)
    stream = io.StringIO()
    configure_logging(Settings(log_format="json"), level="DEBUG", stream=stream)
    yield stream
    for h in list(root.handlers):
        root.removeHandler(h)
    for h in saved[0]:
        root.addHandler(h)
    root.setLevel(saved[1])


def lines(stream: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def test_a_line_is_json_with_standard_and_extra_fields(captured: io.StringIO) -> None:
    logging.getLogger("turnq.test").info(
        "turn %s", "finished", extra={"turn_id": "t-1", "session_id": "s-1", "n": 3}
    )
    (line,) = lines(captured)
    assert line["message"] == "turn finished"
    assert line["level"] == "INFO" and line["logger"] == "turnq.test"
    assert line["ts"].endswith("Z") and "T" in line["ts"]
    assert (line["turn_id"], line["session_id"], line["n"]) == ("t-1", "s-1", 3)
    assert isinstance(line["pid"], int) and line["host"]


def test_bound_context_reaches_every_record_and_is_task_local(captured: io.StringIO) -> None:
    log = logging.getLogger("turnq.test")

    async def task(sid: str) -> None:
        with bind_log_context(session_id=sid, task_name="turnq.drain"):
            await asyncio.sleep(0)
            set_log_context(turn_id=f"turn-of-{sid}")
            await asyncio.sleep(0)
            log.info("inside")

    async def both() -> None:
        await asyncio.gather(task("a"), task("b"))

    asyncio.run(both())
    log.info("outside")
    inside = [line for line in lines(captured) if line["message"] == "inside"]
    assert sorted((x["session_id"], x["turn_id"]) for x in inside) == [
        ("a", "turn-of-a"),
        ("b", "turn-of-b"),
    ]
    outside = next(line for line in lines(captured) if line["message"] == "outside")
    assert "session_id" not in outside and "turn_id" not in outside


def test_content_fields_are_masked_unless_log_content(captured: io.StringIO) -> None:
    marker = "SECRET-CONTENT-1234"
    logging.getLogger("x").info(
        "model said", extra={"output": marker, "data": {"content": marker, "id": "i1"}}
    )
    text = captured.getvalue()
    assert marker not in text
    line = lines(captured)[0]
    assert line["output"] == f"<{len(marker)} redacted>" and line["data"]["id"] == "i1"

    record = logging.LogRecord("x", logging.INFO, __file__, 1, "m", None, None)
    record.output = marker
    assert marker in JsonFormatter(log_content=True).format(record)
    assert marker not in TextFormatter().format(record)


def test_content_loggers_are_held_at_info(captured: io.StringIO) -> None:
    logging.getLogger("openai").debug("Request options: {'json_data': 'user text'}")
    logging.getLogger("httpx").debug("request body")
    logging.getLogger("turnq.mine").debug("debug stays on for turnq")
    assert [line["logger"] for line in lines(captured)] == ["turnq.mine"]


@pytest.mark.parametrize(
    ("raw", "leak"),
    [
        ("redis://:hunter2pw@redis:6379/0", "hunter2pw"),
        ("postgresql+psycopg://turnq:pgpass99@db/turnq", "pgpass99"),
        ("key sk-proj-abcdefghijklmnop1234 used", "abcdefghijklmnop1234"),
        ("Authorization: Bearer eyJhbGciOiJIUzI1NiJ9.payload", "eyJhbGciOiJIUzI1NiJ9"),
        ("tq_0123456789ab_" + "A" * 43, "A" * 43),
        ("password=topsecret1 user=x", "topsecret1"),
        ('{"api_key": "abc123xyz"}', "abc123xyz"),
    ],
)
def test_redact_masks_credentials(raw: str, leak: str) -> None:
    out = redact(raw)
    assert leak not in out
    assert "***" in out


def test_redaction_applies_to_messages_and_exceptions(captured: io.StringIO) -> None:
    log = logging.getLogger("x")
    log.warning("connecting to %s", "redis://:pw-in-url@host:6379")
    try:
        raise RuntimeError("failed: postgresql://u:pw-in-exc@db/x")
    except RuntimeError:
        log.exception("boom")
    text = captured.getvalue()
    assert "pw-in-url" not in text and "pw-in-exc" not in text
    assert lines(captured)[1]["exc"].startswith("Traceback")


def test_redaction_keeps_ordinary_text() -> None:
    text = "turn finished input_tokens=312 output_tokens=20 at http://127.0.0.1:8000/healthz"
    assert redact(text) == text
