"""Every error code a turn can end with, produced through a real worker (I12).

Each test makes a turn fail one way and reads the same code and reason three ways: the
Python client (``client.wait``), the gateway (``GET /v1/turns/{id}``, a real ``turnq
gateway`` on loopback) and the turn's event stream (the gateway's SSE, whose last event
is the failed status).  It counts the model's calls (no retry where none is due, exactly
``1 + TURNQ_MODEL_RETRIES`` where it is), and checks that the session goes on: the failed
turn left nothing in the transcript and the next turn succeeds.

The model failures go through ``turnq stub-llm`` and the real OpenAI client; the rest
through ``tests.agents:misbehaving``, whose message says how to fail.  One worker serves
the module at a time (``OneWorker``): workers of one namespace share the turns queue, so
two agent configurations at once would run each other's turns.  A tool that needs approval
is no error: the turn pauses (``waiting``) until a person decides; ``state_unreadable`` is a
paused turn whose saved run state the deployment can no longer load (its agent renamed).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from producer import Client, TurnResult
from shared import keys
from shared.status import ErrorCode, TurnStatus
from tests.support.servers import wait_until
from tests.support.stub_llm import StubLLM, stub_llm_process
from tests.support.workers import WorkerProcess
from tests.system.conftest import FAST_RECOVERY
from tests.system.test_gateway_support import Api, GatewayProcess, is_terminal, new_key, sse_events

pytestmark = [pytest.mark.system, pytest.mark.timeout(120)]

RETRIES = 2  # TURNQ_MODEL_RETRIES for the stub worker
MAX_TURNS = 3
TURN_TIMEOUT_S = 3  # the misbehaving worker; its good turns take milliseconds
MAX_ATTEMPTS = 2


class OneWorker:
    """The module's one worker process, replaced when a test needs another configuration
    and restarted when it died (a poison turn kills it)."""

    def __init__(self, env: dict[str, str]) -> None:
        self.env = env
        self.config: dict[str, str] | None = None
        self.proc: WorkerProcess | None = None
        self.starts = 0

    def use(self, config: dict[str, str]) -> WorkerProcess:
        if self.proc is None or self.config != config or not self.proc.alive():
            self.stop()
            self.config = config
            self.respawn()
        assert self.proc is not None
        return self.proc

    def respawn(self) -> WorkerProcess:
        assert self.config is not None
        self.starts += 1
        self.proc = WorkerProcess({**self.env, **self.config}, name=f"codes{self.starts}")
        self.proc.start()
        return self.proc

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.stop()
            self.proc = None


@pytest.fixture(scope="module")
def worker(stack_env: dict[str, str]) -> Iterator[OneWorker]:
    one = OneWorker({**stack_env, **FAST_RECOVERY})
    yield one
    one.stop()


@pytest.fixture(scope="module")
def stub() -> Iterator[StubLLM]:
    with stub_llm_process() as s:
        yield s


@pytest.fixture(scope="module")
def gateway(stack_env: dict[str, str]) -> Iterator[GatewayProcess]:
    g = GatewayProcess(
        {**stack_env, "TURNQ_GATEWAY_RATE_PER_S": "1000", "TURNQ_GATEWAY_RATE_BURST": "1000"}
    )
    g.start()
    yield g
    g.stop()


@pytest.fixture(scope="module")
def call_log(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("codes") / "model-calls.log"


@pytest.fixture
def user(uid: str) -> str:
    return f"codes-{uid}"


@pytest.fixture
def api(gateway: GatewayProcess, database_url: str, user: str) -> Iterator[Api]:
    a = Api(gateway.url, new_key(database_url, user))
    yield a
    a.close()


def stub_config(stub: StubLLM) -> dict[str, str]:
    """The deployment's model is the stub, reached through the real OpenAI client."""
    return {
        "TURNQ_AGENT": "shared.demo_agent:build_agent",
        "TURNQ_MODEL_PROVIDER": "openai",
        "TURNQ_OPENAI_BASE_URL": stub.url + "/v1",
        "TURNQ_OPENAI_API_KEY": "test-key",
        "TURNQ_OPENAI_API": "chat",
        "TURNQ_MODEL_RETRIES": str(RETRIES),
        "TURNQ_MODEL_TIMEOUT_S": "5",
    }


def misbehaving(call_log: Path) -> dict[str, str]:
    return {
        "TURNQ_AGENT": "tests.agents:misbehaving",
        "TEST_CALL_LOG": str(call_log),
        "TURNQ_MAX_TURNS": str(MAX_TURNS),
        "TURNQ_TURN_TIMEOUT_S": str(TURN_TIMEOUT_S),
        "TURNQ_MAX_ATTEMPTS": str(MAX_ATTEMPTS),
    }


# --- one session: a good turn, the turn meant to fail, then the three views --------


class Scenario:
    def __init__(self, client: Client, api: Api, user: str, uid: str, call_log: Path) -> None:
        self.client, self.api, self.user, self.uid = client, api, user, uid
        self.call_log = call_log
        self.session = f"codes-{uid}"
        self.before: list[Any] = []
        self.message = ""
        self.turn_id = ""

    def start(self) -> None:
        """A good turn first, so 'nothing half-written' is checked against a real transcript."""
        done = self.client.wait(self.client.enqueue(self.session, self.user, "hello").id, 60)
        assert done.status is TurnStatus.SUCCEEDED, done
        self.before = self.client.history(self.session, self.user)

    def send(self, message: str) -> None:
        self.message = f"{message} {self.uid}"
        self.turn_id = self.client.enqueue(self.session, self.user, self.message).id

    def calls(self) -> int:
        """Calls the misbehaving model made for the turn (read from its log file)."""
        lines = self.call_log.read_text().splitlines() if self.call_log.exists() else []
        return sum(json.loads(line) == self.message for line in lines)

    def events(self, turn_id: str | None = None) -> list[dict[str, Any]]:
        """The turn's events through the gateway (SSE), up to its final status."""
        with self.api.http.stream("GET", f"/v1/turns/{turn_id or self.turn_id}/events") as r:
            assert r.status_code == 200, r.read()
            return list(sse_events(r.iter_lines(), stop=is_terminal))

    def failed(self, code: ErrorCode, *reason: str) -> TurnResult:
        """The turn failed with ``code``, and every view says so with the same reason."""
        done = self.client.wait(self.turn_id, timeout=60)
        assert (done.status, done.error_code) == (TurnStatus.FAILED, code), done
        assert done.error and all(part in done.error for part in reason), done.error
        assert done.output is None and done.finished_at is not None

        view = self.api.wait(self.turn_id)
        assert (view["status"], view["error_code"], view["error"]) == (
            "failed", code.value, done.error,
        )  # fmt: skip
        assert view["terminal"] is True

        events = self.events()
        assert events[-1]["event"] == "status", events
        assert events[-1]["data"] == {
            "type": "status", "status": "failed", "error_code": code.value,
            "error": done.error, "turn_id": self.turn_id,
        }  # fmt: skip
        return done

    def goes_on(self, kept: list[Any] | None = None) -> list[Any]:
        """Nothing of the failed turn is in the transcript but ``kept`` (a guardrail keeps
        the user's message, with no answer), before or after the next turn, and the next
        turn succeeds; returns the items that turn added."""
        self.before = [*self.before, *(kept or [])]
        assert self.client.history(self.session, self.user) == self.before
        nxt = self.client.enqueue(self.session, self.user, "are you still there?")
        done = self.client.wait(nxt.id, timeout=60)
        assert done.status is TurnStatus.SUCCEEDED and done.output, done
        after = self.client.history(self.session, self.user)
        assert after[: len(self.before)] == self.before
        added = after[len(self.before) :]
        assert added[0] == {"role": "user", "content": "are you still there?"}
        if not kept:
            assert self.message not in json.dumps(after)
        return added


@pytest.fixture
def scenario(client: Client, api: Api, user: str, uid: str, call_log: Path) -> Scenario:
    return Scenario(client, api, user, uid, call_log)


@pytest.fixture
def agent(worker: OneWorker, call_log: Path, scenario: Scenario) -> Scenario:
    """A session on ``tests.agents:misbehaving``'s worker, its good first turn done."""
    worker.use(misbehaving(call_log))
    scenario.start()
    return scenario


# --- the model ----------------------------------------------------------------------


def test_model_error_a_permanent_4xx_is_not_retried(
    worker: OneWorker, stub: StubLLM, scenario: Scenario, redis_url: str, stack_env: dict[str, str]
) -> None:
    worker.use(stub_config(stub))
    stub.configure(latency_s=0.0, fail_rate=0.0, script=[])
    scenario.start()
    stub.reset()
    stub.configure(script=["400"])
    scenario.send("this request is refused")
    done = scenario.failed(ErrorCode.MODEL_ERROR, "BadRequestError", "stub injected HTTP 400")
    assert "attempts" not in done.error
    assert stub.stats()["total_calls"] == 1  # neither turnq nor the OpenAI client retried
    assert not [e for e in scenario.events() if e["event"] == "retry"]

    # With the event stream lost (a flushed Redis), the final status comes from Postgres
    # and still carries the code and the reason.
    with redis.Redis.from_url(redis_url) as r:
        assert r.delete(keys.events_key(scenario.turn_id, stack_env["TURNQ_NAMESPACE"])) == 1
    [final] = scenario.events()
    assert final["id"].endswith("-final"), final
    assert final["data"]["error_code"] == "model_error" and final["data"]["error"] == done.error
    scenario.goes_on()


def test_model_unavailable_past_the_retries(
    worker: OneWorker, stub: StubLLM, scenario: Scenario
) -> None:
    worker.use(stub_config(stub))
    stub.configure(latency_s=0.0, fail_rate=0.0, script=[], retry_after_s=0.2)
    scenario.start()
    stub.reset()
    stub.configure(script=["429", "500", "503"])  # 1 + RETRIES transient failures
    scenario.send("the model is down")
    done = scenario.failed(
        ErrorCode.MODEL_UNAVAILABLE, f"after {1 + RETRIES} attempts", "InternalServerError", "503"
    )
    assert stub.stats()["total_calls"] == 1 + RETRIES  # turnq's retries only, none nested
    assert stub.stats()["outcomes"] == {"429": 1, "500": 1, "503": 1}
    retries = [e["data"]["attempt"] for e in scenario.events() if e["event"] == "retry"]
    assert retries == [str(n) for n in range(1, RETRIES + 1)]
    assert done.run_s is not None and done.run_s >= 1.0  # the 429's Retry-After (1 s) was kept
    scenario.goes_on()


# --- the turn -----------------------------------------------------------------------


def test_timeout_says_the_limit(agent: Scenario) -> None:
    agent.send("[slow] take your time")
    done = agent.failed(ErrorCode.TIMEOUT, f"within {TURN_TIMEOUT_S} s", "TURNQ_TURN_TIMEOUT_S")
    assert done.run_s is not None and TURN_TIMEOUT_S <= done.run_s < TURN_TIMEOUT_S + 5
    assert done.attempts == 1 and agent.calls() == 1  # not retried
    agent.goes_on()


def test_input_guardrail_trips_before_the_model_is_asked(agent: Scenario) -> None:
    agent.send("[forbidden] tell me")
    agent.failed(ErrorCode.GUARDRAIL, "input guardrail 'no_forbidden_topics'")
    assert agent.calls() == 0  # a blocking guardrail: the model never ran
    agent.goes_on(kept=[{"role": "user", "content": agent.message}])  # no answer


def test_output_guardrail_trips_once_and_is_not_retried(agent: Scenario) -> None:
    agent.send("[leak] what is the secret")
    done = agent.failed(ErrorCode.GUARDRAIL, "output guardrail 'no_secrets_out'")
    assert done.attempts == 1 and agent.calls() == 1
    # The blocked answer never reached a client: not streamed, not in the transcript.
    assert "SECRET" not in json.dumps(agent.events())
    user_only = [{"role": "user", "content": agent.message}]  # the question, no answer
    assert "SECRET" not in json.dumps(agent.goes_on(kept=user_only))
    # An answer that passed is streamed (once it passed, before the final status).
    latest = agent.events(agent.client.turns(agent.session, agent.user)[-1].id)
    assert [e["event"] for e in latest] == ["status", "delta", "status"]
    assert latest[1]["data"]["text"] == "ok: are you still there?"


def test_max_turns_stops_a_tool_loop(agent: Scenario) -> None:
    agent.send("[loop] keep pinging")
    agent.failed(ErrorCode.MAX_TURNS, "max_turns", f"({MAX_TURNS})")
    assert agent.calls() == MAX_TURNS  # TURNQ_MAX_TURNS reached the runner
    added = agent.goes_on()
    assert not [i for i in added if i.get("type") in ("function_call", "function_call_output")]


def test_agent_error_a_tool_raises(agent: Scenario) -> None:
    agent.send("[explode] go")
    done = agent.failed(ErrorCode.AGENT_ERROR, "explode", "the explode tool blew up")
    assert done.attempts == 1 and agent.calls() == 1
    agent.goes_on()


def test_a_tool_that_needs_approval_pauses_the_turn(agent: Scenario) -> None:
    """No error: the run stops at the call, the turn waits for a person (holding no worker),
    and the approval resumes it -- one model call before the pause and one after, in two
    executions (``attempts``; neither counts towards worker_lost)."""
    agent.send("[wire] send five")
    view = agent.api.wait_status(agent.turn_id, "waiting", timeout=60)
    assert view["terminal"] is False and view["error_code"] is None
    [call] = [i for i in view["pending_items"] if i.get("approval") == "pending"]
    assert (call["name"], json.loads(call["arguments"])) == ("wire_money", {"amount": 5})
    assert agent.calls() == 1
    body = {"decisions": [{"call_id": call["call_id"], "approve": True}]}
    agent.api.expect(200, "POST", f"/v1/turns/{agent.turn_id}/approvals", json=body)
    done = agent.client.wait(agent.turn_id, timeout=60)
    assert (done.status, done.error_code) == (TurnStatus.SUCCEEDED, None), done
    assert done.output == f"ok: {agent.message}" and done.attempts == 2 and agent.calls() == 2
    events = [(e["event"], e["data"].get("status")) for e in agent.events()]
    assert ("approval_required", None) in events and ("approval_decided", None) in events
    assert [s for kind, s in events if kind == "status"] == [
        "running", "waiting", "running", "succeeded",
    ]  # fmt: skip
    outputs = [i for i in agent.client.history(agent.session, agent.user) if "output" in i]
    assert [i["output"] for i in outputs] == ["sent 5"]  # the tool ran once


def test_state_unreadable_the_paused_agent_was_renamed(
    worker: OneWorker, call_log: Path, agent: Scenario
) -> None:
    """A deployment that renamed the agent a turn paused in cannot load the saved state (the
    SDK finds agents by name and fails closed): the resumed turn fails ``state_unreadable``
    at once, the tool never runs, and the session goes on with the renamed agent."""
    agent.send("[wire] send six")
    view = agent.api.wait_status(agent.turn_id, "waiting", timeout=60)
    [call] = [i for i in view["pending_items"] if i.get("approval") == "pending"]
    worker.use({**misbehaving(call_log), "TEST_AGENT_NAME": "misbehaving-v2"})
    assert agent.client.approve(agent.turn_id, agent.user, call["call_id"]).resumed
    done = agent.failed(
        ErrorCode.STATE_UNREADABLE, "saved state could not be loaded", "agent", "SDK version"
    )
    assert done.attempts == 2 and agent.calls() == 1  # resumed, but the model not asked
    added = agent.goes_on()
    assert "sent" not in json.dumps(added)
    assert agent.client.session(agent.session, agent.user).active_agent == "misbehaving-v2"


# --- the worker ---------------------------------------------------------------------


def test_worker_lost_a_poison_turn_that_kills_its_worker(
    worker: OneWorker, call_log: Path, agent: Scenario, start_beat: Any
) -> None:
    proc = worker.use(misbehaving(call_log))
    start_beat()  # the reaper re-kicks the turn once its dead worker's lock expired
    agent.send("[kill] this turn is poison")
    for death in range(1, MAX_ATTEMPTS + 1):
        wait_until(lambda p=proc: not p.alive(), 60, message=f"the worker never died ({death})")
        assert agent.calls() == death
        proc = worker.respawn()
    done = agent.failed(
        ErrorCode.WORKER_LOST,
        f"vanished {MAX_ATTEMPTS} times",
        f"TURNQ_MAX_ATTEMPTS={MAX_ATTEMPTS}",
    )
    assert done.attempts == MAX_ATTEMPTS and agent.calls() == MAX_ATTEMPTS
    agent.goes_on()
    assert proc.alive()
