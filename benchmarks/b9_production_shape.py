"""B9: cost per turn at production shape (issue 15).

The model is `turnq stub-llm` over HTTP with the realistic profile: each turn first calls
a tool, then streams a 300-token answer at ~80 tokens/s (a rate drawn in 70-90 per call,
first-byte jitter up to 0.2 s).  One-turn sessions arrive at a steady rate (5 a second:
~0.55 of a core for the worker, the load capacity.md plans per process, not a burst), and
a reader follows every turn with ``AsyncClient.events``, as the gateway's SSE does.
Everything runs on a private redis-server, so ``INFO commandstats`` counts this
benchmark's commands only.

Arms, on the same Redis and Postgres, one worker process each, one after the other (the
others paused) in 5 interleaved rounds, in one run; every arm but ``realistic`` runs 15 %
of the sessions; figures pool the rounds:

* ``realistic``: the production shape with coalesced deltas (``TURNQ_STREAM_FLUSH_MS=50``);
* ``per_delta``: the same with ``TURNQ_STREAM_FLUSH_MS=0`` (one stream entry per token, as
  before coalescing): the latency and command baseline;
* ``flush_100ms``, ``flush_250ms`` (full mode only): the same, coarser: the trade-off of
  commands against latency;
* ``same_at_once`` (full mode only): the same turns (tool call, 300 tokens) with every
  token sent at once;
* ``instant``: the stub's default model (an instant, short answer; no tool call).

Figures:

* Redis commands per turn: all commands (workers, producer, readers) / turns; target <= 40;
  Redis CPU per turn (the server's process), and this process's (the producer and readers);
* worker CPU ms per turn, realistic / instant (and / same_at_once); target <= 1.5x;
* text latency: every filler token carries the millisecond the stub sent it (the profile's
  ``stamp``); a reader subtracts it from the time it received the token.  "Added by
  coalescing" is measured where it happens: the worker's ``turnq_stream_text_hold_seconds``
  (per stream entry, how long its oldest text waited to be coalesced: the most it delayed
  a reader), p99 from its buckets (target <= 100 ms).  Beside it, end to end: the
  realistic arm's token latency minus the per-delta arm's, p50 and p99 (on a busy shared
  machine the p99s measure CPU starvation more than coalescing).  (The time from the stub
  to the XADD is no longer read from entry ids: a text chunk's id is its anchor's, 0014.)

    python -m benchmarks.b9_production_shape [--sessions 1000] [--rate 5]
"""

from __future__ import annotations

import argparse
import asyncio
import math
import os
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families

from benchmarks.common import median, pct, running, scratch_stack, table, turnq_worker, wait_turns
from benchmarks.resources import Meter, server_pids
from ops.devstack import free_port
from shared import keys
from shared.models.profile import read_stamps
from tests.support.servers import PrivateRedis
from tests.support.stub_llm import stub_llm_process

REALISTIC = ("--profile", "realistic", "--tool-first", "--tokens-per-s", "70-90")
CONCURRENCY = 1100
ROUNDS = 5


@contextmanager
def private_redis(env: dict[str, str]) -> Iterator[PrivateRedis]:
    """The run's Redis on a server of its own (commandstats count nothing else)."""
    with PrivateRedis() as server:
        old = os.environ.get("TURNQ_REDIS_URL")
        env["TURNQ_REDIS_URL"] = os.environ["TURNQ_REDIS_URL"] = server.url
        from shared.settings import get_settings

        get_settings.cache_clear()
        try:
            yield server
        finally:
            if old is not None:
                os.environ["TURNQ_REDIS_URL"] = old
            get_settings.cache_clear()


def commands(server: PrivateRedis) -> Counter[str]:
    with server.client() as r:
        stats = r.info("commandstats")
    return Counter({k.removeprefix("cmdstat_"): int(v["calls"]) for k, v in stats.items()})


async def _follow(client: Any, turn_id: str, user: str, out: dict[str, list[float]]) -> None:
    async for _, event in client.events(turn_id, user):
        if event.get("type") != "delta":
            continue
        now = time.time()
        for sent in read_stamps(event["text"]):
            out["latency"].append(now - sent)
        out["entries"].append(1.0)


async def _arrive(
    keys: list[str], rate: float, namespace: str
) -> tuple[list[str], dict[str, list[float]]]:
    """Enqueue one turn per key at ``rate`` per second, each followed by a reader."""
    from producer import AsyncClient
    from shared.settings import Settings

    out: dict[str, list[float]] = {"latency": [], "entries": []}
    ids: list[str] = []
    readers = []
    async with AsyncClient.from_settings(Settings(namespace=namespace)) as client:
        start = time.monotonic()
        for i, key in enumerate(keys):
            await asyncio.sleep(max(0.0, start + i / rate - time.monotonic()))
            turn = await client.enqueue(key, "bench", "Good morning! Any news?")
            ids.append(turn.id)
            readers.append(asyncio.create_task(_follow(client, turn.id, "bench", out)))
        await asyncio.gather(*readers)
    return ids, out


@dataclass
class Sample:
    """What one arm measured in one round; rounds add up (``+``)."""

    turns: int = 0
    succeeded: int = 0
    spent: Counter[str] = field(default_factory=Counter)
    worker_cpu_s: float = 0.0
    cpu_s: float = 0.0
    redis_cpu_s: float = 0.0
    client_cpu_s: float = 0.0  # this process: the producer and every reader
    wall_s: float = 0.0
    peak_mb: float = 0.0
    stream_bytes: list[float] = field(default_factory=list)
    latency_ms: list[float] = field(default_factory=list)
    hold: Counter[float] = field(default_factory=Counter)  # the worker's histogram buckets

    def __add__(self, o: Sample) -> Sample:
        return Sample(
            self.turns + o.turns, self.succeeded + o.succeeded, self.spent + o.spent,
            self.worker_cpu_s + o.worker_cpu_s, self.cpu_s + o.cpu_s,
            self.redis_cpu_s + o.redis_cpu_s, self.client_cpu_s + o.client_cpu_s,
            self.wall_s + o.wall_s,
            max(self.peak_mb, o.peak_mb), self.stream_bytes + o.stream_bytes,
            self.latency_ms + o.latency_ms, self.hold + o.hold,
        )  # fmt: skip

    def figures(self) -> dict[str, Any]:
        n = max(self.turns, 1)
        return {
            "turns": self.turns,
            "succeeded": self.succeeded,
            "redis_commands_per_turn": sum(self.spent.values()) / n,
            "redis_top": {k: round(v / n, 1) for k, v in self.spent.most_common(12)},
            "stream_entries_per_turn": self.spent["xadd"] / n,
            "stream_kb_per_turn": median(self.stream_bytes) / 1024,
            "worker_cpu_ms_per_turn": self.worker_cpu_s * 1000 / n,
            "cpu_ms_per_turn": self.cpu_s * 1000 / n,
            "redis_cpu_ms_per_turn": self.redis_cpu_s * 1000 / n,
            "client_cpu_ms_per_turn": self.client_cpu_s * 1000 / n,
            "worker_cores": self.worker_cpu_s / self.wall_s if self.wall_s else 0.0,
            "peak_mb_per_worker": self.peak_mb,
            "tokens_timed": len(self.latency_ms),
            "latency_p50_ms": pct(self.latency_ms, 50),
            "latency_p99_ms": pct(self.latency_ms, 99),
            "hold_p50_ms": bucket_pct(self.hold, 50) * 1000,
            "hold_p99_ms": bucket_pct(self.hold, 99) * 1000,
        }


def hold_buckets(worker: Any) -> Counter[float]:
    """The worker's ``turnq_stream_text_hold_seconds`` cumulative bucket counts."""
    text = httpx.get(f"http://127.0.0.1:{worker.env['TURNQ_METRICS_PORT']}/metrics").text
    out: Counter[float] = Counter()
    for family in text_string_to_metric_families(text):
        if family.name == "turnq_stream_text_hold_seconds":
            for sample in family.samples:
                if sample.name.endswith("_bucket"):
                    out[float(sample.labels["le"])] = int(sample.value)
    return out


def bucket_pct(buckets: Counter[float], p: float) -> float:
    """A percentile from cumulative histogram buckets (linear within a bucket)."""
    bounds = sorted(buckets)
    total = buckets[math.inf] if bounds else 0
    if not total:
        return math.nan
    rank, low, below = total * p / 100, 0.0, 0
    for le in bounds:
        if buckets[le] >= rank:
            if math.isinf(le):
                return low
            inside = buckets[le] - below
            return low + (le - low) * ((rank - below) / inside if inside else 1.0)
        low, below = le, buckets[le]
    return low


def text_bytes(server: PrivateRedis, ns: str) -> int:
    """The memory of the workers' text streams (decision 0014)."""
    with server.client() as r:
        return sum(int(r.memory_usage(k) or 0) for k in r.scan_iter(f"{ns}turnq:text:*"))


def measure(
    env: dict[str, str], server: PrivateRedis, worker: Any, sessions: list[str], rate: float
) -> Sample:
    """One turn per session arriving at ``rate``, each read to its end; what they cost."""
    ns = worker.env["TURNQ_NAMESPACE"]
    text_before = text_bytes(server, ns)  # before the count: its SCAN is not the turns'
    before, held = commands(server), hold_buckets(worker)
    meter = Meter([worker.pid], servers={**server_pids(), "redis": server.proc.pid}).start()
    client_cpu = time.process_time()
    ids, seen = asyncio.run(_arrive(sessions, rate, ns))
    client_cpu = time.process_time() - client_cpu
    done = wait_turns(env, ids)
    usage = meter.stop()
    spent = commands(server) - before
    hold = hold_buckets(worker)
    hold.subtract(held)
    text_each = (text_bytes(server, ns) - text_before) / max(len(ids), 1)
    with server.client() as r:  # a turn's stream (a sample) and its share of the text streams
        stream_bytes = [
            int(r.memory_usage(keys.events_key(t, ns)) or 0) + text_each for t in ids[:20]
        ]
    return Sample(
        len(ids), int(done["succeeded"]), spent, usage.cpu_s["worker"], usage.total_cpu_s,
        usage.cpu_s["redis"], client_cpu, usage.wall_s, usage.peak_mb_per_worker, stream_bytes,
        [x * 1000 for x in seen["latency"]], hold,
    )  # fmt: skip


PACED = Path(__file__).resolve().parent / "patches" / "paced_reads"

# arm -> (stub, worker settings, quick): "shape" is the realistic stub, "flat" the same
# answers delivered at once, "instant" the stub's default short answer.
ARMS: dict[str, tuple[str, dict[str, str], bool]] = {
    "realistic": ("shape", {}, True),
    "per_delta": ("shape", {"TURNQ_STREAM_FLUSH_MS": "0"}, True),
    "flush_100ms": ("shape", {"TURNQ_STREAM_FLUSH_MS": "100"}, False),
    "flush_250ms": ("shape", {"TURNQ_STREAM_FLUSH_MS": "250"}, False),
    "same_at_once": ("flat", {}, False),
    "instant": ("instant", {}, True),
    # decision 0015 (measured, dropped): benchmarks/patches/paced_reads, only with --arms
    "paced_25ms": ("shape", {"PYTHONPATH": str(PACED), "BENCH_READ_PACE_MS": "25"}, False),
    "paced_50ms": ("shape", {"PYTHONPATH": str(PACED), "BENCH_READ_PACE_MS": "50"}, False),
}
OPT_IN = ("paced_25ms", "paced_50ms")
NEEDED = ("realistic", "per_delta", "instant")  # the ratios and the latency added
STUBS = {
    "shape": REALISTIC,
    "flat": (*REALISTIC[:3], "--tokens-per-s", "0", "--jitter", "0"),
    "instant": (),
}


def run(
    quick: bool = False,
    sessions: int | None = None,
    rate: float | None = None,
    only: list[str] | None = None,
) -> dict[str, Any]:
    sessions = sessions or (12 if quick else 1000)
    rate = rate or 5.0
    others = 6 if quick else max(30, sessions * 3 // 20)
    rounds = 1 if quick else ROUNDS
    arms = {
        k: v
        for k, v in ARMS.items()
        if (v[2] or not quick) and (k in only if only else k not in OPT_IN)
    }
    arms |= {k: ARMS[k] for k in NEEDED}
    pooled = {name: Sample() for name in arms}
    with ExitStack() as stack:
        env = stack.enter_context(scratch_stack())
        server = stack.enter_context(private_redis(env))
        needed = {stub for stub, _, _ in arms.values()}
        stubs = {k: stack.enter_context(stub_llm_process(*STUBS[k])) for k in needed}
        stubs["shape"].configure(stamp=True)
        ns = env["TURNQ_NAMESPACE"]
        workers = {
            name: turnq_worker(
                env, f"b9{name}", CONCURRENCY, **stubs[stub].worker_env("chat"), **extra,
                TURNQ_WORKER_CONCURRENCY=str(CONCURRENCY), TURNQ_NAMESPACE=f"{ns}{name}:",
                TURNQ_METRICS_PORT=str(free_port()),
            )
            for name, (stub, extra, _) in arms.items()
        }  # fmt: skip
        with running(list(workers.values())):
            with ThreadPoolExecutor(len(workers)) as pool:  # warm up all at once, then sleep
                warm = [[f"warm-{name}-{i}" for i in range(2)] for name in workers]
                list(pool.map(partial(measure, env, server, rate=rate), workers.values(), warm))
            for w in workers.values():
                w.pause()
            for r in range(rounds):  # rounds interleave the arms: load spikes hit them all
                for name, w in workers.items():
                    w.resume()
                    n = (sessions if name == "realistic" else others) // rounds
                    names = [f"b9{name}-{r}-{i}" for i in range(n)]
                    pooled[name] += measure(env, server, w, names, rate)
                    w.pause()
            for w in workers.values():
                w.resume()
    results = {name: sample.figures() for name, sample in pooled.items()}
    real, delta = results["realistic"], results["per_delta"]
    return {
        "sessions": sessions,
        "rate": rate,
        "redis_commands_per_turn": real["redis_commands_per_turn"],
        "per_delta_commands_per_turn": delta["redis_commands_per_turn"],
        "cpu_ratio": real["worker_cpu_ms_per_turn"] / results["instant"]["worker_cpu_ms_per_turn"],
        "cpu_ratio_same_at_once": (
            real["worker_cpu_ms_per_turn"] / results["same_at_once"]["worker_cpu_ms_per_turn"]
            if "same_at_once" in results
            else None
        ),
        "latency_p99_ms": real["latency_p99_ms"],
        "latency_added_p99_ms": real["latency_p99_ms"] - delta["latency_p99_ms"],
        "latency_added_p50_ms": real["latency_p50_ms"] - delta["latency_p50_ms"],
        "hold_p99_ms": real["hold_p99_ms"],
        "cpu_ms_per_turn": real["cpu_ms_per_turn"],  # all roles, as in the other rows
        "worker_cpu_ms_per_turn": real["worker_cpu_ms_per_turn"],
        "peak_mb_per_worker": real["peak_mb_per_worker"],
        "failed": sum(r["turns"] - r["succeeded"] for r in results.values()),
        "arms": results,
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sessions", type=int, default=1000)
    ap.add_argument("--rate", type=float, default=5.0, help="turns arriving per second")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--arms", help="comma-separated arms (with " + ", ".join(NEEDED) + ")")
    args = ap.parse_args()
    only = args.arms.split(",") if args.arms else None
    d = run(args.quick, None if args.quick else args.sessions, args.rate, only)
    a = d["arms"]
    rows = [
        [
            name, r["turns"], f"{r['redis_commands_per_turn']:.1f}",
            f"{r['stream_entries_per_turn']:.1f}", f"{r['worker_cpu_ms_per_turn']:.1f}",
            f"{r['latency_p50_ms']:.0f} / {r['latency_p99_ms']:.0f}",
            f"{r['stream_kb_per_turn']:.1f}",
            f"{r['hold_p50_ms']:.0f} / {r['hold_p99_ms']:.0f}",
        ]
        for name, r in a.items()
    ]  # fmt: skip
    head = ["arm", "turns", "Redis cmds/turn", "XADD/turn", "worker CPU ms/turn",
            "token latency p50/p99 ms", "stream KB/turn", "held p50/p99 ms"]  # fmt: skip
    print(table(f"B9 production shape at {d['rate']:g} turns/s", head, rows))
    print(
        f"commands per turn {d['redis_commands_per_turn']:.1f} (target <= 40); CPU "
        f"{d['cpu_ratio']:.2f}x instant, {d['cpu_ratio_same_at_once'] or 0:.2f}x the same "
        f"answer at once (<= 1.5); text held p99 {d['hold_p99_ms']:.0f} ms (<= 100); "
        f"token latency added p50 {d['latency_added_p50_ms']:.0f} / p99 "
        f"{d['latency_added_p99_ms']:.0f} ms"
    )
    for name, r in a.items():
        print(
            f"{name}: Redis CPU {r['redis_cpu_ms_per_turn']:.2f} ms/turn, client (producer and "
            f"readers) CPU {r['client_cpu_ms_per_turn']:.2f} ms/turn; commands/turn",
            r["redis_top"],
        )


if __name__ == "__main__":
    main()
