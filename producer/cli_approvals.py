"""``turnq chat`` when a turn pauses: ask the person at the terminal, send the decisions.

    done = answered_direct(client, turn_id, user, timeout)   # through the queue
    done = answered_http(api, turn_id, timeout)              # through the HTTP gateway

Each waits for the turn; whenever it waits for approvals, every pending tool call is shown
with its arguments and the person answers ``approve? [y/n]`` (on no, optionally what to
tell the agent); the decisions are sent and the wait goes on.  A call decided elsewhere
meanwhile (the /review page, another client) is said and skipped.  If stdin closes before
every call is decided, the turn is returned still waiting.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from rich.console import Console
from rich.markup import escape

console = Console(highlight=False)
err = Console(stderr=True, highlight=False)

T = TypeVar("T")
Decisions = list[tuple[str, bool, str | None]]  # (call id, approve, message)
DECIDED_ELSEWHERE = ("approval_conflict", "approval_not_pending")


def answered_direct(client: Any, turn_id: str, user: str, timeout: float) -> Any:
    """The turn (``producer.client.TurnResult``) once it finished, asking at every pause."""
    from shared.errors import ApprovalConflict, ApprovalNotPending
    from shared.status import TurnStatus

    def wait() -> Any:
        return client.wait(turn_id, timeout=timeout, until_paused=True)

    def pending(done: Any) -> list[dict[str, Any]] | None:
        return done.pending_items if done.status is TurnStatus.WAITING else None

    def decide(decisions: Decisions) -> None:
        try:
            client.decide(turn_id, user, decisions)
        except (ApprovalConflict, ApprovalNotPending) as exc:
            err.print(f"[yellow]{escape(str(exc))}[/yellow]")

    return until_answered(wait, pending, decide)


def answered_http(api: Any, turn_id: str, timeout: float) -> dict[str, Any]:
    """The same through ``producer.gateway.http_client.GatewayClient`` (the turn's JSON)."""
    from producer.gateway.http_client import GatewayError

    def wait() -> dict[str, Any]:
        turn: dict[str, Any] = api.wait(turn_id, timeout=timeout, until_paused=True)
        return turn

    def pending(done: dict[str, Any]) -> list[dict[str, Any]] | None:
        return done.get("pending_items") if done.get("status") == "waiting" else None

    def decide(decisions: Decisions) -> None:
        try:
            api.decide(turn_id, decisions)
        except GatewayError as exc:
            if exc.code not in DECIDED_ELSEWHERE:
                raise
            err.print(f"[yellow]{escape(exc.detail)}[/yellow]")

    return until_answered(wait, pending, decide)


def until_answered(
    wait: Callable[[], T],
    pending_of: Callable[[T], list[dict[str, Any]] | None],
    decide: Callable[[Decisions], None],
) -> T:
    while True:
        with console.status("waiting for the agent…"):
            done = wait()
        calls = [i for i in pending_of(done) or [] if i.get("approval") == "pending"]
        if not calls:
            return done
        decisions = ask(calls)
        if decisions is None:
            return done
        decide(decisions)


def ask(calls: list[dict[str, Any]]) -> Decisions | None:
    """approve? [y/n] for each call (and, on no, what to tell the agent); None at EOF."""
    decisions: Decisions = []
    for call in calls:
        name, arguments = str(call.get("name")), str(call.get("arguments") or "{}")
        console.print(
            f"[yellow]the agent asks to run[/yellow] [bold]{escape(name)}[/bold]"
            f"({escape(arguments)})",
            soft_wrap=True,
        )
        while True:
            try:
                answer = input("approve? [y/n] ").strip().lower()
            except EOFError:
                console.print()  # end the prompt's line
                return None
            if answer in ("y", "yes", "n", "no"):
                break
            console.print("[dim]answer y or n[/dim]")
        if answer.startswith("y"):
            decisions.append((str(call["call_id"]), True, None))
            continue
        try:
            why = input("why not? (optional; the agent is told) ").strip()
        except EOFError:
            why = ""
        decisions.append((str(call["call_id"]), False, why or None))
    return decisions


def left_waiting(turn_id: str) -> None:
    console.print(
        f"[yellow]turn {turn_id} still waits for approval; decide it with POST "
        f"/v1/turns/{turn_id}/approvals or on the gateway's /review page[/yellow]",
        soft_wrap=True,
    )


def pending_approvals(client: Any, user: str, session: str) -> list[dict[str, Any]]:
    """The session's tool calls waiting for a decision (``turnq sessions show``)."""
    found: list[dict[str, Any]] = []
    cursor = None
    while True:
        page, cursor = client.approvals(user, limit=200, cursor=cursor)
        found += [a for a in page if a["session_id"] == session]
        if cursor is None:
            return found


def print_pending_approvals(approvals: list[dict[str, Any]]) -> None:
    from rich.table import Table

    if not approvals:
        console.print("[dim]no tool call waits for approval[/dim]")
        return
    table = Table(title=f"waiting for approval ({len(approvals)})")
    for col in ("since", "turn", "tool", "arguments", "call id"):
        table.add_column(col, overflow="fold")
    for a in approvals:
        table.add_row(
            f"{a['requested_at']:%Y-%m-%d %H:%M:%S}",
            a["turn_id"],
            escape(a["tool"]),
            escape(a["arguments"][:200]),
            escape(a["call_id"]),
        )
    console.print(table)
    console.print(
        "[dim]decide: POST /v1/turns/{turn}/approvals or the gateway's /review page[/dim]",
        soft_wrap=True,
    )
