"""B6: chat-turn latency with and without a backlog of 1,000 pending compactions.

Summarization has its own queue and worker pool (I7), so a backlog there must not
slow chat.  One run, phases interleaved: idle, backlog, idle, backlog.  The
summarizer is deliberately slow (0.2 s per compaction) so the backlog stays.

    python -m benchmarks.b6_compaction_backlog [--turns 300] [--backlog 1000]
"""

from __future__ import annotations

import argparse
import json
import time
import uuid

import psycopg
import redis

from benchmarks.common import median, pct, scratch_stack, table, turnq_worker
from ops.processes import WORKER_READY, ManagedProcess, worker_command

POLICY = {
    "TURNQ_CONTEXT_WINDOW_TOKENS": "4000",
    "TURNQ_COMPACT_TRIGGER": "0.5",
    "TURNQ_COMPACT_TARGET": "0.25",
    "TURNQ_SUMMARIZER": "tests.agents:slow_extractive",
    "TEST_SUMMARIZER_LATENCY_S": "0.2",
}


def seed_sessions(database_url: str, n: int) -> list[str]:
    """n sessions with 40 items each (over the trigger), inserted directly."""
    ids = [str(uuid.uuid4()) for _ in range(n)]
    text = "The quarterly report is due on Friday; remember the figures for region {}. " * 3
    with psycopg.connect(database_url) as conn, conn.cursor() as cur:
        for k, sid in enumerate(ids):
            cur.execute(
                "INSERT INTO sessions (id, user_id, key, turn_count, item_count, context_tokens) "
                "VALUES (%s, 'bench', %s, 20, 40, 3000)",
                (sid, f"backlog-{k}"),
            )
            rows = []
            for p in range(40):
                item = (
                    {"role": "user", "content": text.format(p, p, p)}
                    if p % 2 == 0
                    else {
                        "type": "message",
                        "role": "assistant",
                        "content": [{"type": "output_text", "text": "Noted.", "annotations": []}],
                    }
                )
                rows.append((sid, p, json.dumps(item), 60))
            cur.executemany(
                "INSERT INTO items (session_id, position, item, tokens) VALUES (%s, %s, %s, %s)",
                rows,
            )
    return ids


def chat_latencies(client: object, n: int, tag: str) -> list[float]:
    from producer import Client

    assert isinstance(client, Client)
    out = []
    for i in range(n):
        t0 = time.perf_counter()
        turn = client.enqueue(f"b6-{tag}-{i % 30}", "bench", f"hello {i}")
        client.wait(turn.id, timeout=30)
        out.append((time.perf_counter() - t0) * 1000)
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--turns", type=int, default=300)
    ap.add_argument("--backlog", type=int, default=1000)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    with scratch_stack() as env:
        env = {**env, **POLICY}
        from producer import Client
        from shared import keys
        from shared.celery_app import make_celery
        from shared.settings import Settings

        ns = env["TURNQ_NAMESPACE"]
        chat = turnq_worker(env, "b6chat", concurrency=8, TURNQ_AGENT="tests.agents:echo")
        summ = ManagedProcess(
            worker_command(
                name="b6summ", queues=[ns + "summarize"], concurrency=4, loglevel="WARNING"
            ),
            env,
            "b6summ",
            ready=WORKER_READY,
        )
        chat.start()
        try:
            summ.start()
            settings = Settings(**{"namespace": ns})
            app = make_celery(settings)
            r = redis.Redis.from_url(env["TURNQ_REDIS_URL"])
            sessions = seed_sessions(
                env["TURNQ_DATABASE_URL"].replace("+psycopg", ""), args.backlog
            )
            client = Client.from_settings()
        except BaseException:  # never leave workers behind on a failed setup
            chat.stop()
            summ.stop()
            raise
        idle: list[float] = []
        busy: list[float] = []
        depth: list[int] = []
        rounds: list[tuple[float, float]] = []
        try:
            chat_latencies(client, 30, "warm")
            for rnd in range(args.rounds):
                idle_r = chat_latencies(client, args.turns, f"idle{rnd}")
                idle += idle_r
                for sid in sessions:
                    app.send_task(keys.COMPACT_TASK, args=[sid])
                depth.append(int(r.llen(ns + "summarize")))
                busy_r = chat_latencies(client, args.turns, f"busy{rnd}")
                busy += busy_r
                rounds.append((pct(idle_r, 99), pct(busy_r, 99)))
                depth.append(int(r.llen(ns + "summarize")))
                r.delete(
                    ns + "summarize"
                )  # drop the rest of the backlog before the next idle phase
                time.sleep(1.0)
        finally:
            client.close()
            chat.stop()
            summ.stop()
    ratio = pct(busy, 99) / pct(idle, 99)
    rows = [
        ["no backlog", f"{median(idle):.2f}", f"{pct(idle, 99):.2f}", "-", ""],
        [
            f"{args.backlog} compactions pending",
            f"{median(busy):.2f}",
            f"{pct(busy, 99):.2f}",
            f"{ratio:.2f}x",
            "p99 within 10% (<= 1.10x)",
        ],
    ]
    print(
        table(
            "B6 chat latency vs compaction backlog (ms)",
            ["phase", "p50", "p99", "p99 ratio", "target"],
            rows,
        )
    )
    print("summarize queue depth at start/end of each busy phase:", depth)
    print("per-round p99 (idle, busy) ms:", [(round(a, 2), round(b, 2)) for a, b in rounds])
    print("median of per-round p99 ratios:", round(median([b / a for a, b in rounds]), 3))


if __name__ == "__main__":
    main()
