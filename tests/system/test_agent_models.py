"""Every model of every agent goes through the deployment's provider (I11).

``tests.agents:routed``: Router has its own model object; it hands over to Billing, which
has no model, or to Refunds, which names one by string.  The deployment's models are
`turnq stub-llm` (TURNQ_OPENAI_BASE_URL), which counts the calls per model name: Billing's
calls must arrive as TURNQ_CHAT_MODEL and Refunds' as its own name -- not at the SDK's
default OpenAI provider (which the tests' network guard would refuse) -- with turnq's
retries around them.
"""

from __future__ import annotations

from typing import Any

import pytest

from shared.status import TurnStatus
from tests.agents import REFUNDS_MODEL
from tests.support.deployments import deployment
from tests.support.stub_llm import StubLLM

pytestmark = pytest.mark.system

CHAT_MODEL = "deployment-chat-model"


def test_handoff_targets_and_model_names_resolve_through_the_provider(
    stack_env: dict[str, str], stub_llm: StubLLM, uid: str
) -> None:
    provider = {
        "TURNQ_MODEL_PROVIDER": "openai",
        "TURNQ_OPENAI_BASE_URL": f"{stub_llm.url}/v1",
        "TURNQ_CHAT_MODEL": CHAT_MODEL,
    }
    with deployment(stack_env, "routed", "tests.agents:routed", **provider) as d:
        stub_llm.reset()
        user = f"u-{uid}"

        def run(session: str, message: str) -> Any:
            done = d.client.wait(d.client.enqueue(session, user, message).id, timeout=60)
            assert done.status is TurnStatus.SUCCEEDED, (done.error, d.logs())
            assert done.output and done.usage is not None
            return done

        # Billing has no model: it gets the deployment's chat model, by name, from the stub.
        done = run(f"b-{uid}", "I have a billing question")
        assert done.agent == "Billing"
        assert {a: u["requests"] for a, u in done.usage["by_agent"].items()} == {
            "Router": 1,  # its own model object, not the stub
            "Billing": 1,
        }
        assert stub_llm.stats()["models"] == {CHAT_MODEL: 1}
        assert done.usage["by_agent"]["Billing"]["input_tokens"] > 0  # the stub's measure

        # The next turn starts at Billing: one call, straight to the stub.
        again = run(f"b-{uid}", "and one more thing")
        assert again.agent == "Billing" and list(again.usage["by_agent"]) == ["Billing"]
        assert stub_llm.stats()["models"] == {CHAT_MODEL: 2}

        # Refunds names its model: that name reaches the stub, with turnq's retry around it.
        stub_llm.configure(script=["503", "ok"])
        refund = run(f"r-{uid}", "I want a refund")
        assert refund.agent == "Refunds" and refund.attempts == 1
        stats = stub_llm.stats()
        assert stats["models"] == {CHAT_MODEL: 2, REFUNDS_MODEL: 2}  # the 503 and its retry
        assert stats["outcomes"] == {"ok": 3, "503": 1}
        assert refund.usage["by_agent"]["Refunds"]["requests"] == 1  # one answered call
