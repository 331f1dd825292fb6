"""The ``turnq`` command.

    turnq demo                       # seed conversation through the real queue (embedded stack)
    turnq dev                        # embedded Redis + Postgres, workers, beat; Ctrl-C stops all
    turnq chat SESSION --user U      # talk to the agent through the queue
    turnq worker [--queues turns]    # a Celery worker (exec's `celery -A workers.app worker`)
    turnq beat | turnq migrate | turnq stub-llm

Worker commands exec Celery rather than importing ``workers/``: the client side
never imports the consumer side.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from shared.errors import TurnqError
from shared.settings import get_settings

app = typer.Typer(add_completion=False, no_args_is_help=True, help="turnq: durable chat turns")
console = Console(highlight=False)
err = Console(stderr=True, highlight=False)

SEED = ["What is the weather in Austin?", "How about Seattle?", "Which city is warmer?"]


def main() -> None:
    try:
        app()
    except TurnqError as exc:
        err.print(f"[red]error:[/red] {exc}")
        raise SystemExit(2) from exc
    except RuntimeError as exc:  # configuration problems carry a fix in their message
        err.print(f"[red]error:[/red] {exc}")
        raise SystemExit(1) from exc


@app.command()
def worker(
    queues: Annotated[str, typer.Option(help="comma-separated: turns, summarize, maintenance")] = (
        "turns,maintenance"
    ),
    concurrency: Annotated[int | None, typer.Option(help="turns in flight per process")] = None,
    pool: Annotated[str | None, typer.Option(help="threads (default), prefork, solo")] = None,
    name: Annotated[str, typer.Option(help="node name prefix")] = "turnq",
    loglevel: Annotated[str, typer.Option()] = "INFO",
) -> None:
    """Run a worker process (Celery, threads pool feeding one asyncio loop)."""
    from ops.processes import worker_command

    s = get_settings()
    names = [q.strip() for q in queues.split(",") if q.strip()]
    unknown = [q for q in names if q not in ("turns", "summarize", "maintenance")]
    if unknown:
        raise typer.BadParameter(f"unknown queue(s): {', '.join(unknown)}", param_hint="--queues")
    cmd = worker_command(
        name=name,
        queues=[s.namespace + q for q in names],
        concurrency=concurrency or s.worker_concurrency,
        pool=pool or s.worker_pool,
        loglevel=loglevel,
    )
    os.execv(cmd[0], cmd)


@app.command()
def beat(loglevel: Annotated[str, typer.Option()] = "INFO") -> None:
    """Run the scheduler (reaper of stuck turns). Run exactly one."""
    from ops.processes import beat_command

    s = get_settings()
    s.data_dir.mkdir(parents=True, exist_ok=True)
    cmd = beat_command(s.data_dir / "celerybeat-schedule", loglevel)
    os.execv(cmd[0], cmd)


@app.command()
def migrate() -> None:
    """Create or upgrade the Postgres schema (safe to run concurrently)."""
    from ops.migrate import upgrade

    upgrade(get_settings().require_database_url())
    console.print("[green]database is at the newest schema[/green]")


@app.command("stub-llm")
def stub_llm(
    host: Annotated[str, typer.Option()] = "127.0.0.1",
    port: Annotated[int, typer.Option()] = 8089,
    latency: Annotated[float, typer.Option(help="seconds per model call")] = 0.0,
    fail_rate: Annotated[float, typer.Option(help="fraction of calls answered 500")] = 0.0,
) -> None:
    """An OpenAI-compatible model server for tests and benchmarks (no network, no key)."""
    from shared.models.stub_server import serve

    serve(host=host, port=port, latency_s=latency, fail_rate=fail_rate)


@app.command()
def dev(
    workers: Annotated[int, typer.Option(help="turn worker processes")] = 1,
) -> None:
    """Everything on this machine: embedded Redis/Postgres unless URLs are set. Ctrl-C stops."""
    from ops.devrun import DevRun

    with DevRun(get_settings(), console) as run:
        run.start(workers=workers)
        run.print_summary()
        console.print("[dim]Ctrl-C to stop[/dim]")
        try:
            run.watch()
        except KeyboardInterrupt:
            console.print("\nstopping…")


@app.command()
def demo(
    use_running_workers: Annotated[
        bool, typer.Option(help="do not start workers; use the ones already running")
    ] = False,
) -> None:
    """Run the seed conversation through the real queue and show timings."""
    from ops.devrun import DevRun

    with DevRun(get_settings(), console) as run:
        run.start(workers=0 if use_running_workers else 1, beat=not use_running_workers)
        ok = _run_demo(run.client())
    raise SystemExit(0 if ok else 1)


def _run_demo(client: object) -> bool:
    from producer.client import Client
    from shared.status import TurnStatus

    assert isinstance(client, Client)
    session = f"demo-{int(time.time())}"
    console.print(f"session [bold]{session}[/bold] (user demo-user), through the queue:\n")
    ok = True
    for i, message in enumerate(SEED, 1):
        with console.status(f"turn {i}: queued…"):
            turn = client.enqueue(session, "demo-user", message)
            done = client.wait(turn.id, timeout=120)
        usage = done.usage or {}
        ok &= done.status is TurnStatus.SUCCEEDED
        answer = done.output or f"[red]{done.status.value}: {done.error}[/red]"
        console.print(f"[bold cyan]you>[/bold cyan] {message}")
        console.print(f"[bold green]agent>[/bold green] {answer}")
        console.print(
            f"[dim]  turn {done.seq} · queue wait {_ms(done.queue_wait_s)} · run {_ms(done.run_s)}"
            f" · tokens {usage.get('input_tokens', '-')} in / {usage.get('output_tokens', '-')} out"
            f" · model calls {usage.get('requests', '-')}[/dim]\n"
        )
    return ok


def _ms(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds * 1000:.1f} ms"


sessions_app = typer.Typer(no_args_is_help=True, help="inspect sessions")
app.add_typer(sessions_app, name="sessions")


@sessions_app.command("show")
def sessions_show(
    session: Annotated[str, typer.Argument(help="session id")],
    user: Annotated[str, typer.Option("--user", "-u", help="the owner's user id")],
) -> None:
    """Context tokens vs transcript size, the summary, the compaction mark, recent compactions."""
    from rich.table import Table

    from producer.client import Client
    from shared.compaction.base import policy_from_settings

    with Client.from_settings() as client:
        s = client.session(session, user)
        compactions = client.compactions(session, user)
    policy = policy_from_settings(get_settings())
    console.print(f"[bold]session {s.key}[/bold] (user {s.user_id}) · id {s.id}")
    console.print(
        f"turns {s.turn_count} · items {s.item_count} · transcript ~{s.transcript_tokens:,} tokens"
    )
    console.print(
        f"context ~{s.context_tokens:,} tokens (window {policy.window_tokens:,}, "
        f"compaction at {policy.trigger_tokens:,}, target {policy.target_tokens:,}, "
        f"strategy {policy.strategy})"
    )
    console.print(
        f"compaction mark: position {s.compaction_mark} ({s.compaction_mark} items summarized, "
        f"{s.item_count - s.compaction_mark} verbatim in context, "
        f"{len(s.summary_items)} tool items kept) · compactions {s.compaction_count}"
    )
    console.print("[bold]summary:[/bold]" if s.summary else "[dim]no summary yet[/dim]")
    if s.summary:
        console.print(s.summary, markup=False)
    if compactions:
        table = Table(title="recent compactions")
        for col in ("finished", "strategy", "status", "mark", "tokens", "error"):
            table.add_column(col)
        for c in compactions:
            table.add_row(
                f"{c['finished_at']:%Y-%m-%d %H:%M:%S}",
                c["strategy"],
                c["status"],
                f"{c['old_mark']} -> {c['new_mark'] if c['new_mark'] is not None else '-'}",
                f"{c['tokens_before'] or '-'} -> {c['tokens_after'] or '-'}",
                (c["error"] or "")[:60],
            )
        console.print(table)


@app.command()
def chat(
    session: Annotated[str, typer.Argument(help="session id (yours; created on first message)")],
    user: Annotated[str, typer.Option("--user", "-u", help="your user id")],
    timeout: Annotated[float, typer.Option(help="seconds to wait for each answer")] = 120.0,
) -> None:
    """Talk to the agent through the queue. /history shows the transcript, /quit leaves."""
    from producer.client import Client
    from shared.status import TurnStatus

    client = Client.from_settings()
    console.print(f"[dim]session {session} as {user}; /history, /quit[/dim]")
    try:
        while True:
            try:
                line = input("you> ")
            except EOFError:
                break
            if not line.strip():
                continue
            if line.strip() in ("/quit", "/exit"):
                break
            if line.strip() == "/history":
                _print_history(client, session, user)
                continue
            try:
                with console.status("queued…"):
                    turn = client.enqueue(session, user, line)
                    done = client.wait(turn.id, timeout=timeout)
            except TurnqError as exc:
                err.print(f"[red]{exc}[/red]")
                continue
            if done.status is TurnStatus.SUCCEEDED:
                console.print(f"[bold]agent>[/bold] {done.output}")
            else:
                console.print(f"[red]turn {done.status.value}: {done.error}[/red]")
    finally:
        client.close()


def _print_history(client: object, session: str, user: str) -> None:
    from producer.client import Client

    assert isinstance(client, Client)
    for item in client.history(session, user):
        role = item.get("role") or item.get("type")
        text = item.get("content")
        if isinstance(text, list):
            text = " ".join(str(p.get("text", "")) for p in text if isinstance(p, dict))
        if item.get("type") == "function_call":
            text = f"{item.get('name')}({item.get('arguments')})"
        elif item.get("type") == "function_call_output":
            text = item.get("output")
        console.print(f"[dim]{role}:[/dim] {text}")


if __name__ == "__main__":  # pragma: no cover
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    main()
