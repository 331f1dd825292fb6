"""CPU time and peak memory of the processes a benchmark exercises.

    meter = Meter(worker_pids=[w.pid for w in workers])
    meter.start()
    ...                                   # the measured run
    usage = meter.stop()                  # Usage: CPU seconds per role, wall, peak MB/worker
    usage.cpu_ms_per(turns)

CPU is summed over a process tree: the process itself, its live descendants, and the
children it has already reaped (``children_user``/``children_system``), so a Postgres
backend that exits during the run still counts (the postmaster reaps it).  Roles:

* ``worker``: the given worker processes (and the benchmark's own process, for the
  in-process benchmarks, when ``include_self``),
* ``redis``: the redis-server that ``REDIS`` points at (its pid from ``INFO server``),
* ``postgres``: the postmaster serving ``PG_ADMIN`` and all its backends.

Both servers are shared with whatever else runs on the machine, so their figures
include that noise; the worker figure does not.  The whole machine's busy and iowait
CPU over the same interval is recorded beside (``machine_cores``): what the measured
roles do not account for is someone else's.  Peak memory is each worker
process's high-water RSS (``VmHWM``), read just before the meter stops.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import psutil
import psycopg
import redis

from benchmarks.common import PG_ADMIN, REDIS


def tree_cpu_s(pid: int) -> float:
    """CPU seconds of a process, its live descendants and its reaped children."""
    try:
        root = psutil.Process(pid)
        procs = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return 0.0
    total = 0.0
    for p in procs:
        try:
            t = p.cpu_times()
        except psutil.NoSuchProcess:
            continue
        total += t.user + t.system + t.children_user + t.children_system
    return total


def peak_rss_mb(pid: int) -> float:
    """High-water RSS of a process and its descendants (VmHWM), in MiB."""
    try:
        procs = [psutil.Process(pid), *psutil.Process(pid).children(recursive=True)]
    except psutil.NoSuchProcess:
        return float("nan")
    kb = 0
    for p in procs:
        try:
            with open(f"/proc/{p.pid}/status") as f:
                kb += next(int(ln.split()[1]) for ln in f if ln.startswith("VmHWM:"))
        except (OSError, StopIteration):
            continue
    return kb / 1024


def server_pids() -> dict[str, int]:
    """The pids of the Redis and Postgres servers the benchmarks use."""
    r = redis.Redis.from_url(REDIS)
    try:
        redis_pid = int(r.info("server")["process_id"])
    finally:
        r.close()
    with psycopg.connect(PG_ADMIN) as conn:
        row = conn.execute("SELECT pg_backend_pid()").fetchone()
        assert row is not None
        postmaster = psutil.Process(int(row[0])).ppid()  # while the backend lives
    return {"redis": redis_pid, "postgres": postmaster}


def machine_cpu_s() -> dict[str, float]:
    """Whole-machine CPU seconds so far: busy (all but idle and iowait), and iowait."""
    t = psutil.cpu_times()
    iowait = float(getattr(t, "iowait", 0.0))
    return {"busy": sum(t) - t.idle - iowait, "iowait": iowait}


@dataclass
class Usage:
    wall_s: float
    cpu_s: dict[str, float]  # role -> CPU seconds
    per_worker_cpu_s: list[float]
    peak_mb_per_worker: float  # the largest worker's high-water RSS
    machine_s: dict[str, float] = field(default_factory=dict)  # whole machine: busy, iowait

    @property
    def total_cpu_s(self) -> float:
        return sum(self.cpu_s.values())

    def cpu_ms_per(self, turns: int) -> float:
        return self.total_cpu_s * 1000 / turns if turns else float("nan")

    def utilisation(self) -> dict[str, float]:
        """Cores in use per role (1.0 = one core busy for the whole run)."""
        return {k: v / self.wall_s for k, v in self.cpu_s.items()} if self.wall_s else {}

    def as_dict(self) -> dict[str, object]:
        return {
            "wall_s": self.wall_s,
            "cpu_s": self.cpu_s,
            "per_worker_cpu_s": self.per_worker_cpu_s,
            "cores": self.utilisation(),
            "peak_mb_per_worker": self.peak_mb_per_worker,
            # everything on the machine (other users' processes too), in cores
            "machine_cores": {k: v / self.wall_s for k, v in self.machine_s.items()},
        }


@dataclass
class Meter:
    worker_pids: Sequence[int]
    include_self: bool = False
    servers: dict[str, int] = field(default_factory=server_pids)
    _t0: float = 0.0
    _before: dict[str, float] = field(default_factory=dict)
    _workers_before: list[float] = field(default_factory=list)
    _machine_before: dict[str, float] = field(default_factory=dict)

    def _workers(self) -> list[float]:
        pids = [*self.worker_pids, *([os.getpid()] if self.include_self else [])]
        return [tree_cpu_s(p) for p in pids]

    def _sample(self) -> dict[str, float]:
        return {role: tree_cpu_s(pid) for role, pid in self.servers.items()}

    def start(self) -> Meter:
        self._before = self._sample()
        self._workers_before = self._workers()
        self._machine_before = machine_cpu_s()
        self._t0 = time.perf_counter()
        return self

    def stop(self) -> Usage:
        wall = time.perf_counter() - self._t0
        machine = {k: v - self._machine_before[k] for k, v in machine_cpu_s().items()}
        after = self._sample()
        workers = [a - b for a, b in zip(self._workers(), self._workers_before, strict=True)]
        peaks = [peak_rss_mb(p) for p in self.worker_pids] or [peak_rss_mb(os.getpid())]
        cpu = {"worker": sum(workers), **{k: after[k] - self._before[k] for k in after}}
        return Usage(wall, cpu, workers, max(peaks), machine)
