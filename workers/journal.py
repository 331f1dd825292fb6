"""The step journal of a running turn (I14): replay what completed, never repeat it.

    journal = Journal.of(rt, turn, fence)          # the claimed turn's journaled steps
    with turn_scope(TurnScope(policy, journal=journal)):
        ...                                        # TurnqModel and journaled tools use it

* **Model calls** (``workers/models.py``) are keyed by their index in the turn.  A call
  whose response is journaled returns it without asking the model (same items, same call
  ids, so the tools that follow match); a live one is journaled when it completes, before
  its tools run.  Replayed calls stream no text: clients get a ``resumed`` event and the
  deltas of the live part only.
* **Tool calls** (``wrap_tools``) are keyed by call id.  A journaled output is returned
  without running the tool.  A non-idempotent tool is journaled ``started`` before it
  runs; found started but not done (its holder died in between), it is not run again: the
  model is told the outcome is unknown (``TURNQ_UNKNOWN_OUTCOME=tell_model``), or the turn
  pauses for a person to allow a re-run (``ask_human``).  Every completed tool call is
  journaled ``done`` with its output.

Writes are one fenced round trip each (turnq_journal); a stale holder's write raises
``Fenced`` and the holder stops.  So: a model call is at-least-once only for the call in
flight when a worker died; a completed one is never repeated; a tool runs at most once
if non-idempotent, at least once (and once per completion) otherwise.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from agents import FunctionTool

from shared.errors import Fenced
from shared.run_context import IDEMPOTENT_ATTR
from shared.store import TurnRecord
from shared.store.worker import nul_safe

if TYPE_CHECKING:
    from shared.registry import Registry
    from workers.runtime import Runtime

log = logging.getLogger(__name__)

Writer = Callable[[str, str, str, Any], Awaitable[None]]

UNKNOWN_OUTCOME = (
    "The outcome of this tool call is unknown: it was started before a crash and did not "
    "report back. It was not run again, because running it twice could repeat its effect. "
    "Tell the user it may or may not have happened and that a person should check."
)


class JournalUnavailable(Exception):
    """A step could not be journaled (Postgres unreachable): the run must stop, not go on
    with a step that a re-run could repeat."""


@dataclass
class Journal:
    write: Writer
    steps: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)
    model_calls: int = 0  # the next model call's index in the turn
    approved: set[str] = field(default_factory=set)  # call ids a person approved (resumes)
    replayed_calls: set[str] = field(default_factory=set)  # tool call ids replayed
    replayed_models: int = 0
    replayed_tools: int = 0
    unknown: int = 0

    @classmethod
    def of(cls, rt: Runtime, turn: TurnRecord, fence: int) -> Journal:
        async def write(kind: str, key: str, state: str, payload: Any) -> None:
            await rt.turns.journal(turn.session_id, turn.id, fence, kind, key, state, payload)

        journal = cls(write)
        for step in turn.journal or []:
            journal.steps[(step["kind"], step["key"])] = step
        journal.approved = {
            d["call_id"] for d in turn.decisions or [] if d.get("decision") == "approved"
        }
        return journal

    @property
    def replaying(self) -> bool:
        return bool(self.steps)

    def next_model_key(self) -> str:
        key = str(self.model_calls)
        self.model_calls += 1
        return key

    def model(self, key: str) -> dict[str, Any] | None:
        step = self.steps.get(("model", key))
        return step["payload"] if step is not None and step["state"] == "done" else None

    def tool(self, call_id: str) -> dict[str, Any] | None:
        return self.steps.get(("tool", call_id))

    def may_rerun(self, call_id: str, started: dict[str, Any]) -> bool:
        """A non-idempotent call found started (its holder died in it) runs again only if a
        person approved that: an approval given after the start (``ask_human``).  The
        approval it first ran under does not count twice: an approved tool whose worker
        died in it, or right after it, has run once; its outcome is unknown."""
        payload = started.get("payload") or {}
        return call_id in self.approved and not payload.get("approved", False)

    async def record(self, kind: str, key: str, state: str, payload: Any) -> None:
        payload = nul_safe(payload)  # as the transcript keeps it; JSONB refuses U+0000
        try:
            await self.write(kind, key, state, payload)
        except Fenced:
            raise
        except Exception as exc:  # Postgres away: stop the run; it is taken over later
            raise JournalUnavailable(f"the step journal could not be written: {exc}") from exc
        self.steps[(kind, key)] = {"kind": kind, "key": key, "state": state, "payload": payload}


def is_idempotent(tool: FunctionTool, non_idempotent_names: frozenset[str]) -> bool:
    """Marked with ``shared.run_context.idempotent/non_idempotent``, else listed in the
    agent module's ``TURNQ_NON_IDEMPOTENT_TOOLS``, else: tools that need a person's
    approval act on the world (non-idempotent), the rest are reads (idempotent)."""
    marked = getattr(tool, IDEMPOTENT_ATTR, None)
    if isinstance(marked, bool):
        return marked
    if tool.name in non_idempotent_names:
        return False
    return tool.needs_approval is False


def wrap_tools(registry: Registry, non_idempotent_names: frozenset[str], ask_human: bool) -> None:
    """Journal every function tool of the deployment (in place: the worker owns them)."""
    from workers.models import current_scope

    for agent in registry.all_agents():
        for tool in agent.tools:
            if not isinstance(tool, FunctionTool) or getattr(tool, "_turnq_journaled", False):
                continue
            once = not is_idempotent(tool, non_idempotent_names)
            tool.on_invoke_tool = _journaled(tool.on_invoke_tool, once, tool.name, current_scope)
            if once and ask_human:
                tool.needs_approval = _ask_before_rerun(tool.needs_approval, current_scope)
            tool._turnq_journaled = True  # type: ignore[attr-defined]


def _journaled(
    inner: Callable[..., Awaitable[Any]], once: bool, name: str, scope: Callable[[], Any]
) -> Callable[..., Awaitable[Any]]:
    async def invoke(ctx: Any, arguments: str) -> Any:
        journal: Journal | None = scope().journal
        call_id = getattr(ctx, "tool_call_id", None)
        if journal is None or not call_id:
            return await inner(ctx, arguments)
        step = journal.tool(call_id)
        if step is not None and step["state"] == "done":
            journal.replayed_tools += 1
            return step["payload"]["output"]
        if step is not None and once and not journal.may_rerun(call_id, step):
            journal.unknown += 1
            log.warning("a non-idempotent tool's outcome is unknown; not run again",
                        extra={"tool": name, "call_id": call_id})  # fmt: skip
            return UNKNOWN_OUTCOME
        if once:  # the approval it runs under (if any) is used up by this start
            started = {"arguments": arguments, "approved": call_id in journal.approved}
            await journal.record("tool", call_id, "started", started)
        output = await inner(ctx, arguments)
        await journal.record("tool", call_id, "done", {"output": _jsonable(output)})
        return output

    return invoke


def _ask_before_rerun(original: Any, scope: Callable[[], Any]) -> Any:
    async def needs(ctx: Any, params: Any, call_id: str) -> bool:
        journal: Journal | None = scope().journal
        step = journal.tool(call_id) if journal is not None else None
        if journal is not None and step is not None and step["state"] == "started":
            if call_id not in journal.approved:
                return True  # a person decides whether to run it again
        if callable(original):
            result = original(ctx, params, call_id)
            return bool(await result if hasattr(result, "__await__") else result)
        return bool(original)

    return needs


def _jsonable(output: Any) -> Any:
    """A tool's output as stored: JSON values as they are, anything else as its string."""
    try:
        json.dumps(output, allow_nan=False)  # jsonb holds no NaN or Infinity
        return output
    except (TypeError, ValueError):
        dump = getattr(output, "model_dump", None)
        return dump(mode="json") if callable(dump) else str(output)
