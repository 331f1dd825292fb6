"""Real worker and beat processes for system tests (``celery -A workers.app ...``).

    with WorkerProcess(env, name="w1", concurrency=50) as w:
        ...            # w.kill(), w.pause(), w.resume(), w.pid, w.log_text()

Readiness is observed (the worker's "ready." log line), never slept for.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import TracebackType

ROOT = Path(__file__).resolve().parents[2]


def _env(extra: dict[str, str]) -> dict[str, str]:
    env = dict(os.environ)
    env.update(extra)
    env["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(ROOT), env.get("PYTHONPATH", "")) if p
    )
    env.setdefault("OPENAI_AGENTS_DISABLE_TRACING", "1")
    return env


class _Proc:
    ready_marker = ""

    def __init__(self, args: list[str], env: dict[str, str], name: str) -> None:
        self.name = name
        self.args = args
        self.env = _env(env)
        self.log_path = Path(tempfile.mkstemp(prefix=f"turnq-{name}-", suffix=".log")[1])
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 60.0) -> None:
        self._log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            self.args, env=self.env, stdout=self._log, stderr=subprocess.STDOUT, cwd=ROOT
        )
        deadline = time.monotonic() + timeout
        while self.ready_marker not in self.log_text():
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited at start:\n{self.log_text()[-3000:]}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"{self.name} not ready in {timeout}s:\n{self.log_text()[-3000:]}")
            time.sleep(0.05)

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self) -> None:
        """kill -9: no cleanup, no ack, locks left to expire."""
        if self.alive():
            assert self.proc is not None
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def pause(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGCONT)

    def stop(self, timeout: float = 20.0) -> None:
        if self.proc is None:
            return
        if self.alive():
            self.proc.send_signal(signal.SIGCONT)
            self.proc.terminate()
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self._log.close()

    def __enter__(self) -> _Proc:
        self.start()
        return self

    def __exit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


class WorkerProcess(_Proc):
    ready_marker = " ready."

    def __init__(
        self,
        env: dict[str, str],
        name: str = "w1",
        concurrency: int = 50,
        queues: tuple[str, ...] = ("turns", "maintenance"),
        extra_args: tuple[str, ...] = (),
    ) -> None:
        ns = env.get("TURNQ_NAMESPACE", "")
        args = [
            sys.executable, "-m", "celery", "-A", "workers.app", "worker",
            "-P", "threads", "-c", str(concurrency),
            "-Q", ",".join(ns + q for q in queues),
            "-n", f"{name}@%h", "-l", "INFO",
            "--without-mingle", "--without-gossip",
            *extra_args,
        ]  # fmt: skip
        super().__init__(args, env, name)


class BeatProcess(_Proc):
    ready_marker = "beat: Starting"

    def __init__(self, env: dict[str, str], name: str = "beat") -> None:
        schedule = Path(tempfile.mkdtemp(prefix="turnq-beat-")) / "schedule"
        args = [
            sys.executable, "-m", "celery", "-A", "workers.app", "beat",
            "-s", str(schedule), "-l", "INFO",
        ]  # fmt: skip
        super().__init__(args, env, name)
