"""What the store hands out: turns, sessions, a worker's claim, and the row mappers.

Rows come two ways and map through the same functions: plain SELECTs (columns) and the
turn functions of ``shared/sql`` (a turn as ``to_jsonb``, timestamps as ISO strings).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from shared.status import TERMINAL, ErrorCode, TurnStatus
from shared.tokens import ATTACHMENT_TOKENS, text_and_attachments

Item = dict[str, Any]


def estimate_tokens(item: object) -> int:
    """Cheap token estimate (~4 characters a token) until the model measures the context."""
    raw, attachments = text_and_attachments(item)  # an image is not its base64 text
    return max(1, len(raw) // 4) + attachments * ATTACHMENT_TOKENS


@dataclass(frozen=True)
class TurnRecord:
    id: str
    session_id: str
    seq: int
    status: TurnStatus
    input: str
    output: str | None
    error: str | None
    error_code: ErrorCode | None
    attempts: int
    usage: dict[str, Any] | None
    context_tokens: int | None
    idempotency_key: str | None
    queued_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    user_id: str
    session_key: str
    agent: str | None = None  # the agent that answered
    metadata: dict[str, Any] | None = None  # the caller's, given to tools in the run context
    content: list[Item] | None = None  # the message as content parts (None: ``input``)
    output_json: Any = None  # a structured final output
    entry_agent: str | None = None  # the session's
    active_agent: str | None = None  # the session's, when the turn was read
    pending_items: list[Item] | None = None  # a waiting turn's work so far (pending calls)
    run_state: dict[str, Any] | None = None  # a resumed turn's saved run (worker claims only)
    decisions: list[dict[str, Any]] | None = None  # and the decisions on its pending calls
    journal: list[dict[str, Any]] | None = None  # a re-run turn's journaled steps (claims only)

    @property
    def terminal(self) -> bool:
        return self.status in TERMINAL

    @property
    def message(self) -> str | list[Item]:
        """What the user sent: the text, or its content parts."""
        return self.content if self.content is not None else self.input


@dataclass(frozen=True)
class SessionRecord:
    id: str
    user_id: str
    key: str
    created_at: datetime
    updated_at: datetime
    turn_count: int
    item_count: int
    fence: int
    context_tokens: int
    transcript_tokens: int
    compaction_mark: int
    summary: str | None
    summary_tokens: int
    summary_items: list[Item] = field(default_factory=list)
    compacted_at: datetime | None = None
    compaction_count: int = 0
    entry_agent: str | None = None
    active_agent: str | None = None
    requests: int = 0
    input_tokens: int = 0
    cached_tokens: int = 0
    output_tokens: int = 0
    reasoning_tokens: int = 0


@dataclass(frozen=True)
class Context:
    """What the model sees: the summary (if any) and the items after the compaction mark."""

    summary: str | None
    items: list[Item]
    first_position: int
    summary_items: list[Item] = field(default_factory=list)


@dataclass(frozen=True)
class Claim:
    """A worker's hold on a session: its fence, the turn to run now (if any) with its context."""

    fence: int
    turn: TurnRecord | None
    context: Context | None
    gave_up: list[str] = field(default_factory=list)


TURN_COLUMNS = """
    t.id::text AS id, t.session_id::text AS session_id, t.seq, t.status, t.input, t.output,
    t.error, t.error_code, t.attempts, t.usage, t.context_tokens, t.idempotency_key,
    t.queued_at, t.started_at, t.finished_at, s.user_id, s.key AS session_key,
    t.agent, t.metadata, t.content, t.output_json, s.entry_agent, s.active_agent,
    t.pending_items
"""


def fields_of(row: Any) -> Mapping[str, Any]:
    """A result row as a mapping: SQLAlchemy rows and psycopg dict rows alike."""
    return row if isinstance(row, Mapping) else row._mapping


def _time(value: Any) -> Any:
    return datetime.fromisoformat(value) if isinstance(value, str) else value


def turn_of(row: Any) -> TurnRecord:
    m = fields_of(row)
    code = m.get("error_code")
    return TurnRecord(
        id=str(m["id"]),
        session_id=str(m["session_id"]),
        seq=m["seq"],
        status=TurnStatus(m["status"]),
        input=m["input"],
        output=m["output"],
        error=m["error"],
        error_code=ErrorCode(code) if code else None,
        attempts=m["attempts"],
        usage=m["usage"],
        context_tokens=m["context_tokens"],
        idempotency_key=m["idempotency_key"],
        queued_at=_time(m["queued_at"]),
        started_at=_time(m["started_at"]),
        finished_at=_time(m["finished_at"]),
        user_id=m["user_id"],
        session_key=m["session_key"],
        agent=m.get("agent"),
        metadata=m.get("metadata"),
        content=m.get("content"),
        output_json=m.get("output_json"),
        entry_agent=m.get("entry_agent"),
        active_agent=m.get("active_agent"),
        pending_items=m.get("pending_items"),
        run_state=m.get("run_state"),
        decisions=m.get("decisions"),
        journal=m.get("journal"),
    )


_SESSION_FIELDS = frozenset(SessionRecord.__dataclass_fields__)


def session_of(row: Any) -> SessionRecord:
    m = {k: v for k, v in fields_of(row).items() if k in _SESSION_FIELDS}
    m["id"] = str(m["id"])
    return SessionRecord(**m)


def context_of(row: Any) -> Context:
    m = fields_of(row)
    return Context(
        summary=m["summary"],
        items=list(m["items"] or []),
        first_position=int(m["compaction_mark"]),
        summary_items=list(m["summary_items"] or []),
    )


def claim_of(row: Any) -> Claim:
    """A claim row of turnq_claim / turnq_complete / turnq_fail (shared/sql/take.sql)."""
    m = fields_of(row)
    turn = m["turn"]
    return Claim(
        fence=int(m["fence"]),
        turn=turn_of(turn) if turn is not None else None,
        context=context_of(m) if turn is not None else None,
        gave_up=list(m["gave_up"] or []),
    )
