"""Helpers for the gateway's system tests (no tests here): the real `turnq gateway`
process on a loopback port, API keys, and a small client that shows problems on failure."""

from __future__ import annotations

import json
import re
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx

from ops.processes import ManagedProcess
from producer.gateway.keys import create_key
from producer.gateway.server import READY

TURNQ = [sys.executable, "-m", "producer.cli"]


class GatewayProcess(ManagedProcess):
    """`turnq gateway --port 0` as a subprocess; ``url`` is read from its ready line."""

    def __init__(self, env: dict[str, str], name: str = "gateway") -> None:
        cmd = [*TURNQ, "gateway", "--host", "127.0.0.1", "--port", "0", "--no-access-log"]
        super().__init__(cmd, env, name, ready=READY)
        self.url = ""

    def start(self, timeout: float = 60.0) -> GatewayProcess:
        super().start(timeout)
        m = re.search(re.escape(READY) + r" (http://[\d.]+:\d+)", self.log_text())
        assert m, self.log_text()
        self.url = m.group(1)
        return self


def new_key(database_url: str, user: str) -> str:
    return create_key(database_url, user, "system test")


class Api:
    """httpx with a key; ``expect`` asserts the status and returns the JSON body."""

    def __init__(self, url: str, key: str | None) -> None:
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        self.http = httpx.Client(base_url=url, headers=headers, timeout=30)

    def close(self) -> None:
        self.http.close()

    def request(self, method: str, path: str, **kw: Any) -> httpx.Response:
        return self.http.request(method, path, **kw)

    def expect(self, status: int, method: str, path: str, **kw: Any) -> Any:
        r = self.request(method, path, **kw)
        assert r.status_code == status, f"{method} {path}: {r.status_code} {r.text}"
        return r.json() if r.content else None

    def send(self, session: str, content: str, **fields: Any) -> dict[str, Any]:
        body: dict[str, Any] = self.expect(
            202, "POST", f"/v1/sessions/{session}/turns", json={"content": content, **fields}
        )
        return body

    def wait(self, turn_id: str, timeout: float = 60) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            turn: dict[str, Any] = self.expect(200, "GET", f"/v1/turns/{turn_id}?wait=20")
            if turn["terminal"] or time.monotonic() > deadline:
                return turn

    def wait_status(self, turn_id: str, status: str, timeout: float = 30) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            turn: dict[str, Any] = self.expect(200, "GET", f"/v1/turns/{turn_id}")
            if turn["status"] == status:
                return turn
            assert time.monotonic() < deadline, f"turn never {status}: {turn}"
            time.sleep(0.02)

    def items(self, session: str) -> list[dict[str, Any]]:
        page = self.expect(200, "GET", f"/v1/sessions/{session}/items?limit=1000")
        return [i["item"] for i in page["items"]]


def sse_events(
    lines: Iterator[str], stop: Callable[[dict[str, Any]], bool] | None = None
) -> Iterator[dict[str, Any]]:
    """Parse an SSE stream into {"id", "event", "data"} dicts (comments are skipped)."""
    event: dict[str, Any] = {}
    for line in lines:
        if line == "":
            if "data" in event:
                event["data"] = json.loads(event["data"])
                yield event
                if stop and stop(event):
                    return
            event = {}
            continue
        if line.startswith(":"):
            event.setdefault("comments", 0)
            continue
        field, _, value = line.partition(":")
        event[field] = value[1:] if value.startswith(" ") else value


def text_of(item: dict[str, Any]) -> str:
    content = item.get("content")
    if isinstance(content, list):
        return " ".join(str(p.get("text", "")) for p in content if isinstance(p, dict))
    return str(content)


def is_terminal(event: dict[str, Any]) -> bool:
    return event.get("event") == "status" and event["data"].get("status") in (
        "succeeded",
        "failed",
        "cancelled",
    )
