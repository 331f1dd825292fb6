"""`turnq stub-llm` as a real process on a loopback port, with its control API.

    with stub_llm_process("--profile", "realistic") as stub:
        stub.configure(latency_s=1.0, tool_first=True)   # any StubConfig field, or profile=
        ...                       # point workers at stub.url + "/v1"
        stub.stats()["max_in_flight"]

Used by the system tests (the ``stub_llm`` fixture) and by the benchmarks.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import httpx

from ops.devstack import free_port
from ops.processes import ManagedProcess


class StubLLM:
    def __init__(self, proc: ManagedProcess, url: str) -> None:
        self.proc = proc
        self.url = url

    def configure(self, **config: object) -> None:
        httpx.post(f"{self.url}/_stub/config", json=config, timeout=5).raise_for_status()

    def stats(self) -> dict[str, Any]:
        response = httpx.get(f"{self.url}/_stub/stats", timeout=5)
        response.raise_for_status()
        data: dict[str, Any] = response.json()
        return data

    def reset(self) -> None:
        httpx.post(f"{self.url}/_stub/reset", timeout=5).raise_for_status()

    def worker_env(self, api: str = "chat") -> dict[str, str]:
        """A worker's environment for the demo agent on this stub, over ``api``."""
        return {
            "TURNQ_MODEL_PROVIDER": "openai",
            "TURNQ_OPENAI_BASE_URL": self.url + "/v1",
            "TURNQ_OPENAI_API_KEY": "test-key",
            "TURNQ_OPENAI_API": api,
            "TURNQ_AGENT": "shared.demo_agent:build_agent",
        }


@contextmanager
def stub_llm_process(*options: str) -> Iterator[StubLLM]:
    """``options``: more `turnq stub-llm` options, e.g. ("--profile", "realistic")."""
    port = free_port()
    cmd = [sys.executable, "-m", "producer.cli", "stub-llm", "--port", str(port), *options]
    proc = ManagedProcess(cmd, {}, "stub-llm", ready="stub LLM listening on")
    proc.start()
    try:
        yield StubLLM(proc, f"http://127.0.0.1:{port}")
    finally:
        proc.stop()
