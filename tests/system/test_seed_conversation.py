"""The seed conversation through the real queue: offline model, and the stub over real HTTP."""

from __future__ import annotations

from typing import Any

import pytest

from producer import Client
from shared.status import TurnStatus
from tests.system.conftest import StubLLM

pytestmark = pytest.mark.system

SEED = ["What is the weather in Austin?", "How about Seattle?", "Which city is warmer?"]
DEMO = {"TURNQ_AGENT": "shared.demo_agent:build_agent"}


def run_seed(client: Client, session: str, user: str) -> list[Any]:
    results = []
    for message in SEED:
        turn = client.enqueue(session, user, message)
        results.append(client.wait(turn.id, timeout=60))
    assert all(r.status is TurnStatus.SUCCEEDED for r in results), [r.error for r in results]
    return results


def check_seed(client: Client, session: str, user: str, results: list[Any]) -> None:
    first, second, third = (r.output or "" for r in results)
    assert "Austin" in first and "31" in first
    assert "Seattle" in second and "14" in second
    assert "Austin" in third and "warmer" in third.lower()
    history = client.history(session, user)
    calls = [i for i in history if i.get("type") == "function_call"]
    assert [c["name"] for c in calls] == ["get_weather", "get_weather"]
    assert "Austin" in calls[0]["arguments"] and "Seattle" in calls[1]["arguments"]
    outputs = [i for i in history if i.get("type") == "function_call_output"]
    assert {o["call_id"] for o in outputs} == {c["call_id"] for c in calls}
    for r in results:
        assert r.usage and r.usage["requests"] >= 1 and r.usage["input_tokens"] > 0


def test_seed_conversation_offline_model(client: Client, start_worker: Any, uid: str) -> None:
    start_worker("offline", TURNQ_MODEL_PROVIDER="offline", **DEMO)
    results = run_seed(client, f"seed-{uid}", f"u-{uid}")
    check_seed(client, f"seed-{uid}", f"u-{uid}", results)


@pytest.mark.parametrize("api", ["chat", "responses"])
def test_seed_conversation_through_stub_over_http(
    client: Client, start_worker: Any, stub_llm: StubLLM, uid: str, api: str
) -> None:
    start_worker(
        f"stub-{api}",
        TURNQ_MODEL_PROVIDER="openai",
        TURNQ_OPENAI_BASE_URL=stub_llm.url + "/v1",
        TURNQ_OPENAI_API_KEY="test-key",
        TURNQ_OPENAI_API=api,
        **DEMO,
    )
    results = run_seed(client, f"seed-{api}-{uid}", f"u-{uid}")
    check_seed(client, f"seed-{api}-{uid}", f"u-{uid}", results)
    assert stub_llm.stats()["total_calls"] >= 5  # 2 tool turns x 2 calls + 1: the HTTP path ran


def test_model_failure_fails_the_turn_clearly_and_session_stays_usable(
    client: Client, start_worker: Any, stub_llm: StubLLM, uid: str
) -> None:
    start_worker(
        "flaky",
        TURNQ_MODEL_PROVIDER="openai",
        TURNQ_OPENAI_BASE_URL=stub_llm.url + "/v1",
        TURNQ_OPENAI_API_KEY="test-key",
        TURNQ_OPENAI_API="chat",
        TURNQ_MODEL_RETRIES="1",
        **DEMO,
    )
    session, user = f"flaky-{uid}", f"u-{uid}"
    ok = client.enqueue(session, user, "My name is Ada")
    assert client.wait(ok.id, timeout=30).status is TurnStatus.SUCCEEDED
    stub_llm.configure(fail_rate=1.0)
    bad = client.wait(client.enqueue(session, user, "What is my name?").id, timeout=60)
    assert bad.status is TurnStatus.FAILED
    assert bad.error and "500" in bad.error
    stub_llm.configure(fail_rate=0.0)
    good = client.wait(client.enqueue(session, user, "What is my name?").id, timeout=30)
    assert good.status is TurnStatus.SUCCEEDED and "Ada" in (good.output or "")
    users = [i["content"] for i in client.history(session, user) if i.get("role") == "user"]
    assert users == ["My name is Ada", "What is my name?"]  # the failed turn wrote nothing


def test_permanent_error_is_not_retried(client: Client, start_worker: Any, uid: str) -> None:
    start_worker("perm")
    session, user = f"perm-{uid}", f"u-{uid}"
    done = client.wait(client.enqueue(session, user, "please FAIL-PERMANENT").id, timeout=30)
    assert done.status is TurnStatus.FAILED and done.attempts == 1
    assert "asked this turn to fail" in (done.error or "")
    assert client.history(session, user) == []
