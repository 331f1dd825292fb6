"""The model misbehaves under load: 429 with Retry-After, 500s, timeouts, malformed bodies.

The workers talk to a real ``turnq stub-llm`` process over HTTP through the OpenAI client
(Chat Completions), the same code path as a real endpoint.  Transient faults are retried
(by turnq's one retry layer, with backoff and Retry-After; the OpenAI client's own retries
are off) and every turn succeeds; a permanent failure (HTTP 400, or 500s that outlast the
retries) fails the turn with an error that says what happened, writes nothing to the
history, and the session's next turn runs normally.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from ops.processes import ManagedProcess
from producer import Client
from shared.settings import Settings
from shared.status import TurnStatus
from tests.chaos.harness import Cluster, Load, gap, pick, run_under_load, time_limit
from tests.support.stub_llm import StubLLM, stub_llm_process
from tests.system.conftest import FAST_RECOVERY

pytestmark = [pytest.mark.chaos, pytest.mark.system, pytest.mark.timeout(time_limit(240))]

# Each transient fault in turn: SCRIPTED calls that fail for sure (each followed by a good
# one), then the fault at this rate.  turnq is the only retry layer (RETRIES retries, so
# RETRIES + 1 attempts a call): a turn fails spuriously with probability rate**(RETRIES + 1),
# 0.25**9 = 4e-6, over ~100 turns a run.  (With 3 retries and 0.4 it was 0.4**4 = 2.6% a
# turn: a run failed about one time in two.)
TRANSIENT = {"429": 0.25, "500": 0.25, "timeout": 0.2, "malformed": 0.05}
SCRIPTED = 4
RETRIES = 8


@pytest.fixture(scope="module")
def stub() -> Iterator[StubLLM]:
    with stub_llm_process() as s:
        yield s


def model_env(stub: StubLLM, retries: int) -> dict[str, str]:
    return {
        **FAST_RECOVERY,
        **stub.worker_env("chat"),
        "TURNQ_MODEL_RETRIES": str(retries),
        "TURNQ_MODEL_TIMEOUT_S": "2",
    }


@pytest.fixture
def workers_for(stack_env: dict[str, str], stub: StubLLM) -> Iterator[object]:
    """Factory: two workers on the stub with ``retries`` model retries, stopped after."""
    clusters: list[Cluster] = []

    def start(retries: int) -> list[ManagedProcess]:
        cluster = Cluster({**stack_env, **model_env(stub, retries)})
        clusters.append(cluster)
        procs: list[ManagedProcess] = [cluster.worker("m1"), cluster.worker("m2"), cluster.beat()]
        cluster.start(*procs)
        return procs

    yield start
    for c in clusters:
        c.close()


def healthy(stub: StubLLM) -> None:
    stub.configure(latency_s=0.2, fail_rate=0.0, script=[], retry_after_s=0.5, timeout_s=4)


def test_transient_model_faults_are_retried_until_turns_succeed(
    stub: StubLLM, workers_for: object, stack_env: dict[str, str], uid: str
) -> None:
    assert callable(workers_for)
    procs: list[ManagedProcess] = workers_for(RETRIES)
    healthy(stub)
    stub.reset()

    def faults(load: Load) -> None:
        for n in range(len(TRANSIENT)):
            outcome = pick(list(TRANSIENT), n)
            stub.configure(
                script=[outcome, "ok"] * SCRIPTED,
                fail_rate=TRANSIENT[outcome],
                fail_outcome=outcome,
                seed=n + 1,
            )
            load.keep_going(gap(1.5))
        healthy(stub)

    row = run_under_load(
        "model 429/500/timeout/malformed", Settings(), stack_env["TURNQ_DATABASE_URL"],
        f"model-{uid}", faults, suspects=lambda: procs, rate=10.0,
    )  # fmt: skip
    assert row.failed == 0, row.summary()  # every transient fault was retried away
    injected = stub.stats()["outcomes"]
    for outcome in TRANSIENT:
        assert injected.get(outcome, 0) > 0, f"no {outcome} was injected: {injected}"
    row.fault += f" ({sum(n for o, n in injected.items() if o != 'ok')} calls failed)"
    # No overlap check on the stub's side here: a call the client gave up on (timeout) stays
    # "in flight" for the stub until it notices the hang-up, while the retry has started.
    # The row's checks (run times of consecutive turns, attempts) cover I1.


def test_permanent_model_failure_fails_the_turn_clearly_and_the_session_goes_on(
    stub: StubLLM, workers_for: object, stack_env: dict[str, str], uid: str
) -> None:
    assert callable(workers_for)
    procs: list[ManagedProcess] = workers_for(1)  # 2 x 2 calls, then the turn fails
    healthy(stub)
    stub.reset()
    database_url = stack_env["TURNQ_DATABASE_URL"]

    def break_model(load: Load) -> None:
        for outcome in ("400", "500"):  # refused outright; down for longer than the retries
            stub.configure(fail_rate=1.0, fail_outcome=outcome)
            load.keep_going(gap(1.5 if outcome == "400" else 4.0))
            healthy(stub)
            load.keep_going(gap(1.0))

    user = f"perm-{uid}"
    row = run_under_load(
        "model 400 / 500s past retries", Settings(), database_url, user, break_model,
        suspects=lambda: procs, rate=10.0,
    )  # fmt: skip
    assert row.failed > 0, "no turn failed: the test proved nothing"
    assert stub.stats()["overlapping_conversations"] == 0  # I1 from the model's side
    with Client.from_settings() as client:
        failed_sessions: set[str] = set()
        all_errors: list[str] = []
        for session in row.sessions:
            turns = client.turns(session, user)
            errors = [t.error or "" for t in turns if t.status is TurnStatus.FAILED]
            for error in errors:  # the error says what the model answered
                assert "400" in error or "500" in error, error
            if errors:
                failed_sessions.add(session)
                all_errors += errors
        assert any("400" in e for e in all_errors), "no turn failed on the 400"
        assert any("500" in e for e in all_errors), "no turn outlasted its retries on 500s"
        # Each session that saw a failure still works.
        nxt = [client.enqueue(s, user, "still there?") for s in sorted(failed_sessions)]
        for t in nxt:
            assert client.wait(t.id, timeout=60).status is TurnStatus.SUCCEEDED
