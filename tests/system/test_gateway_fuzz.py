"""Schema-driven fuzzing (Schemathesis) of the running gateway with a valid key.

Every operation in /openapi.json gets generated requests, valid and invalid; every
answer must be a documented status with a body that matches its documented schema,
and none may be a 5xx.  Bounded: 50 examples per operation.
"""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.specs.openapi.checks import positive_data_acceptance

from producer.gateway import create_app
from shared.settings import Settings
from shared.validation import EVENT_ID
from tests.system.test_gateway_support import GatewayProcess, new_key

pytestmark = pytest.mark.system


@pytest.fixture(scope="module")
def fuzz_gateway(stack_env: dict[str, str]) -> Iterator[GatewayProcess]:
    g = GatewayProcess(
        {**stack_env, "TURNQ_GATEWAY_RATE_PER_S": "100000", "TURNQ_GATEWAY_RATE_BURST": "100000"},
        "gateway-fuzz",
    )
    g.start()
    yield g
    g.stop()
    assert "Traceback" not in g.log_text(), g.log_text()[-3000:]


@pytest.fixture(scope="module")
def fuzz_key(database_url: str) -> str:
    return new_key(database_url, "fuzzer")


# The schema is built from the same app factory the gateway runs (schemathesis's lazy
# fixture loader does not work with pytest 9); the test checks the served one is equal.
SCHEMA = create_app(Settings()).openapi()
schema = schemathesis.openapi.from_dict(SCHEMA)


def test_the_served_schema_is_the_one_fuzzed(fuzz_gateway: GatewayProcess) -> None:
    assert httpx.get(f"{fuzz_gateway.url}/openapi.json", timeout=10).json() == SCHEMA


@schema.parametrize()
@settings(max_examples=50, deadline=None, suppress_health_check=list(HealthCheck))
def test_no_server_errors_and_responses_match_the_schema(
    case: schemathesis.Case, fuzz_gateway: GatewayProcess, fuzz_key: str
) -> None:
    excluded = []
    label, body = case.operation.label, case.body if isinstance(case.body, dict) else {}
    if label in ("GET /v1/sessions", "GET /v1/approvals") and "cursor" in (case.query or {}):
        # An opaque cursor is valid only if this API issued it; a schema cannot say that.
        excluded.append(positive_data_acceptance)
    if label == "POST /v1/sessions/{session_id}/turns" and body.get("agent") is not None:
        # Valid only if the deployment has that agent (GET /v1/agents), which the schema
        # does not list.
        excluded.append(positive_data_acceptance)
    decisions = body.get("decisions")
    listed = decisions if isinstance(decisions, list) else []
    calls = [d.get("call_id") for d in listed if isinstance(d, dict)]
    if len(calls) != len(set(map(str, calls))):
        # Each call may be decided once per request (422); a schema cannot say that of a
        # field inside the list's objects.
        excluded.append(positive_data_acceptance)
    last_id = (case.headers or {}).get("Last-Event-ID")
    if last_id is not None and not EVENT_ID.fullmatch(str(last_id)):
        # Schemathesis's coverage phase labels some pattern-violating header values (e.g.
        # the integer 0) as positive; the 422 they get is right.
        excluded.append(positive_data_acceptance)
    case.call_and_validate(
        base_url=fuzz_gateway.url,
        headers={"Authorization": f"Bearer {fuzz_key}"},
        excluded_checks=excluded,
        timeout=30,
    )


def test_the_fuzzing_reached_every_route_and_no_5xx(fuzz_gateway: GatewayProcess) -> None:
    """Runs after the fuzzing (file order): the gateway's own counters agree."""
    metrics = httpx.get(f"{fuzz_gateway.url}/metrics", timeout=10).text
    counts: dict[str, float] = {}
    for line in metrics.splitlines():
        if line.startswith("turnq_http_requests_total{"):
            labels, value = line.rsplit(" ", 1)
            counts[labels] = float(value)
    assert not [k for k in counts if 'status="5' in k], counts
    routes = {k.split('route="')[1].split('"')[0] for k in counts}
    assert set(SCHEMA["paths"]) <= routes, routes
    print(f"fuzzing sent {sum(counts.values()):.0f} requests")
    assert sum(counts.values()) > 300
