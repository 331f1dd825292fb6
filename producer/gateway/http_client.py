"""A small blocking client of the HTTP API (what ``turnq chat --url --key`` uses).

    with GatewayClient("http://127.0.0.1:8000", key) as api:
        turn = api.send("support-42", "What is the weather in Austin?")
        done = api.wait(turn["turn_id"], timeout=60)     # long-polls GET /v1/turns/{id}?wait=
        api.decide(turn_id, [(call_id, True, None)])      # a paused turn's tool call
        items = api.items("support-42")                   # the whole transcript

Errors are ``GatewayError`` carrying the problem body (``.status``, ``.code``, ``.detail``).
"""

from __future__ import annotations

import time
from types import TracebackType
from typing import Any

import httpx

LONG_POLL_S = 30.0
PAUSE_POLL_S = 1.0  # how often a wait that stops at a pause looks (long-polls stop at the end)


class GatewayError(Exception):
    def __init__(self, status: int, problem: dict[str, Any]) -> None:
        self.status = status
        self.problem = problem
        self.code = str(problem.get("code", "http_error"))
        self.detail = str(problem.get("detail", problem.get("title", f"HTTP {status}")))
        super().__init__(f"{self.detail} (HTTP {status}, {self.code})")


class GatewayClient:
    def __init__(self, url: str, key: str, *, timeout: float = 10.0) -> None:
        self.http = httpx.Client(
            base_url=url.rstrip("/"),
            headers={"Authorization": f"Bearer {key}"},
            timeout=httpx.Timeout(timeout, read=LONG_POLL_S + timeout),
        )

    def __enter__(self) -> GatewayClient:
        return self

    def __exit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def close(self) -> None:
        self.http.close()

    def _call(self, method: str, path: str, **kw: Any) -> Any:
        for _ in range(5):
            try:
                response = self.http.request(method, path, **kw)
            except httpx.TransportError as exc:
                raise GatewayError(0, {"code": "unreachable", "detail": str(exc)}) from exc
            if response.status_code == 429:
                time.sleep(min(float(response.headers.get("Retry-After", "1")), 10.0))
                continue
            break
        if response.status_code >= 400:
            try:
                problem = response.json()
            except ValueError:
                problem = {"detail": response.text[:200]}
            raise GatewayError(response.status_code, problem if isinstance(problem, dict) else {})
        return response.json() if response.content else None

    def send(
        self,
        session_id: str,
        content: str,
        idempotency_key: str | None = None,
        multitask_strategy: str = "enqueue",
    ) -> dict[str, Any]:
        body: dict[str, Any] = {"content": content, "multitask_strategy": multitask_strategy}
        if idempotency_key is not None:
            body["idempotency_key"] = idempotency_key
        result: dict[str, Any] = self._call("POST", f"/v1/sessions/{session_id}/turns", json=body)
        return result

    def turn(self, turn_id: str, wait: float = 0) -> dict[str, Any]:
        params = {"wait": wait} if wait > 0 else {}
        result: dict[str, Any] = self._call("GET", f"/v1/turns/{turn_id}", params=params)
        return result

    def wait(
        self, turn_id: str, timeout: float = 60.0, *, until_paused: bool = False
    ) -> dict[str, Any]:
        """Long-poll until the turn is terminal or ``timeout`` passes (returns it either way).
        ``until_paused``: also return when it waits for approvals (``status`` "waiting"); the
        long-poll answers only for terminal turns, so this polls every ``PAUSE_POLL_S``."""
        deadline = time.monotonic() + timeout
        window = PAUSE_POLL_S if until_paused else LONG_POLL_S
        while True:
            remaining = deadline - time.monotonic()
            turn = self.turn(turn_id, wait=max(0.0, min(remaining, window)))
            paused = until_paused and turn.get("status") == "waiting"
            if turn.get("terminal") or paused or remaining <= 0:
                return turn

    def decide(self, turn_id: str, decisions: list[tuple[str, bool, str | None]]) -> dict[str, Any]:
        """Approve or reject a waiting turn's tool calls: (call id, approve, message)."""
        body = {
            "decisions": [
                {"call_id": c, "approve": a, **({"message": m} if m else {})}
                for c, a, m in decisions
            ]
        }
        result: dict[str, Any] = self._call("POST", f"/v1/turns/{turn_id}/approvals", json=body)
        return result

    def items(self, session_id: str) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        after = -1
        while True:
            page = self._call(
                "GET", f"/v1/sessions/{session_id}/items", params={"after": after, "limit": 1000}
            )
            out.extend(i["item"] for i in page["items"])
            if page["next_after"] is None:
                return out
            after = page["next_after"]
