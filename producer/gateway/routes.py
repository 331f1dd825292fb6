"""The ``/v1`` routes: turns and sessions, every one scoped to the caller's user.

Routes are thin: validate, call ``producer.client.AsyncClient``, shape the answer.
An unknown id and another user's id take the same path through the database and
give the same 404 body (I10).
"""

import base64
import json
import uuid
from datetime import datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Body, Header, Path, Query, Request, Response
from fastapi.responses import StreamingResponse

from producer.gateway import sse
from producer.gateway.auth import CurrentCaller, CurrentUser
from producer.gateway.models import (
    ID_PATTERN,
    AgentInfo,
    AgentList,
    ApprovalPage,
    ApprovalView,
    CancelRequest,
    DecisionRequest,
    DecisionResult,
    ItemPage,
    ItemView,
    SessionDetail,
    SessionPage,
    SessionSummary,
    TurnAccepted,
    TurnCreate,
    TurnView,
    UserUsage,
)
from producer.gateway.problems import ApiProblem, FieldError, Problem
from producer.gateway.state import gateway_of
from shared.errors import InvalidInput, WaitTimeout
from shared.settings import Settings
from shared.validation import EVENT_ID

MAX_POSITION = 2**62


def _problems(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI responses for these problem statuses (app.py renames the media type)."""
    common = {401: "no or invalid API key", 429: "rate limited (see Retry-After)"}
    described = {
        400: "malformed JSON",
        404: "no such session or turn for this key",
        409: "conflict (see code)",
        413: "content or body too large",
        415: "the body is not JSON",
        422: "invalid input (see errors)",
        503: "Postgres or Redis not answering (see Retry-After)",
    }
    return {
        s: {"model": Problem, "description": {**common, **described}.get(s, "problem")}
        for s in sorted({401, 429, 503, *statuses})
    }


def check_cursor(cursor: str | None) -> str | None:
    """Refuse cursors this API never issued before they reach SQL (no 500 from a forged one)."""
    if cursor is None:
        return None
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        stamp, sid = json.loads(raw)
        if datetime.fromisoformat(stamp).tzinfo is None:
            raise ValueError("naive")
        uuid.UUID(sid)
    except (ValueError, TypeError) as exc:
        raise InvalidInput("cursor", "is not a cursor this API returned") from exc
    return cursor


def build_router(settings: Settings) -> APIRouter:  # noqa: C901 - one closure per route
    router = APIRouter(prefix="/v1")
    max_id = settings.max_id_length
    SessionId = Annotated[
        str,
        Path(
            min_length=1,
            max_length=max_id,
            pattern=ID_PATTERN,
            description="your session id (letters, digits, . _ : @ -); created on first turn",
        ),
    ]
    TurnId = Annotated[uuid.UUID, Path(description="the turn id returned by POST .../turns")]

    @router.post(
        "/sessions/{session_id}/turns",
        status_code=202,
        response_model=TurnAccepted,
        responses=_problems(400, 409, 413, 415, 422),
        summary="Send a message (accept a turn)",
        tags=["turns"],
    )
    async def create_turn(
        request: Request,
        response: Response,
        session_id: SessionId,
        body: Annotated[TurnCreate, Body()],
        user: CurrentUser,
    ) -> TurnAccepted:
        """Accepted means durable: the turn is in Postgres before this answers."""
        turn = await gateway_of(request).client.enqueue(
            session_id, user, body.content, body.idempotency_key,
            body.multitask_strategy.value, agent=body.agent, metadata=body.metadata,
        )  # fmt: skip
        response.headers["Location"] = f"/v1/turns/{turn.id}"
        return TurnAccepted(
            turn_id=turn.id,
            session_id=turn.session_id,
            seq=turn.seq,
            status=turn.status,
            created=turn.created,
        )

    @router.get(
        "/turns/{turn_id}",
        response_model=TurnView,
        responses=_problems(404, 422),
        summary="A turn: status, output, usage, timings (long-poll with ?wait=)",
        tags=["turns"],
    )
    async def get_turn(
        request: Request,
        turn_id: TurnId,
        user: CurrentUser,
        wait: Annotated[
            float,
            Query(
                ge=0,
                le=settings.gateway_max_wait_s,
                description="seconds to wait for the turn to finish (long-poll); "
                "answers at once when it is terminal, else with its status at the deadline",
            ),
        ] = 0,
    ) -> TurnView:
        client = gateway_of(request).client
        if wait > 0:
            try:
                return TurnView.of(await client.wait(str(turn_id), wait, user))
            except WaitTimeout:
                pass
        return TurnView.of(await client.get_turn(str(turn_id), user))

    @router.get(
        "/turns/{turn_id}/events",
        response_class=StreamingResponse,
        responses={
            200: {
                "description": "Server-Sent Events: status, delta, tool_call, tool_output; "
                "ends after the terminal status",
                "content": {"text/event-stream": {"schema": {"type": "string"}}},
            },
            **_problems(404, 422),
        },
        summary="Stream a turn's events (SSE, resumable with Last-Event-ID)",
        tags=["turns"],
    )
    async def turn_events(
        request: Request,
        turn_id: TurnId,
        user: CurrentUser,
        last_event_id: Annotated[
            str | None,
            Header(
                alias="Last-Event-ID",
                pattern=EVENT_ID.pattern,  # bounds the length too
                description="resume after this event id (sent by EventSource on reconnect)",
            ),
        ] = None,
        after: Annotated[
            str | None,
            Query(
                pattern=EVENT_ID.pattern,  # bounds the length too
                description="the same as Last-Event-ID, for clients that cannot set headers",
            ),
        ] = None,
    ) -> StreamingResponse:
        gw = gateway_of(request)
        try:
            start = sse.resume_from(last_event_id or after)
        except ValueError as exc:
            raise ApiProblem(
                422,
                InvalidInput.code,
                "Invalid input",
                f"Last-Event-ID: {exc}",
                errors=[FieldError(field="Last-Event-ID", location="header", message=str(exc))],
            ) from exc
        await gw.client.get_turn(str(turn_id), user)  # 404 before the stream starts
        body = sse.stream(
            gw.client,
            str(turn_id),
            user,
            start,
            heartbeat_s=settings.gateway_sse_heartbeat_s,
            idle_timeout_s=settings.gateway_sse_idle_timeout_s,
        )
        return StreamingResponse(
            body,
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )

    @router.post(
        "/turns/{turn_id}/cancel",
        response_model=TurnView,
        status_code=202,
        responses={
            200: {"model": TurnView, "description": "cancelled (it had not started)"},
            **_problems(400, 404, 409, 415, 422),
        },
        summary="Cancel a turn (202: the running turn stops at its next safe point)",
        tags=["turns"],
    )
    async def cancel_turn(
        request: Request,
        response: Response,
        turn_id: TurnId,
        user: CurrentUser,
        body: Annotated[CancelRequest | None, Body()] = None,
    ) -> TurnView:
        mode = (body or CancelRequest()).mode
        turn = await gateway_of(request).client.cancel(str(turn_id), user, mode.value)
        if turn.terminal:
            response.status_code = 200
        return TurnView.of(turn)

    @router.post(
        "/turns/{turn_id}/approvals",
        response_model=DecisionResult,
        responses=_problems(400, 404, 409, 415, 422),
        summary="Approve or reject the tool calls a waiting turn asked about",
        tags=["approvals"],
    )
    async def decide(
        request: Request,
        turn_id: TurnId,
        caller: CurrentCaller,
        body: Annotated[DecisionRequest, Body()],
    ) -> DecisionResult:
        """Each decision is recorded once: the same again answers 200 with the same result,
        the other one 409 ``approval_conflict``.  All or none.  The session's owner, or an
        approver key (any user's).  Once nothing is pending the turn runs again."""
        decided = await gateway_of(request).client.decide(
            str(turn_id), caller.user,
            [(d.call_id, d.approve, d.message) for d in body.decisions],
            approver=caller.approver,
        )  # fmt: skip
        return DecisionResult(
            turn=TurnView.of(decided.turn), decisions=decided.decisions, resumed=decided.resumed
        )

    @router.get(
        "/approvals",
        response_model=ApprovalPage,
        responses=_problems(422),
        summary="Approvals: yours, or every user's for an approver key (oldest first)",
        tags=["approvals"],
    )
    async def list_approvals(
        request: Request,
        caller: CurrentCaller,
        status: Annotated[Literal["pending", "all"], Query()] = "pending",
        limit: Annotated[int, Query(ge=1, le=200)] = 50,
        cursor: Annotated[
            str | None, Query(max_length=512, description="next_cursor of the previous page")
        ] = None,
    ) -> ApprovalPage:
        rows, next_cursor = await gateway_of(request).client.approvals(
            caller.user, pending_only=status == "pending", approver=caller.approver,
            limit=limit, cursor=cursor,
        )  # fmt: skip
        return ApprovalPage(
            approvals=[ApprovalView.model_validate(r) for r in rows], next_cursor=next_cursor
        )

    @router.get(
        "/agents",
        response_model=AgentList,
        responses=_problems(422),
        summary="The deployment's agents: handoffs, tools, which tools need approval",
        tags=["agents"],
    )
    async def list_agents(request: Request, user: CurrentUser) -> AgentList:
        agents = await gateway_of(request).client.agents()
        return AgentList(agents=[AgentInfo.model_validate(a) for a in agents])

    @router.get(
        "/usage",
        response_model=UserUsage,
        responses=_problems(422),
        summary="Your model usage over all your sessions (requests and tokens)",
        tags=["sessions"],
    )
    async def get_usage(request: Request, user: CurrentUser) -> UserUsage:
        return UserUsage.model_validate(await gateway_of(request).client.usage(user))

    @router.get(
        "/sessions",
        response_model=SessionPage,
        responses=_problems(422),
        summary="Your sessions, most recent activity first",
        tags=["sessions"],
    )
    async def list_sessions(
        request: Request,
        user: CurrentUser,
        limit: Annotated[int, Query(ge=1, le=200)] = 20,
        cursor: Annotated[
            str | None, Query(max_length=512, description="next_cursor of the previous page")
        ] = None,
    ) -> SessionPage:
        records, next_cursor = await gateway_of(request).client.list_sessions(
            user, limit, check_cursor(cursor)
        )
        return SessionPage(
            sessions=[SessionSummary.of(r) for r in records], next_cursor=next_cursor
        )

    @router.get(
        "/sessions/{session_id}",
        response_model=SessionDetail,
        responses=_problems(404, 422),
        summary="A session: counts, tokens, summary, compaction mark",
        tags=["sessions"],
    )
    async def get_session(
        request: Request, session_id: SessionId, user: CurrentUser
    ) -> SessionDetail:
        return SessionDetail.of(await gateway_of(request).client.session(session_id, user))

    @router.get(
        "/sessions/{session_id}/items",
        response_model=ItemPage,
        responses=_problems(404, 422),
        summary="The transcript, oldest first, paged by position",
        tags=["sessions"],
    )
    async def list_items(
        request: Request,
        session_id: SessionId,
        user: CurrentUser,
        after: Annotated[
            int, Query(ge=-1, le=MAX_POSITION, description="next_after of the previous page")
        ] = -1,
        limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    ) -> ItemPage:
        rows = await gateway_of(request).client.items(session_id, user, after, limit)
        return ItemPage(
            session_id=session_id,
            items=[ItemView(position=p, item=i) for p, i in rows],
            next_after=rows[-1][0] if len(rows) == limit else None,
        )

    @router.delete(
        "/sessions/{session_id}",
        status_code=204,
        response_class=Response,
        responses=_problems(404, 422),
        summary="Delete a session with its turns, items and summary",
        tags=["sessions"],
    )
    async def delete_session(
        request: Request, session_id: SessionId, user: CurrentUser
    ) -> Response:
        await gateway_of(request).client.delete_session(session_id, user)
        return Response(status_code=204)

    return router
