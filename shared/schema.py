"""Postgres schema (SQLAlchemy Core).  Alembic migrations in ``ops/migrations`` create it.

Three tables, Postgres being the source of truth for everything:

* ``sessions`` — one row per (namespace, owner, session key); ``namespace`` is the
  deployment's ``TURNQ_NAMESPACE``, so deployments sharing a database never meet.
  Session keys are chosen by the caller and are scoped to the owning user: two
  users who both say "support-1" get two unrelated sessions, so nobody can write
  to, read, or even probe the
  existence of another user's session (I10).  ``id`` is the internal UUID every
  task message, lock and item carries.  ``fence`` is bumped by every worker that
  takes the session's lock; every write a worker makes checks it (I1).
  ``turn_count`` hands out per-session sequence numbers (I2), ``item_count`` the
  next item position.
* ``turns`` — one row per accepted turn; at most one ``running`` per session
  (partial unique index).  ``idempotency_key`` is unique per session.
* ``items`` — the transcript: append-only SDK input items (JSONB) by position,
  tagged with their turn.  Writing a turn inserts only its new rows, so the cost
  does not grow with history (the naive design rewrites one JSON blob per turn).
  ``compaction_mark`` on the session is the first position the model still sees
  verbatim; compaction moves the mark and never deletes items (I9).
"""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
    Column,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    PrimaryKeyConstraint,
    Table,
    Text,
    UniqueConstraint,
    func,
    text,
)
from sqlalchemy.dialects.postgresql import ARRAY, JSONB, UUID

from shared.sql import render
from shared.status import ErrorCode, TurnStatus

metadata = MetaData()

_STATUSES = ", ".join(f"'{s.value}'" for s in TurnStatus)
_CODES = ", ".join(f"'{c.value}'" for c in ErrorCode)

sessions = Table(
    "sessions",
    metadata,
    Column("id", UUID(as_uuid=False), primary_key=True),
    Column("namespace", Text, nullable=False, server_default=text("''")),
    Column("user_id", Text, nullable=False),
    Column("key", Text, nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    Column("updated_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    Column("turn_count", Integer, nullable=False, server_default="0"),
    Column("item_count", BigInteger, nullable=False, server_default="0"),
    Column("fence", BigInteger, nullable=False, server_default="0"),
    Column("context_tokens", Integer, nullable=False, server_default="0"),
    Column("transcript_tokens", BigInteger, nullable=False, server_default="0"),
    Column("compaction_mark", BigInteger, nullable=False, server_default="0"),
    Column("summary", Text, nullable=True),
    Column("summary_tokens", Integer, nullable=False, server_default="0"),
    Column("summary_items", JSONB, nullable=False, server_default=text("'[]'::jsonb")),
    Column("compacted_at", DateTime(timezone=True), nullable=True),
    Column("compaction_count", Integer, nullable=False, server_default="0"),
    Column("entry_agent", Text, nullable=True),  # the agent the session was created with
    Column("active_agent", Text, nullable=True),  # who answered last: the next turn starts there
    # Model usage, summed by every turn's commit (per user: a sum over the user's sessions).
    Column("requests", BigInteger, nullable=False, server_default="0"),
    Column("input_tokens", BigInteger, nullable=False, server_default="0"),
    Column("cached_tokens", BigInteger, nullable=False, server_default="0"),
    Column("output_tokens", BigInteger, nullable=False, server_default="0"),
    Column("reasoning_tokens", BigInteger, nullable=False, server_default="0"),
    UniqueConstraint("namespace", "user_id", "key", name="sessions_ns_user_key"),
    Index("sessions_ns_user_updated", "namespace", "user_id", "updated_at"),
    Index("sessions_updated", "updated_at"),
)

turns = Table(
    "turns",
    metadata,
    Column("id", UUID(as_uuid=False), primary_key=True),
    Column(
        "session_id",
        UUID(as_uuid=False),
        ForeignKey("sessions.id", ondelete="CASCADE"),
        nullable=False,
    ),
    Column("seq", Integer, nullable=False),
    Column("status", Text, nullable=False, server_default=TurnStatus.QUEUED.value),
    Column("input", Text, nullable=False),  # the message as text (content parts: their text)
    Column("content", JSONB, nullable=True),  # the message as content parts, when it has them
    Column("metadata", JSONB, nullable=True),  # the caller's JSON object, in the run context
    Column("agent", Text, nullable=True),  # the agent that answered
    Column("output", Text, nullable=True),
    Column("output_json", JSONB, nullable=True),  # a structured final output (output_type)
    # A paused turn (waiting): its RunState JSON (server-side only) and what it produced so
    # far, its pending tool calls marked "approval": "pending" (the transcript's view).
    Column("run_state", JSONB, nullable=True),
    Column("pending_items", JSONB, nullable=True),
    Column("error", Text, nullable=True),
    Column("error_code", Text, nullable=True),  # shared.status.ErrorCode when failed
    Column("attempts", Integer, nullable=False, server_default="0"),  # executions started
    # Fences of executions whose holder vanished (crash, kill, pause past the lock TTL):
    # worker_lost is decided on these (docs/decisions/0006).
    Column("lost_fences", ARRAY(BigInteger), nullable=False, server_default=text("'{}'")),
    Column("usage", JSONB, nullable=True),
    Column("context_tokens", Integer, nullable=True),
    Column("idempotency_key", Text, nullable=True),
    Column("fence", BigInteger, nullable=True),
    Column("queued_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    Column("started_at", DateTime(timezone=True), nullable=True),
    Column("finished_at", DateTime(timezone=True), nullable=True),
    Column("last_kick_at", DateTime(timezone=True), nullable=True),
    Column("cancel_mode", Text, nullable=True),  # interrupt | rollback, set by a cancel request
    Column("cancel_requested_at", DateTime(timezone=True), nullable=True),
    CheckConstraint(f"status IN ({_STATUSES})", name="turns_status_valid"),
    CheckConstraint(f"error_code IN ({_CODES})", name="turns_error_code_valid"),
    CheckConstraint("cancel_mode IN ('interrupt', 'rollback')", name="turns_cancel_mode_valid"),
    UniqueConstraint("session_id", "seq", name="turns_session_seq"),
    UniqueConstraint("session_id", "idempotency_key", name="turns_session_idempotency"),
    Index(
        "turns_one_running_per_session",
        "session_id",
        unique=True,
        postgresql_where=text("status = 'running'"),
    ),
    Index(
        "turns_open",
        "session_id",
        "seq",
        postgresql_where=text(render("status IN {{in:open}}")),
    ),
    Index(
        "turns_pending_age",
        "queued_at",
        postgresql_where=text(render("status IN {{in:runnable}}")),
    ),
)

api_keys = Table(
    "api_keys",
    metadata,
    Column("id", Text, primary_key=True),  # the public prefix of the key
    Column("user_id", Text, nullable=False),
    Column("secret_hash", Text, nullable=False),
    Column("name", Text),
    Column("created_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    Column("revoked_at", DateTime(timezone=True)),
    # "approver": may list and decide every user's pending approvals, nothing else of theirs
    Column("scopes", ARRAY(Text), nullable=False, server_default=text("'{}'")),
    Index("api_keys_user", "user_id"),
)

# One row per tool call a paused turn waits on; the decision is recorded once.
approvals = Table(
    "approvals",
    metadata,
    Column(
        "turn_id", UUID(as_uuid=False), ForeignKey("turns.id", ondelete="CASCADE"), nullable=False
    ),
    Column("call_id", Text, nullable=False),
    Column(
        "session_id",
        UUID(as_uuid=False),
        ForeignKey("sessions.id", ondelete="CASCADE"),
        nullable=False,
    ),
    Column("namespace", Text, nullable=False, server_default=text("''")),
    Column("user_id", Text, nullable=False),  # the session's owner
    Column("tool", Text, nullable=False),
    Column("arguments", Text, nullable=False),  # the call's JSON arguments, as the model sent them
    Column("agent", Text, nullable=True),
    Column("requested_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    Column("decision", Text, nullable=True),  # NULL: pending
    Column("message", Text, nullable=True),  # a rejection's message, which the model sees
    Column("decided_by", Text, nullable=True),
    Column("decided_at", DateTime(timezone=True), nullable=True),
    PrimaryKeyConstraint("turn_id", "call_id", name="approvals_pkey"),
    CheckConstraint(
        "decision IN ('approved', 'rejected', 'expired', 'cancelled')",
        name="approvals_decision_valid",
    ),
    Index(
        "approvals_pending",
        "namespace",
        "requested_at",
        postgresql_where=text("decision IS NULL"),
    ),
    Index("approvals_user", "namespace", "user_id", "requested_at"),
)

compactions = Table(
    "compactions",
    metadata,
    Column("id", UUID(as_uuid=False), primary_key=True),
    Column(
        "session_id",
        UUID(as_uuid=False),
        ForeignKey("sessions.id", ondelete="CASCADE"),
        nullable=False,
    ),
    Column("strategy", Text, nullable=False),
    Column("status", Text, nullable=False),
    Column("old_mark", BigInteger, nullable=False),
    Column("new_mark", BigInteger),
    Column("tokens_before", Integer),
    Column("tokens_after", Integer),
    Column("error", Text),
    Column("attempt", Integer, nullable=False, server_default="1"),
    Column("started_at", DateTime(timezone=True), nullable=False),
    Column("finished_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
)

items = Table(
    "items",
    metadata,
    Column(
        "session_id",
        UUID(as_uuid=False),
        ForeignKey("sessions.id", ondelete="CASCADE"),
        nullable=False,
    ),
    Column("position", BigInteger, nullable=False),
    Column("turn_id", UUID(as_uuid=False), ForeignKey("turns.id", ondelete="CASCADE")),
    Column("item", JSONB, nullable=False),
    Column("tokens", Integer, nullable=False, server_default="0"),
    Column("created_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    PrimaryKeyConstraint("session_id", "position", name="items_pkey"),
    Index("items_turn", "turn_id"),
)

# The step journal: each model response and tool outcome of a turn as it completes (I14).
turn_steps = Table(
    "turn_steps",
    metadata,
    Column(
        "turn_id", UUID(as_uuid=False), ForeignKey("turns.id", ondelete="CASCADE"), nullable=False
    ),
    Column("kind", Text, nullable=False),  # model | tool
    Column("key", Text, nullable=False),  # model: the call's index in the turn; tool: call id
    Column("state", Text, nullable=False),  # started (non-idempotent tools) | done
    Column("fence", BigInteger, nullable=False),  # the holder that wrote it
    Column("payload", JSONB, nullable=True),  # model: output, usage; tool: output
    Column("rolled_back", Boolean, nullable=False, server_default=text("false")),
    Column("created_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    Column("finished_at", DateTime(timezone=True), nullable=True),
    PrimaryKeyConstraint("turn_id", "kind", "key", name="turn_steps_pkey"),
    CheckConstraint("kind IN ('model', 'tool')", name="turn_steps_kind_valid"),
    CheckConstraint("state IN ('started', 'done')", name="turn_steps_state_valid"),
    Index("turn_steps_created", "created_at"),
)
