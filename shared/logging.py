"""Structured logs: one JSON object a line, secrets redacted, message content left out.

    from shared.logging import configure_logging, bind_log_context
    configure_logging(get_settings(), level="INFO")       # workers/beat do it from Celery's
                                                          # setup_logging signal; the gateway
                                                          # calls it at start
    with bind_log_context(session_id=sid, task_id=tid):   # every record inside carries them
        log.info("turn finished", extra={"turn_id": tid, "status": "succeeded"})

A line::

    {"ts": "2026-11-24T10:00:00.123Z", "level": "INFO", "logger": "turnq.turns",
     "message": "turn finished", "pid": 4711, "host": "worker-1", "session_id": "...",
     "turn_id": "...", "task_name": "turnq.drain", "task_id": "...", "status": "succeeded"}

Fields: the standard ones above, then the bound context (``bind_log_context``), the
running Celery task (``task_name``/``task_id``, on the task's own thread) and any
``extra=`` fields.

Two rules hold for every line, JSON or text:

* **No message content** unless ``TURNQ_LOG_CONTENT=true`` (a debug setting): extra
  fields named like content (``content``, ``input``, ``output``, ``text``...) are
  replaced by their length, and the loggers of the OpenAI client, httpx and the
  Agents SDK, which dump request bodies at DEBUG, are held at INFO.  Code never puts
  content in a message string; task messages carry ids only (I10).
* **No secrets**: passwords in URLs (``redis://:pw@host``, ``postgresql://u:pw@h``),
  ``sk-...`` API keys, ``Bearer`` tokens, turnq API keys (``tq_<prefix>_<secret>``:
  the public prefix stays) and ``password=``/``api_key=`` pairs are masked in the
  final line, whatever produced it (a message, an exception, a Celery banner field).
"""

from __future__ import annotations

import contextlib
import contextvars
import json
import logging
import re
import socket
import sys
from collections.abc import Iterator, Mapping
from datetime import UTC, datetime
from typing import IO, Any

from shared.settings import Settings

_CONTEXT: contextvars.ContextVar[Mapping[str, Any] | None] = contextvars.ContextVar(
    "turnq_log_context", default=None
)

# Extra fields that would carry what users wrote or what the model answered.
CONTENT_FIELDS = frozenset(
    {
        "content",
        "input",
        "output",
        "text",
        "delta",
        "prompt",
        "instructions",
        "item",
        "items",
        "arguments",
        "summary",
        "final_output",
    }
)
# Loggers that log request/response bodies at DEBUG.
CONTENT_LOGGERS = ("openai", "httpx", "httpcore", "openai.agents")

_REDACTIONS: list[tuple[re.Pattern[str], str]] = [
    # scheme://user:password@host -> scheme://user:***@host (also redis://:password@host)
    (re.compile(r"(\b[a-zA-Z][a-zA-Z0-9+.\-]*://[^\s:/@\"'\\]*:)[^\s@/\"'\\]+(@)"), r"\1***\2"),
    (re.compile(r"\bsk-[A-Za-z0-9_\-]{8,}"), "sk-***"),
    (re.compile(r"\b(tq_[0-9a-f]{12}_)[A-Za-z0-9_\-]{20,}"), r"\1***"),
    (re.compile(r"(?i)\b(bearer\s+)[A-Za-z0-9._~+/=\-]{8,}"), r"\1***"),
    (
        re.compile(
            r"(?i)\b(password|passwd|pwd|api[_-]?key|secret|access[_-]?token)"
            r"(\\?[\"']?\s*[:=]\s*\\?[\"']?)[^\s\"'\\&,;}]+"
        ),
        r"\1\2***",
    ),
]

_STANDARD = frozenset(
    {
        *vars(logging.LogRecord("", 0, "", 0, "", None, None)).keys(),
        "message",
        "asctime",
        "taskName",
    }
)
_HOST = socket.gethostname()


def redact(text: str) -> str:
    """Mask anything that looks like a credential (see the module docstring)."""
    for pattern, replacement in _REDACTIONS:
        text = pattern.sub(replacement, text)
    return text


@contextlib.contextmanager
def bind_log_context(**fields: Any) -> Iterator[None]:
    """Add fields to every record logged inside (this thread / asyncio task only)."""
    token = _CONTEXT.set({**(_CONTEXT.get() or {}), **fields})
    try:
        yield
    finally:
        _CONTEXT.reset(token)


def set_log_context(**fields: Any) -> None:
    """Like ``bind_log_context`` but until the current asyncio task (or thread) ends or
    the fields are set again; ``None`` removes a field."""
    merged = {**(_CONTEXT.get() or {}), **fields}
    _CONTEXT.set({k: v for k, v in merged.items() if v is not None})


def log_context() -> Mapping[str, Any]:
    return _CONTEXT.get() or {}


class ContextFilter(logging.Filter):
    """Copies the bound context and the running Celery task onto the record, on the
    thread that logs it (a handler may format later or elsewhere)."""

    def filter(self, record: logging.LogRecord) -> bool:
        for key, value in log_context().items():
            if not hasattr(record, key):
                setattr(record, key, value)
        if not hasattr(record, "task_id"):
            task = _current_celery_task()
            if task is not None:
                record.task_id = task[0]
                record.task_name = task[1]
        return True


def _current_celery_task() -> tuple[str, str] | None:
    state = sys.modules.get("celery._state")
    if state is None:
        return None
    try:
        task = state.get_current_task()
        request_id = task.request.id if task is not None else None
    except Exception:  # logging must never fail because of this lookup
        return None
    if task is None or request_id is None:
        return None
    return str(request_id), str(task.name)


def _hide_content(value: Any, log_content: bool) -> Any:
    if log_content:
        return value
    if isinstance(value, dict):
        return {
            k: (_masked(v) if k in CONTENT_FIELDS else _hide_content(v, False))
            for k, v in value.items()
        }
    return value


def _masked(value: Any) -> str:
    size = len(value) if isinstance(value, str | list | dict | tuple) else 1
    return f"<{size} redacted>"


class JsonFormatter(logging.Formatter):
    def __init__(self, *, log_content: bool = False, static: Mapping[str, Any] | None = None):
        super().__init__()
        self.log_content = log_content
        self.static = dict(static or {})

    def format(self, record: logging.LogRecord) -> str:
        ts = datetime.fromtimestamp(record.created, UTC)
        out: dict[str, Any] = {
            "ts": ts.strftime("%Y-%m-%dT%H:%M:%S.") + f"{ts.microsecond // 1000:03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "pid": record.process,
            "host": _HOST,
            **self.static,
        }
        for key, value in record.__dict__.items():
            if key in _STANDARD or key.startswith("_") or key in out:
                continue
            out[key] = (
                _masked(value)
                if key in CONTENT_FIELDS and not self.log_content
                else _hide_content(value, self.log_content)
            )
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        elif record.exc_text:
            out["exc"] = record.exc_text
        if record.stack_info:
            out["stack"] = self.formatStack(record.stack_info)
        return redact(json.dumps(out, ensure_ascii=False, default=str))


class TextFormatter(logging.Formatter):
    """Human-readable lines (``TURNQ_LOG_FORMAT=text``), with the same two rules."""

    def __init__(self, *, log_content: bool = False) -> None:
        super().__init__("[%(asctime)s: %(levelname)s/%(processName)s] %(name)s: %(message)s")
        self.log_content = log_content

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        fields = {
            k: v for k, v in record.__dict__.items() if k not in _STANDARD and not k.startswith("_")
        }
        if fields:
            shown = {
                k: (_masked(v) if k in CONTENT_FIELDS and not self.log_content else v)
                for k, v in fields.items()
            }
            line += " " + " ".join(f"{k}={v}" for k, v in shown.items())
        return redact(line)


def configure_logging(
    settings: Settings,
    level: int | str = logging.INFO,
    *,
    stream: IO[str] | None = None,
    logfile: str | None = None,
    static: Mapping[str, Any] | None = None,
) -> logging.Handler:
    """Replace the root logger's handlers with one structured handler; returns it."""
    handler: logging.Handler = (
        logging.FileHandler(logfile, encoding="utf-8")
        if logfile
        else logging.StreamHandler(stream or sys.stderr)
    )
    formatter: logging.Formatter = (
        JsonFormatter(log_content=settings.log_content, static=static)
        if settings.log_format == "json"
        else TextFormatter(log_content=settings.log_content)
    )
    handler.setFormatter(formatter)
    handler.addFilter(ContextFilter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
    if not settings.log_content:
        for name in CONTENT_LOGGERS:
            logger = logging.getLogger(name)
            if logger.getEffectiveLevel() < logging.INFO:
                logger.setLevel(logging.INFO)
    logging.captureWarnings(True)
    return handler
