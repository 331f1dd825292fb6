"""B9's CPU target against the Agents SDK alone: what a turn costs without turnq at all.

B9's target is a production-shape turn (a tool call, then 300 tokens at ~80/s) costing
<= 1.5x the worker CPU of an instant turn.  This runs the same turns with a plain
``Runner.run_streamed`` in one process -- the demo agent, the same OpenAI client as a
worker (``shared.models._client``: fast parse, one connection pool), the same
`turnq stub-llm` profiles over HTTP, no queue, no Postgres, no Redis -- and reports the
process's CPU per turn for each profile and the ratio.  If the SDK alone is above 1.5x,
no queue around it can meet the target.

    python -m benchmarks.b9_sdk_floor [--turns 40] [--concurrency 20]
"""

from __future__ import annotations

import argparse
import asyncio
import time
from typing import Any

from agents import RunConfig, Runner

from benchmarks.b9_production_shape import STUBS
from benchmarks.common import table
from shared.demo_agent import build_agent
from shared.models import _client, _openai_model
from shared.settings import Settings
from tests.support.stub_llm import stub_llm_process


async def _turns(base_url: str, turns: int, concurrency: int) -> float:
    """CPU seconds of this process per turn, ``turns`` streamed turns ``concurrency`` at once."""
    settings = Settings(openai_base_url=base_url, openai_api_key="test", openai_api="chat")
    client = _client(settings)
    config = RunConfig(tracing_disabled=True, model=_openai_model("turnq-stub", settings, client))
    gate = asyncio.Semaphore(concurrency)

    async def one(i: int) -> None:
        async with gate:
            result: Any = Runner.run_streamed(
                build_agent(), f"Good morning {i}!", run_config=config
            )
            text = ""
            async for event in result.stream_events():
                data = getattr(event, "data", None)
                if getattr(data, "type", "") == "response.output_text.delta":
                    text += data.delta
            assert text and result.final_output

    await asyncio.gather(*(one(i) for i in range(2)))  # warm: imports, connections
    cpu = time.process_time()
    await asyncio.gather(*(one(i) for i in range(turns)))
    cpu = time.process_time() - cpu
    await client.close()
    return cpu / turns


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--turns", type=int, default=40)
    ap.add_argument("--concurrency", type=int, default=20)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    cpu: dict[str, list[float]] = {name: [] for name in STUBS}
    for _ in range(args.rounds):  # rounds interleave the profiles
        for name, options in STUBS.items():
            with stub_llm_process(*options) as stub:
                cpu[name].append(
                    asyncio.run(_turns(stub.url + "/v1", args.turns, args.concurrency))
                )
    med = {name: sorted(v)[len(v) // 2] * 1000 for name, v in cpu.items()}
    rows = [[name, f"{med[name]:.1f}", f"{med[name] / med['instant']:.2f}"] for name in med]
    print(
        table(
            "B9 profiles through the Agents SDK alone (no turnq)",
            ["profile", "CPU ms/turn", "x instant"],
            rows,
        )
    )
    print(
        "shape = a tool call, then 300 tokens at 70-90/s; flat = the same at once; target <= 1.5x"
    )


if __name__ == "__main__":
    main()
