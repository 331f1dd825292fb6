"""Real worker and beat processes for system tests: the same commands ``turnq dev`` runs."""

from __future__ import annotations

import tempfile
from pathlib import Path

from ops.processes import BEAT_READY, WORKER_READY, ManagedProcess, beat_command, worker_command


class WorkerProcess(ManagedProcess):
    def __init__(
        self,
        env: dict[str, str],
        name: str = "w1",
        concurrency: int = 50,
        queues: tuple[str, ...] = ("turns", "maintenance"),
    ) -> None:
        ns = env.get("TURNQ_NAMESPACE", "")
        cmd = worker_command(name=name, queues=[ns + q for q in queues], concurrency=concurrency)
        super().__init__(cmd, env, name, ready=WORKER_READY)


class BeatProcess(ManagedProcess):
    def __init__(self, env: dict[str, str], name: str = "beat") -> None:
        schedule = Path(tempfile.mkdtemp(prefix="turnq-beat-")) / "schedule"
        super().__init__(beat_command(schedule), env, name, ready=BEAT_READY)
