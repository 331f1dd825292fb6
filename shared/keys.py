"""Every Redis key, TTL, channel and Celery queue/task name turnq uses.

Keys are built by functions so the layout lives in one place:

    lock_key(sid)    turnq:lock:{sid}     STRING  holder's random token; PX = lock TTL.
                                         Set NX on acquire, renewed and deleted only by token
                                         (see lock_renew.lua / lock_release.lua).  A kick
                                         that finds it held appends "+" (kicked while held:
                                         lock_acquire.lua), which the holder's release reads.
    events_key(tid)  turnq:events:{tid}  STREAM  status changes and deltas of one turn;
                                         EXPIRE events_ttl_s after each write.  Readers
                                         (client.wait, SSE) block on it through their
                                         process's hub (producer.streams) and then read
                                         Postgres, which stays the truth.  Text is not
                                         here but in the worker's text stream
                                         (shared.turn_events).
    text_key(worker) turnq:text:{worker} STREAM  one worker process's text: one entry per
                                         flush, one field per turn with text in it
                                         (shared.turn_events); trimmed to events_ttl_s by
                                         MINID, EXPIRE events_ttl_s.
    reader_wake_key(token)
                     turnq:wake:{token}  STREAM  one client process's hub: an entry (MAXLEN 1)
                                         ends its blocked XREAD when a reader subscribes;
                                         EXPIRE READER_WAKE_TTL_S after each, so a gone
                                         process leaves nothing behind.
    reaper_key()     turnq:reaper        STRING  single-sweeper lock for the beat reaper.
    cancel_channel() turnq:cancel        PUBSUB  turn ids whose cancellation was requested;
                                         each worker process subscribes once.  Postgres
                                         (turns.cancel_mode) holds the request if it is lost.
    compact_pending_key(sid)
                     turnq:compact:{sid} STRING  "a compaction is queued" (SET NX EX
                                         compaction_pending_ttl_s), holding the request's
                                         time: at most one pending compaction per session.
                                         The compaction task deletes it when it starts; the
                                         reaper asks again when it is older than
                                         reaper_stale_s and the summarize queue is empty
                                         (its message died with a killed summarizer).
    beat_job_key(job)
                     turnq:beat:{job}    STRING  single-runner lock of a beat job
                                         (``retention``, ``cluster_metrics``): SET NX PX
                                         0.9 x the job's interval, never deleted, so a job
                                         runs at most once per interval however many beats
                                         or duplicate messages there are.
    cluster_metrics_key()
                     turnq:metrics:cluster
                                         HASH    the cluster snapshot the metrics job writes
                                         (queue depths, turns by status, oldest queued turn,
                                         sessions over budget, ``taken_at``); EXPIRE
                                         cluster_metrics_ttl_s(interval) so a dead beat
                                         shows as missing gauges, not frozen ones.  Every
                                         process's /metrics reads it (shared.metrics).

Two roles, which may be two servers (``TURNQ_BROKER_URL``; one server by default):

* **state** (``TURNQ_REDIS_URL``): every key above and the cancel channel;
* **broker** (``TURNQ_BROKER_URL``): Celery's queues (``queue(name)``, ``queue_keys``: the
  kicks; the producer's direct kick LPUSHes here), kombu's ``unacked`` / ``unacked_index``
  / ``unacked_mutex`` and ``_kombu.binding.*`` keys, and the control and task-event
  channels (Flower, ``celery inspect``).  Queue depths are read here.

``namespace`` (Settings.namespace; the ``ns`` argument overrides it) is prefixed
to every key and queue so several
deployments, or parallel test runs, can share one Redis.  Postgres is the source
of truth: losing every key here (FLUSHALL) only delays turns until the reaper
re-kicks them.
"""

from __future__ import annotations

from shared.settings import get_settings

# Celery task names (the client sends by name; it never imports workers/).
DRAIN_TASK = "turnq.drain"
COMPACT_TASK = "turnq.compact"
REAP_TASK = "turnq.reap"
RETENTION_TASK = "turnq.retention"
CLUSTER_METRICS_TASK = "turnq.cluster_metrics"

TURNS_QUEUE = "turns"
SUMMARIZE_QUEUE = "summarize"
MAINTENANCE_QUEUE = "maintenance"


def _ns(ns: str | None) -> str:
    return get_settings().namespace if ns is None else ns


def queue(name: str, ns: str | None = None) -> str:
    """The broker queue name for a logical queue (``turns``, ``summarize``...)."""
    return f"{_ns(ns)}{name}"


def lock_key(session_id: str, ns: str | None = None) -> str:
    return f"{_ns(ns)}turnq:lock:{session_id}"


def events_key(turn_id: str, ns: str | None = None) -> str:
    return f"{_ns(ns)}turnq:events:{turn_id}"


def text_key(worker: str, ns: str | None = None) -> str:
    return f"{_ns(ns)}turnq:text:{worker}"


def reader_wake_key(token: str, ns: str | None = None) -> str:
    return f"{_ns(ns)}turnq:wake:{token}"


READER_WAKE_TTL_S = 3600


def compact_pending_key(session_id: str, ns: str | None = None) -> str:
    return f"{_ns(ns)}turnq:compact:{session_id}"


def cancel_channel(ns: str | None = None) -> str:
    """PUB/SUB channel: a cancel request's turn id, for the worker running it."""
    return f"{_ns(ns)}turnq:cancel"


def reaper_key(ns: str | None = None) -> str:
    return f"{_ns(ns)}turnq:reaper"


def beat_job_key(job: str, ns: str | None = None) -> str:
    """Single-runner lock of one beat job (the reaper keeps ``reaper_key``)."""
    return f"{_ns(ns)}turnq:beat:{job}"


def cluster_metrics_key(ns: str | None = None) -> str:
    return f"{_ns(ns)}turnq:metrics:cluster"


def cluster_metrics_ttl_s(interval_s: float) -> int:
    """The snapshot outlives a few missed runs, then disappears."""
    return max(60, int(interval_s * 4))


def queue_keys(name: str, ns: str | None = None) -> list[str]:
    """The Redis lists behind one broker queue: kombu emulates priorities with one list
    per priority step (``name``, ``name\\x06\\x163`` ...), so a depth sums them all."""
    base = queue(name, ns)
    return [base, *(f"{base}\x06\x16{p}" for p in range(1, 10))]
