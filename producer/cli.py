"""The ``turnq`` command.

    turnq demo                       # seed conversation through the real queue (embedded stack)
    turnq dev                        # embedded Redis + Postgres, workers, beat, Flower until Ctrl-C
    turnq chat SESSION --user U      # talk to the agent through the queue
    turnq gateway [--port 8000]      # the HTTP API; turnq keys create --user U makes a key
    TURNQ_API_KEY=KEY turnq chat SESSION --url http://127.0.0.1:8000   # ... through the HTTP API
    turnq worker [--queues turns]    # a Celery worker (exec's `celery -A workers.app worker`)
    turnq flower [--port 5555]       # Flower behind basic auth (TURNQ_FLOWER_BASIC_AUTH)
    turnq beat | turnq migrate | turnq stub-llm
    turnq bench [--quick] [--only B2,B9] [--repeat 3]   # benchmarks (source checkout)
    turnq health --role worker       # exit 0/1: readiness (Redis, Postgres) + liveness

Worker commands exec Celery rather than importing ``workers/``: the client side
never imports the consumer side.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape

from producer.cli_approvals import (
    answered_direct,
    answered_http,
    left_waiting,
    pending_approvals,
    print_pending_approvals,
)
from shared.errors import TurnqError
from shared.settings import get_settings

app = typer.Typer(add_completion=False, no_args_is_help=True, help="turnq: durable chat turns")
console = Console(highlight=False)
err = Console(stderr=True, highlight=False)

SEED = [
    "What is the weather in Austin?",
    "How about Seattle?",
    "Which city is warmer?",
    "I have a billing question: which plan am I on?",  # handed over to Billing
    "And my invoices?",  # Billing answers again: the session's active agent
]


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
def flower(
    port: Annotated[int | None, typer.Option(help="default TURNQ_FLOWER_PORT (5555)")] = None,
    address: Annotated[
        str | None, typer.Option(help="default TURNQ_FLOWER_ADDRESS (127.0.0.1)")
    ] = None,
    no_auth: Annotated[
        bool, typer.Option("--no-auth", help="no password; loopback addresses only")
    ] = False,
    allow_control: Annotated[
        bool,
        typer.Option("--allow-control", help="let Flower revoke tasks, resize or stop workers"),
    ] = False,
    persistent: Annotated[
        bool, typer.Option(help="keep Flower's task history in <data_dir>/flower.db")
    ] = False,
    max_tasks: Annotated[
        int | None, typer.Option(help="tasks kept in memory (default TURNQ_FLOWER_MAX_TASKS)")
    ] = None,
) -> None:
    """Flower, Celery's web monitor, on turnq's queues; basic auth from TURNQ_FLOWER_BASIC_AUTH."""
    from producer.flower import flower_plan

    plan = flower_plan(
        get_settings(),
        port=port,
        address=address,
        no_auth=no_auth,
        allow_control=allow_control,
        persistent=persistent,
        max_tasks=max_tasks,
    )
    for warning in plan.warnings:
        err.print(f"[yellow]warning:[/yellow] {warning}")
    console.print(plan.describe(), markup=False, soft_wrap=True)
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(plan.argv[0], plan.argv, plan.env)


@app.command()
def migrate() -> None:
    """Create or upgrade the Postgres schema (safe to run concurrently)."""
    from ops.migrate import upgrade

    upgrade(get_settings().require_database_url())
    console.print("[green]database is at the newest schema[/green]")


@app.command()
def health(
    role: Annotated[
        str, typer.Option(help="worker | summarizer | beat | gateway: whose liveness to check")
    ],
    probe: Annotated[
        str,
        typer.Option(help="liveness (k8s livenessProbe), readiness (readinessProbe) or all"),
    ] = "all",
    timeout: Annotated[float, typer.Option(help="seconds for all checks together")] = 5.0,
) -> None:
    """Exit 0 if healthy, 1 if not: readiness = Redis and Postgres answer; liveness = the
    role's heartbeat file on this host is fresh (the gateway: its port answers)."""
    from shared.health import ROLES, run_checks

    if role not in ROLES:
        raise typer.BadParameter(f"one of {', '.join(ROLES)}", param_hint="--role")
    if probe not in ("liveness", "readiness", "all"):
        raise typer.BadParameter("liveness, readiness or all", param_hint="--probe")
    checks = run_checks(get_settings(), role, probe, timeout)  # type: ignore[arg-type]
    from rich.markup import escape

    for c in checks:
        mark = "[green]ok  [/green]" if c.ok else "[red]FAIL[/red]"
        console.print(f"{mark} {c.name}: {escape(c.detail)}", soft_wrap=True)
    raise typer.Exit(0 if all(c.ok for c in checks) else 1)


@app.command(
    "stub-llm",
    context_settings={  # every option, --help too, goes to the stub's own parser
        "allow_extra_args": True,
        "ignore_unknown_options": True,
        "help_option_names": [],
    },
)
def stub_llm(ctx: typer.Context) -> None:
    """An OpenAI-compatible model server for tests and benchmarks (no network, no key):
    --port, --latency, --fail-rate, --profile realistic, --answer-tokens, --tokens-per-s..."""
    from shared.models.stub_server import main as serve_stub

    serve_stub(ctx.args, default_port=8089)


@app.command(
    "bench",
    context_settings={  # every option, --help too, goes to the benchmark runner's parser
        "allow_extra_args": True,
        "ignore_unknown_options": True,
        "help_option_names": [],
    },
)
def bench(ctx: typer.Context) -> None:
    """Benchmarks B1..B10 beside their baselines (from a source checkout): --quick, --only B2."""
    from ops.processes import ROOT

    if not (ROOT / "benchmarks" / "run.py").exists():
        err.print("turnq bench runs from a source checkout (benchmarks/ is not installed)")
        raise typer.Exit(2)
    sys.path.insert(0, str(ROOT))
    from benchmarks.run import main as run_benchmarks

    raise typer.Exit(run_benchmarks(ctx.args))


@app.command()
def dev(
    workers: Annotated[int, typer.Option(help="turn worker processes")] = 1,
) -> None:
    """Everything on this machine: embedded Redis/Postgres unless URLs are set. Ctrl-C stops
    (so do SIGTERM and SIGHUP)."""
    from ops.devrun import DevRun
    from ops.processes import interrupt_on_stop_signals

    with interrupt_on_stop_signals(), DevRun(get_settings(), console) as run:
        try:  # also while starting: what started so far is stopped, without a traceback
            run.start(workers=workers, gateway=True, flower=True)
            run.print_summary()
            console.print("[dim]Ctrl-C to stop[/dim]")
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
        answer = (
            escape(done.output)
            if done.output
            else f"[red]{done.status.value}: {escape(done.error or '')}[/red]"
        )
        console.print(f"[bold cyan]you>[/bold cyan] {message}")
        console.print(f"[bold green]{escape(done.agent or 'agent')}>[/bold green] {answer}")
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
    """Context tokens vs transcript size, the summary, the compaction mark, recent
    compactions, and the tool calls waiting for approval."""
    from rich.table import Table

    from producer.client import Client
    from shared.compaction.base import policy_from_settings

    with Client.from_settings() as client:
        s = client.session(session, user)
        compactions = client.compactions(session, user)
        pending = pending_approvals(client, user, session)
    policy = policy_from_settings(get_settings())
    console.print(f"[bold]session {s.key}[/bold] (user {s.user_id}) · id {s.id}")
    console.print(
        f"agents: entry {s.entry_agent or '(the default)'} · active "
        f"{s.active_agent or '(none yet)'} (the next turn starts there)"
    )
    console.print(
        f"turns {s.turn_count} · items {s.item_count} · transcript ~{s.transcript_tokens:,} tokens"
    )
    console.print(
        f"usage: {s.requests:,} model calls · {s.input_tokens:,} input tokens "
        f"({s.cached_tokens:,} cached) · {s.output_tokens:,} output "
        f"({s.reasoning_tokens:,} reasoning)"
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
    print_pending_approvals(pending)


@app.command()
def chat(
    session: Annotated[str, typer.Argument(help="session id (yours; created on first message)")],
    user: Annotated[
        str | None, typer.Option("--user", "-u", help="your user id (not with --url)")
    ] = None,
    timeout: Annotated[float, typer.Option(help="seconds to wait for each answer")] = 120.0,
    url: Annotated[
        str | None, typer.Option(help="talk through the HTTP gateway at this URL")
    ] = None,
    key: Annotated[
        str | None,
        typer.Option(
            envvar="TURNQ_API_KEY",
            help="API key for --url (its user is you); prefer the TURNQ_API_KEY environment "
            "variable: a command line is visible to every local user in ps",
        ),
    ] = None,
) -> None:
    """Talk to the agent through the queue. /history shows the transcript, /quit leaves.
    When a tool needs approval, you are asked (approve? [y/n]) and the turn goes on."""
    if url is not None:
        if not key:
            raise typer.BadParameter(
                "--url needs an API key in TURNQ_API_KEY (or --key); create one: turnq keys create"
            )
        _chat_http(session, url, key, timeout)
        return
    if user is None:
        raise typer.BadParameter("give --user (or --url and --key)", param_hint="--user")
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
                done = answered_direct(
                    client, client.enqueue(session, user, line).id, user, timeout
                )
            except TurnqError as exc:
                err.print(f"[red]{escape(str(exc))}[/red]")
                continue
            if done.status is TurnStatus.SUCCEEDED:
                console.print(f"[bold]agent>[/bold] {escape(done.output or '')}")
            elif done.status is TurnStatus.WAITING:
                left_waiting(done.id)
                break
            else:
                console.print(f"[red]turn {done.status.value}: {escape(done.error or '')}[/red]")
    finally:
        client.close()


def _chat_http(session: str, url: str, key: str, timeout: float) -> None:
    """The same conversation loop, over the HTTP API."""
    from producer.gateway.http_client import GatewayClient, GatewayError

    console.print(f"[dim]session {session} via {url}; /history, /quit[/dim]")
    with GatewayClient(url, key) as api:
        while True:
            try:
                line = input("you> ")
            except EOFError:
                break
            if not line.strip():
                continue
            if line.strip() in ("/quit", "/exit"):
                break
            try:
                if line.strip() == "/history":
                    _print_items(api.items(session))
                    continue
                done = answered_http(api, api.send(session, line)["turn_id"], timeout)
            except GatewayError as exc:
                err.print(f"[red]{escape(str(exc))}[/red]")
                continue
            if done["status"] == "succeeded":
                console.print(f"[bold]agent>[/bold] {escape(str(done['output']))}")
            elif done["status"] == "waiting":
                left_waiting(done["turn_id"])
                break
            elif not done["terminal"]:
                console.print(f"[red]no answer after {timeout:g}s (turn {done['status']})[/red]")
            else:
                console.print(f"[red]turn {done['status']}: {escape(str(done['error']))}[/red]")


def _print_history(client: object, session: str, user: str) -> None:
    from producer.client import Client

    assert isinstance(client, Client)
    _print_items(client.history(session, user))


def _print_items(items: list[dict[str, Any]]) -> None:
    for item in items:
        role = item.get("role") or item.get("type")
        text = item.get("content")
        if isinstance(text, list):
            text = " ".join(str(p.get("text", "")) for p in text if isinstance(p, dict))
        if item.get("type") == "function_call":
            text = f"{item.get('name')}({item.get('arguments')})"
            if item.get("approval") == "pending":
                text += "  [waits for approval]"
        elif item.get("type") == "function_call_output":
            text = item.get("output")
        console.print(f"[dim]{role}:[/dim] {escape(str(text))}")


@app.command()
def gateway(
    host: Annotated[str | None, typer.Option(help="interface (default TURNQ_GATEWAY_HOST)")] = None,
    port: Annotated[
        int | None, typer.Option(help="port (default TURNQ_GATEWAY_PORT; 0: any free port)")
    ] = None,
    access_log: Annotated[bool, typer.Option(help="log every request")] = True,
) -> None:
    """Serve the HTTP API (FastAPI on uvicorn): /v1/..., /healthz, /metrics, /openapi.json."""
    from producer.gateway.server import serve

    s = get_settings()
    s.require_database_url()
    s.require_redis_url()
    serve(
        s,
        host if host is not None else s.gateway_host,
        port if port is not None else s.gateway_port,
        access_log=access_log,
    )


keys_app = typer.Typer(no_args_is_help=True, help="API keys of the HTTP gateway")
app.add_typer(keys_app, name="keys")


@keys_app.command("create")
def keys_create(
    user: Annotated[str, typer.Option("--user", "-u", help="the user the key acts as")],
    name: Annotated[str | None, typer.Option(help="a label, e.g. the backend using it")] = None,
    scope: Annotated[
        list[str] | None,
        typer.Option(
            "--scope",
            help="approver: may list and decide every user's pending approvals (a support "
            "desk), and nothing else of theirs",
        ),
    ] = None,
) -> None:
    """Create an API key and print it once (only its hash is stored)."""
    from producer.gateway.keys import create_key

    key = create_key(get_settings().require_database_url(), user, name, scope or ())
    err.print(f"[dim]API key for user {user} (shown once; store it now):[/dim]")
    typer.echo(key)


@keys_app.command("revoke")
def keys_revoke(
    prefix: Annotated[str, typer.Argument(help="the key's prefix (tq_<prefix>_...) or the key")],
) -> None:
    """Revoke a key: it is refused from the next request on."""
    from producer.gateway.keys import revoke_key

    try:
        done = revoke_key(get_settings().require_database_url(), prefix)
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="PREFIX") from exc
    if not done:
        err.print(f"[red]no live key with prefix {prefix}[/red]")
        raise SystemExit(1)
    console.print(f"revoked {prefix}")


@keys_app.command("list")
def keys_list(
    user: Annotated[str | None, typer.Option("--user", "-u", help="only this user's")] = None,
) -> None:
    """Keys by prefix (never their secrets), newest first."""
    from producer.gateway.keys import list_keys

    for k in list_keys(get_settings().require_database_url(), user):
        state = f"revoked {k.revoked_at:%Y-%m-%d %H:%M}" if k.revoked_at else "active"
        console.print(
            f"tq_{k.prefix}_…  user {k.user_id}  {k.name or '-'}  "
            f"created {k.created_at:%Y-%m-%d %H:%M}  {state}",
            markup=False,
        )


if __name__ == "__main__":  # pragma: no cover
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    main()
