"""The one place turnq reads its configuration from (environment, prefix ``TURNQ_``).

    from shared.settings import get_settings
    s = get_settings()            # cached; tests call get_settings.cache_clear()
    s.redis_url, s.database_url   # None until a dev stack or the environment provides them
    s.broker                      # Celery's queues: TURNQ_BROKER_URL, else the same Redis

No other module reads ``os.environ``.  URLs may be left unset: ``turnq dev`` and
``turnq demo`` then start an embedded Redis and Postgres and write their
addresses to ``<data_dir>/stack.json``, which every later process picks up.
"""

from __future__ import annotations

import json
import os
import tempfile
from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import AliasChoices, Field, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

STACK_FILE = "stack.json"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="TURNQ_", extra="ignore")

    # --- where things are -------------------------------------------------
    redis_url: str | None = Field(
        default=None,
        description="turnq's state: session locks, turn event streams, the cancel channel, "
        "rate limits, compaction and beat marks, the metrics snapshot",
    )
    broker_url: str | None = Field(
        default=None,
        description="Celery's broker (the queues, unacked kicks, control and task events); "
        "unset: the same server as redis_url",
    )
    database_url: str | None = None
    data_dir: Path = Path(".turnq")
    namespace: str = Field(
        default="",
        description="Prefix for every Redis key and Celery queue, so several "
        "deployments (or test runs) can share one Redis.",
        pattern=r"^[a-z0-9_\-:]{0,40}$",
    )
    env: Literal["dev", "test", "prod"] = "dev"

    # --- the agent and its model ------------------------------------------
    agent: str = "shared.demo_agent:build_agent"  # an Agent, a factory, or a mapping of them
    context_factory: str | None = None  # builds the tools' run context (shared.registry)
    max_metadata_bytes: int = Field(default=8192, ge=2)  # a turn's caller metadata, as JSON
    max_attachment_bytes: int = Field(  # all content parts of one message (images, files)
        default=8 * 1024 * 1024, ge=1024
    )
    model_provider: Literal["auto", "offline", "openai"] = "auto"
    openai_api_key: str | None = Field(
        default=None, validation_alias=AliasChoices("TURNQ_OPENAI_API_KEY", "OPENAI_API_KEY")
    )
    openai_base_url: str | None = Field(
        default=None, validation_alias=AliasChoices("TURNQ_OPENAI_BASE_URL", "OPENAI_BASE_URL")
    )
    openai_api: Literal["responses", "chat"] = "responses"
    chat_model: str = "gpt-4.1-mini"
    summarizer_model: str = "gpt-4.1-nano"
    tracing: bool = False
    model_timeout_s: float = 120.0  # one model request; a timeout is retried (transient)
    # The one retry layer for model calls (workers/retry.py): the OpenAI client's own
    # retries are off.  Bounded in count and in total time per model call.
    model_retries: int = Field(default=3, ge=0, le=20)
    model_retry_backoff_s: float = Field(default=0.5, ge=0)
    model_retry_max_delay_s: float = Field(default=30.0, ge=0)
    model_retry_budget_s: float = Field(default=120.0, ge=0)
    # the offline model's answer shape (shared/models/profile.py); the stub server takes
    # the same as `turnq stub-llm --profile ...` options.  None: the profile's own value.
    model_profile: Literal["instant", "realistic"] = "instant"
    model_answer_tokens: int | None = Field(default=None, ge=0)
    model_tokens_per_s: str | None = Field(default=None, description='"80" or "60-100"')
    model_tool_first: bool | None = None
    model_jitter_s: float | None = Field(default=None, ge=0)

    # --- turn pipeline ----------------------------------------------------
    lock_ttl_s: float = Field(default=30.0, gt=0.2)
    heartbeat_s: float | None = None  # default: lock_ttl_s / 3
    turn_timeout_s: float = Field(default=300.0, gt=0)
    # Model calls one turn may make (Runner's max_turns); past it the turn fails max_turns.
    max_turns: int = Field(default=10, ge=1, le=1000)
    # A turn whose worker vanished (crash, OOM, kill) this many times while running it is
    # failed with worker_lost; pauses, lock hand-overs and redeliveries never count.
    max_attempts: int = Field(default=5, ge=1, le=100)
    # A tool call nobody approved or rejected within this is rejected ("approval timed out")
    # by beat, and the turn answers; per agent: TURNQ_APPROVAL_TTL_S in the agent's module.
    approval_ttl_s: float = Field(default=24 * 3600, gt=0)
    # The step journal (I14): each model response and tool outcome written as it completes,
    # replayed when a turn is re-run.  Off: no journal rows and no replay (a re-run turn
    # repeats its model calls and tools, non-idempotent ones included); for measuring its
    # cost (benchmark B8) or a deployment that accepts repeats.
    journal: bool = True
    # ... kept this long after a turn finished (audit), then removed.
    journal_retention_s: float = Field(default=7 * 24 * 3600, ge=0)
    # A non-idempotent tool that started but whose outcome is unknown after a crash is never
    # run again: the model is told (tell_model), or a person decides to re-run it (ask_human).
    unknown_outcome: Literal["tell_model", "ask_human"] = "tell_model"
    db_pool_size: int = Field(
        default=10,
        ge=1,
        description="Postgres connections per process. Transactions are short and none is "
        "held across a model call, so a few connections serve hundreds of turns in flight.",
    )
    db_pool_timeout_s: float = 30.0
    client_redis_connections: int = Field(
        default=10_000,
        ge=10,
        description="Redis (state) connections of a producer or gateway process, for short "
        "commands; its readers (SSE streams, client.wait) share one more, their hub's",
    )
    redis_pool_size: int = Field(
        default=64,
        ge=4,
        description="Redis (state) connections per worker process; commands wait for a free "
        "one.  Each command holds one for a round trip, so a few dozen serve thousands of "
        "turns in flight; an unbounded pool grew to one per turn under load",
    )
    max_content_bytes: int = Field(default=32 * 1024, ge=1)
    max_id_length: int = Field(default=128, ge=8, le=512)
    events_ttl_s: int = 3600
    stream_flush_ms: int = Field(
        default=50,
        ge=0,
        description="text deltas of a turn are coalesced into one event-stream entry at "
        "most this often (0: one entry per delta)",
    )
    stream_flush_chars: int = Field(
        default=512, ge=1, description="... or as soon as this many characters wait"
    )
    stream_read_gather_ms: int = Field(
        default=10,
        ge=0,
        le=100,
        description="a client's reader hub waits this long after a read that returned "
        "entries, when it follows several turns, so one XREAD returns many turns' entries",
    )

    # --- context budget and compaction (per-agent overrides: TURNQ_CONTEXT in the agent's module)
    context_window_tokens: int = Field(default=128_000, ge=256)
    compact_trigger: float = Field(
        default=0.75, gt=0, description="tokens, or a fraction of the window when <= 1"
    )
    compact_target: float = Field(
        default=0.4, gt=0, description="tokens, or a fraction of the window when <= 1"
    )
    compaction_strategy: Literal["sliding_window", "summarize", "hybrid"] = "summarize"
    window_turns: int = Field(default=20, ge=1)
    reserve_output_tokens: int = Field(default=4_000, ge=0)
    summary_max_tokens: int = Field(default=4_000, ge=16)
    summarizer: str = Field(
        default="auto", description="auto | extractive | agent | package.module:attr"
    )
    compaction_pending_ttl_s: int = 600
    summarizer_nice: int = Field(
        default=10,
        ge=0,
        le=19,
        description="CPU niceness of a worker that consumes only the summarize queue, so "
        "summarization yields the CPU to chat turns on shared machines",
    )

    # --- celery -----------------------------------------------------------
    worker_concurrency: int = Field(default=200, ge=1)
    worker_pool: Literal["threads", "prefork", "solo", "gevent"] = "threads"
    visibility_timeout_s: int = 3600
    task_events: bool = Field(
        default=False,
        description="Celery task events (Flower's task list): ~0.5 ms of worker CPU and "
        "~1.6 Redis commands per turn; workers and queues show in Flower without them "
        "(docs/decisions/0010-cpu-levers.md)",
    )

    metrics_port: int = Field(
        default=0, ge=0, le=65535, description="serve Prometheus /metrics here (0: off)"
    )

    # --- Flower (`turnq flower`, producer/flower.py) ------------------------
    flower_basic_auth: str | None = Field(
        default=None,
        repr=False,
        description="user:password[,user2:password2]; `turnq flower` refuses to start "
        "without it unless --no-auth on a loopback address",
    )
    flower_address: str = "127.0.0.1"
    flower_port: int = Field(default=5555, ge=0, le=65535)
    flower_max_tasks: int = Field(
        default=10_000,
        ge=100,
        description="tasks Flower keeps in memory (Flower's own default, 100k, grows its memory)",
    )

    # --- beat -------------------------------------------------------------
    reaper_interval_s: float = 10.0
    reaper_stale_s: float = 30.0
    session_retention_s: float = Field(
        default=0,
        ge=0,
        description="delete sessions (turns, items, compactions) idle longer than this; "
        "0 keeps them forever (see docs/observability.md)",
    )
    retention_interval_s: float = Field(default=300.0, gt=0, description="retention job period")
    retention_batch_size: int = Field(
        default=500, ge=1, le=10_000, description="sessions deleted per transaction"
    )
    retention_max_batches: int = Field(
        default=20, ge=1, description="transactions per retention run (the rest waits a run)"
    )
    cluster_metrics_interval_s: float = Field(
        default=15.0, gt=0, description="period of the queue/turn metrics snapshot job"
    )

    # --- logs and health --------------------------------------------------
    log_format: Literal["json", "text"] = "json"
    log_content: bool = Field(
        default=False,
        description="debug only: allow message content (inputs, outputs) in logs",
    )
    run_dir: Path = Field(
        default=Path(tempfile.gettempdir()) / "turnq",
        description="liveness heartbeat files (`turnq health` reads them); local to the host",
    )
    liveness_interval_s: float = Field(default=5.0, gt=0, description="heartbeat file period")
    liveness_stale_s: float = Field(
        default=30.0, gt=0, description="a heartbeat older than this fails `turnq health`"
    )

    # --- HTTP gateway (producer/gateway, `turnq gateway`) ------------------
    gateway_host: str = "127.0.0.1"
    gateway_port: int = Field(default=8000, ge=0, le=65535)
    gateway_rate_per_s: float = Field(
        default=20.0, ge=0, description="sustained requests per second per user (0: no limit)"
    )
    gateway_rate_burst: int = Field(
        default=40, ge=1, description="requests a user may send at once before the rate applies"
    )
    gateway_max_wait_s: float = Field(
        default=60.0, gt=0, le=600, description="cap on GET /v1/turns/{id}?wait= (long-poll)"
    )
    gateway_sse_heartbeat_s: float = Field(
        default=15.0, gt=0, description="SSE comment heartbeat when a stream is idle"
    )
    gateway_sse_idle_timeout_s: float = Field(
        default=300.0, gt=0, description="an event stream with no event this long ends"
    )
    gateway_max_body_bytes: int | None = Field(
        default=None,
        ge=1,
        description="largest request body (default 4 x max_content_bytes + "
        "max_attachment_bytes + 4 x max_metadata_bytes + 4 KiB), refused with 413 before "
        "it is parsed",
    )
    gateway_check_workers: bool = Field(
        default=True, description="/healthz asks Celery which workers consume the turns queue"
    )

    @field_validator("redis_url", "broker_url", "database_url", mode="before")
    @classmethod
    def _blank_is_none(cls, v: object) -> object:
        return None if isinstance(v, str) and not v.strip() else v

    @field_validator("database_url")
    @classmethod
    def _psycopg_driver(cls, v: str | None) -> str | None:
        """Accept the usual spellings and normalise to SQLAlchemy's psycopg 3 driver."""
        if v is None:
            return v
        for prefix in ("postgres://", "postgresql://", "postgresql+psycopg2://"):
            if v.startswith(prefix):
                return "postgresql+psycopg://" + v[len(prefix) :]
        if not v.startswith("postgresql+psycopg://"):
            raise ValueError("database_url must be a postgresql:// URL")
        return v

    @model_validator(mode="after")
    def _from_stack_file(self) -> Settings:
        """Fill unset URLs from a running dev stack (``turnq dev`` writes the file)."""
        if self.redis_url and self.database_url:
            return self
        stack = read_stack_file(self.data_dir)
        if stack:
            self.redis_url = self.redis_url or stack.get("redis_url")
            if not self.database_url and stack.get("database_url"):
                self.database_url = self._psycopg_driver(stack["database_url"])
        return self

    @model_validator(mode="after")
    def _no_placeholder_secrets_in_prod(self) -> Settings:
        if self.env == "prod" and self.openai_api_key in {"changeme", "sk-placeholder", ""}:
            raise ValueError("refusing to start in prod with a placeholder OPENAI_API_KEY")
        return self

    # --- derived ------------------------------------------------------------
    @property
    def heartbeat_interval_s(self) -> float:
        return self.heartbeat_s if self.heartbeat_s else self.lock_ttl_s / 3

    @property
    def use_offline_model(self) -> bool:
        if self.model_provider == "offline":
            return True
        if self.model_provider == "openai":
            return False
        return not (self.openai_api_key or self.openai_base_url)

    def require_database_url(self) -> str:
        if not self.database_url:
            raise RuntimeError(
                "TURNQ_DATABASE_URL is not set and no dev stack is running "
                f"(no {self.data_dir / STACK_FILE}); set it, or start `turnq dev`"
            )
        return self.database_url

    def require_redis_url(self) -> str:
        if not self.redis_url:
            raise RuntimeError(
                "TURNQ_REDIS_URL is not set and no dev stack is running "
                f"(no {self.data_dir / STACK_FILE}); set it, or start `turnq dev`"
            )
        return self.redis_url

    @property
    def broker(self) -> str | None:
        """The broker's URL: ``broker_url``, else the state Redis (one server for both)."""
        return self.broker_url or self.redis_url

    @property
    def separate_broker(self) -> bool:
        return self.broker_url is not None and self.broker_url != self.redis_url

    def require_broker_url(self) -> str:
        return self.broker_url or self.require_redis_url()

    @property
    def libpq_database_url(self) -> str:
        """The URL in libpq form (for psql, psycopg.connect)."""
        return self.require_database_url().replace("postgresql+psycopg://", "postgresql://", 1)


def read_stack_file(data_dir: Path) -> dict[str, str] | None:
    path = Path(data_dir) / STACK_FILE
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict):
        return None
    pid = data.get("pid")
    if isinstance(pid, int):  # a stack that died without cleaning up is not running
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return None
        except PermissionError:
            pass
    return data


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()
