"""Profile one worker process draining one-turn sessions (py-spy), for RESULTS.md's top frames.

    python -m benchmarks.profile_worker [--model instant|stream] [--sessions 2000] [--out DIR]

One worker (B2's settings for the instant model, ``benchmarks.levers``'s stream model on
`turnq stub-llm` otherwise), paused while the sessions are enqueued, then py-spy records
its whole process (every thread, ``--idle`` off, native frames off) while it drains.
Writes ``<out>/<model>.txt`` (collapsed stacks) and prints the top frames: inclusive
share of the samples per function, and self share.
"""

from __future__ import annotations

import argparse
import signal
import subprocess
import sys
import time
from collections import Counter
from contextlib import ExitStack
from pathlib import Path

from benchmarks.b2_throughput import ECHO
from benchmarks.common import enqueue_many, running, scratch_stack, turnq_worker, wait_turns
from benchmarks.levers import STREAM, STREAM_CONCURRENCY
from tests.support.stub_llm import stub_llm_process

PY_SPY = str(Path(sys.executable).parent / "py-spy")


def top(collapsed: Path, n: int = 25) -> tuple[list[tuple[str, float]], list[tuple[str, float]]]:
    """(inclusive, self) shares of the samples per frame, largest first."""
    total = 0
    incl: Counter[str] = Counter()
    own: Counter[str] = Counter()
    for line in collapsed.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack:
            continue
        c = int(count)
        total += c
        frames = [f.split(" (")[0] + " (" + f.split(" (")[-1].split(":")[0] + ")"
                  for f in stack.split(";")]  # fmt: skip
        for f in set(frames):
            incl[f] += c
        own[frames[-1]] += c
    return (
        [(f, c / total) for f, c in incl.most_common(n)],
        [(f, c / total) for f, c in own.most_common(n)],
    )


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", choices=["instant", "stream"], default="instant")
    ap.add_argument("--sessions", type=int, default=2000)
    ap.add_argument("--out", default="/tmp/turnq-profile")
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    raw = out / f"{args.model}.txt"
    with ExitStack() as stack:
        env = stack.enter_context(scratch_stack())
        agent, concurrency = ECHO, 16
        if args.model == "stream":
            stub = stack.enter_context(stub_llm_process(*STREAM))
            agent, concurrency = stub.worker_env("chat"), STREAM_CONCURRENCY
        worker = turnq_worker(env, "prof", concurrency, **agent)
        stack.enter_context(running([worker]))
        enqueue_many([f"warm-{i}" for i in range(50)])
        worker.pause()
        ids = enqueue_many([f"prof-{i}" for i in range(args.sessions)])
        spy = subprocess.Popen(
            [PY_SPY, "record", "-p", str(worker.pid), "-o", str(raw), "--format", "raw",
             "-r", "200", "--nonblocking"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        time.sleep(1.0)
        worker.resume()
        wait_turns(env, ids, timeout=600)
        spy.send_signal(signal.SIGINT)  # py-spy writes its file on Ctrl-C
        spy.wait(60)
    incl, own = top(raw)
    print(f"{args.model}: {args.sessions} turns; inclusive")
    for f, share in incl:
        print(f"  {share:6.1%}  {f}")
    print("self")
    for f, share in own:
        print(f"  {share:6.1%}  {f}")


if __name__ == "__main__":
    main()
