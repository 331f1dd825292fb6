"""Start, watch and stop turnq's processes (workers, beat, ...) as real subprocesses.

    w = ManagedProcess(worker_command(name="w1", queues=["turns"]), env, "w1", ready=" ready.")
    w.start()          # returns once the process logged its ready line
    w.kill() / w.pause() / w.resume() / w.stop()

Used by ``turnq dev`` / ``turnq demo`` and by the system tests, so what the tests
start is exactly what users start.  Readiness is observed in the log, never slept for.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from types import FrameType, TracebackType
from typing import Self

ROOT = Path(__file__).resolve().parent.parent
WORKER_READY = "turnq: worker ready"  # written by workers.app once its runtime is built
BEAT_READY = "beat: Starting"
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


def worker_command(
    *,
    name: str,
    queues: Sequence[str],
    concurrency: int,
    pool: str = "threads",
    loglevel: str = "INFO",
    extra: Sequence[str] = (),
) -> list[str]:
    return [
        sys.executable, "-m", "celery", "-A", "workers.app", "worker",
        "-P", pool, "-c", str(concurrency), "-Q", ",".join(queues),
        "-n", f"{name}@%h", "-l", loglevel, "--without-mingle", "--without-gossip",
        *extra,
    ]  # fmt: skip


def beat_command(schedule: Path, loglevel: str = "INFO") -> list[str]:
    return [
        sys.executable, "-m", "celery", "-A", "workers.app", "beat",
        "-s", str(schedule), "-l", loglevel,
    ]  # fmt: skip


class ManagedProcess:
    def __init__(
        self,
        args: Sequence[str],
        env: Mapping[str, str],
        name: str,
        *,
        ready: str,
        log_path: Path | None = None,
        inherit_env: bool = True,
        own_process_group: bool = False,
    ) -> None:
        """``own_process_group``: Ctrl-C's SIGINT and a closed terminal's SIGHUP reach only
        the owner, which stops the process in order (a Celery worker whose output is not a
        terminal would take SIGHUP as "restart")."""
        self.name = name
        self.args = list(args)
        self.env = {**os.environ, **env} if inherit_env else dict(env)
        self.env["PYTHONPATH"] = os.pathsep.join(
            p for p in (str(ROOT), self.env.get("PYTHONPATH", "")) if p
        )
        self.ready = ready
        if log_path is None:
            fd, raw = tempfile.mkstemp(prefix=f"turnq-{name}-", suffix=".log")
            os.close(fd)
            log_path = Path(raw)
        self.log_path = log_path
        self.own_process_group = own_process_group
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 90.0) -> Self:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                self.args,
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=ROOT,
                process_group=0 if self.own_process_group else None,
            )
        deadline = time.monotonic() + timeout
        while self.ready not in self.log_text():
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited at start:\n{self.log_text()[-3000:]}")
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(
                    f"{self.name} not ready in {timeout}s:\n{self.log_text()[-3000:]}"
                )
            time.sleep(0.05)
        return self

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
        """kill -9: no cleanup, no ack; its locks are left to expire."""
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
        """Warm shutdown (SIGTERM): running turns finish, unacked kicks go back to the queue."""
        if self.proc is None or not self.alive():
            return
        self.proc.send_signal(signal.SIGCONT)
        self.proc.terminate()
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


@contextmanager
def interrupt_on_stop_signals() -> Iterator[None]:
    """SIGTERM and SIGHUP act as Ctrl-C: the first of the three raises KeyboardInterrupt.

    Python's default for SIGTERM and SIGHUP ends the process at once, with no ``finally``
    and no atexit, so a supervisor's stop or a closed terminal left the workers, beat,
    Flower and the embedded Redis and Postgres running.  Later signals are ignored, so a
    repeated SIGTERM or an impatient second Ctrl-C cannot cut the orderly stop short (its
    steps have their own timeouts; SIGKILL still ends everything at once).
    """
    stopping = False

    def interrupt(signum: int, _frame: FrameType | None) -> None:
        nonlocal stopping
        if not stopping:
            stopping = True
            raise KeyboardInterrupt(signal.Signals(signum).name)

    previous = {sig: signal.signal(sig, interrupt) for sig in STOP_SIGNALS}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
