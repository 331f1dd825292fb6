"""Request and response bodies of the HTTP API (their JSON Schemas are the OpenAPI's)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from producer.client import TurnResult
from shared.multitask import CancelMode, Multitask
from shared.status import ErrorCode, TurnStatus
from shared.store import SessionRecord

# shared.validation's id rule, as a JSON Schema pattern (the server checks it again).
ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._:@\-]*$"
# Not blank and no NUL (shared.validation.check_content; its byte limit answers 413).
CONTENT_PATTERN = r"^[^\x00]*[^\s\x00][^\x00]*$"
NO_NUL_PATTERN = r"^[^\x00]*$"  # free text: anything but NUL (checked again by the server)
MAX_ID = 512  # the schema's bound; the deployment's max_id_length is patched in by app.py


class TurnCreate(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "example": {
                "content": "What is the weather in Austin?",
                "idempotency_key": "msg-1",
                "multitask_strategy": "enqueue",
            }
        },
    )

    # The published schema of content, agent and metadata is producer/gateway/schemas.py's;
    # the parts are checked by shared.validation, whose refusals name the part.
    content: (
        Annotated[str, Field(min_length=1, json_schema_extra={"pattern": CONTENT_PATTERN})]
        | list[Any]
    ) = Field(
        description="the user's message: a string (not blank, no NUL characters, at most "
        "TURNQ_MAX_CONTENT_BYTES UTF-8 bytes: 413 beyond), or a list of Responses-API content "
        "parts: {type: input_text, text}, {type: input_image, image_url (https:// or a data: "
        "URL) | file_id, detail?}, {type: input_file, file_data (data: URL) | file_url | "
        "file_id, filename?}; images and files together at most TURNQ_MAX_ATTACHMENT_BYTES",
    )
    agent: str | None = Field(
        default=None,
        max_length=MAX_ID,
        description="the entry agent of a new session (GET /v1/agents); later turns may "
        "repeat it, another one is 409 agent_conflict; default: the deployment's default",
    )
    metadata: dict[str, Any] | None = Field(
        default=None,
        description="a JSON object for your tools (the run context's metadata), at most "
        "TURNQ_MAX_METADATA_BYTES as JSON",
    )
    idempotency_key: str | None = Field(
        default=None,
        max_length=MAX_ID,
        pattern=ID_PATTERN,
        description="the same key returns the same turn; reused with other content: 409",
    )
    multitask_strategy: Multitask = Field(
        default=Multitask.ENQUEUE,
        description="if the session is busy: enqueue (run after), reject (409), interrupt "
        "(stop the running turn, keep what it finished), rollback (stop it, keep nothing)",
    )


class Decision(BaseModel):
    model_config = ConfigDict(extra="forbid")

    call_id: str = Field(
        min_length=1,
        max_length=256,
        description="the tool call's call_id",
        json_schema_extra={"pattern": NO_NUL_PATTERN},
    )
    approve: bool = Field(description="true: the tool runs; false: it does not")
    message: str | None = Field(
        default=None,
        max_length=4000,
        description="on a rejection, what the model is told (it sees it as the call's output)",
        json_schema_extra={"pattern": NO_NUL_PATTERN},
    )


class DecisionRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    decisions: list[Decision] = Field(min_length=1, max_length=64)


class DecisionResult(BaseModel):
    turn: TurnView
    decisions: list[str] = Field(description="approved / rejected, one per decision sent")
    resumed: bool = Field(description="no call is left pending: the turn runs again")


class ApprovalView(BaseModel):
    turn_id: str
    call_id: str
    user_id: str
    session_id: str
    tool: str
    arguments: str = Field(description="the call's arguments (JSON, as the model sent them)")
    agent: str | None
    requested_at: datetime
    message_text: str = Field(description="what the user asked in that turn")
    turn_status: TurnStatus
    decision: str | None = Field(
        description="approved, rejected, expired, cancelled; null: pending"
    )
    message: str | None
    decided_by: str | None
    decided_at: datetime | None


class ApprovalPage(BaseModel):
    approvals: list[ApprovalView]
    next_cursor: str | None


class CancelRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    mode: CancelMode = Field(
        default=CancelMode.INTERRUPT,
        description="interrupt: keep what the turn finished; rollback: keep nothing",
    )


class TurnAccepted(BaseModel):
    turn_id: str
    session_id: str
    seq: int = Field(description="the turn's position in its session (1, 2, ...)")
    status: TurnStatus
    created: bool = Field(description="false when an idempotency key returned an earlier turn")


class TurnView(BaseModel):
    turn_id: str
    session_id: str
    seq: int
    status: TurnStatus
    input: str
    output: str | None
    agent: str | None = Field(description="the agent that answered")
    output_json: Any = Field(
        default=None, description="the structured final output of an agent with an output_type"
    )
    content: list[dict[str, Any]] | None = Field(
        default=None, description="the message's content parts (input is their text)"
    )
    metadata: dict[str, Any] | None = Field(default=None, description="what you sent")
    pending_items: list[dict[str, Any]] | None = Field(
        default=None,
        description="a waiting turn's work so far; the tool calls that wait for a decision "
        'carry "approval": "pending" (decide with POST /v1/turns/{id}/approvals)',
    )
    error: str | None = Field(description="why it failed or was cancelled, for people")
    error_code: ErrorCode | None = Field(
        description="why it failed, for programs: a closed set (see docs/http-api.md)"
    )
    usage: dict[str, Any] | None = Field(
        description="model usage: requests, input_tokens, output_tokens, total_tokens, ..."
    )
    attempts: int
    context_tokens: int | None
    queued_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    queue_wait_s: float | None = Field(description="queued until a worker started it")
    run_s: float | None = Field(description="started until finished")
    terminal: bool = Field(description="succeeded, failed or cancelled: it will not change")

    @classmethod
    def of(cls, t: TurnResult) -> TurnView:
        return cls(
            turn_id=t.id,
            session_id=t.session_id,
            seq=t.seq,
            status=t.status,
            input=t.input,
            output=t.output,
            agent=t.agent,
            output_json=t.output_json,
            content=t.content,
            metadata=t.metadata,
            pending_items=t.pending_items,
            error=t.error,
            error_code=t.error_code,
            usage=t.usage,
            attempts=t.attempts,
            context_tokens=t.context_tokens,
            queued_at=t.queued_at,
            started_at=t.started_at,
            finished_at=t.finished_at,
            queue_wait_s=t.queue_wait_s,
            run_s=t.run_s,
            terminal=t.terminal,
        )


class SessionSummary(BaseModel):
    session_id: str
    created_at: datetime
    updated_at: datetime = Field(description="last activity (a turn accepted)")
    turn_count: int = Field(description="turns accepted (any status)")
    item_count: int = Field(description="items in the transcript")
    context_tokens: int = Field(description="what the model sees now (summary + recent items)")
    transcript_tokens: int = Field(description="the whole transcript (estimate)")

    @classmethod
    def of(cls, s: SessionRecord) -> SessionSummary:
        return cls(**_summary_fields(s))


class Usage(BaseModel):
    requests: int = Field(description="model calls")
    input_tokens: int
    cached_tokens: int
    output_tokens: int
    reasoning_tokens: int


class UserUsage(Usage):
    sessions: int


class AgentTool(BaseModel):
    name: str
    description: str
    needs_approval: bool | Literal["dynamic"]
    kind: str


class AgentInfo(BaseModel):
    name: str = Field(description="the agent's name (Agent.name)")
    entry: str | None = Field(description="its name as an entry agent (agent=...), if it is one")
    default: bool = Field(description="the entry agent of sessions that name none")
    description: str
    handoffs: list[str] = Field(description="the agents it can hand off to")
    tools: list[AgentTool]
    output_type: str | None = Field(description="its structured output type, if any")


class AgentList(BaseModel):
    agents: list[AgentInfo]


class SessionDetail(SessionSummary):
    entry_agent: str | None = Field(description="the agent the session was created with")
    active_agent: str | None = Field(
        description="the agent that answered last: the next turn starts there"
    )
    usage: Usage = Field(description="the session's model usage so far")
    summary: str | None = Field(description="the compaction summary the model sees")
    summary_tokens: int
    compaction_mark: int = Field(description="first item position the model still sees verbatim")
    compaction_count: int
    compacted_at: datetime | None

    @classmethod
    def of(cls, s: SessionRecord) -> SessionDetail:
        return cls(
            **_summary_fields(s),
            entry_agent=s.entry_agent,
            active_agent=s.active_agent,
            usage=Usage(
                requests=s.requests,
                input_tokens=s.input_tokens,
                cached_tokens=s.cached_tokens,
                output_tokens=s.output_tokens,
                reasoning_tokens=s.reasoning_tokens,
            ),
            summary=s.summary,
            summary_tokens=s.summary_tokens,
            compaction_mark=s.compaction_mark,
            compaction_count=s.compaction_count,
            compacted_at=s.compacted_at,
        )


def _summary_fields(s: SessionRecord) -> dict[str, Any]:
    return {
        "session_id": s.key,
        "created_at": s.created_at,
        "updated_at": s.updated_at,
        "turn_count": s.turn_count,
        "item_count": s.item_count,
        "context_tokens": s.context_tokens,
        "transcript_tokens": s.transcript_tokens,
    }


class SessionPage(BaseModel):
    sessions: list[SessionSummary]
    next_cursor: str | None = Field(description="pass as ?cursor= for the next page; null: done")


class ItemView(BaseModel):
    position: int
    item: dict[str, Any] = Field(description="an Agents SDK input item (message, tool call...)")


class ItemPage(BaseModel):
    session_id: str
    items: list[ItemView]
    next_after: int | None = Field(description="pass as ?after= for the next page; null: done")


class DependencyState(BaseModel):
    status: Literal["ok", "down", "unknown"]
    latency_ms: float | None = None
    detail: str | None = None
    count: int | None = Field(default=None, description="workers consuming the turns queue")


class Health(BaseModel):
    status: Literal["ok", "unavailable"] = Field(
        description="ok when Postgres and Redis answer (workers are reported, not required)"
    )
    checks: dict[str, DependencyState]
