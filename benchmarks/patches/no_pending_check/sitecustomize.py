"""Benchmark-only, UNSAFE: the drain's pending check after release answers "nothing".

Put this folder on ``PYTHONPATH`` of a worker (``benchmarks/levers.py``'s
``no_pending_check`` arm) to measure the most a "kicked while held" flag could save: the
``claimable`` round trip after every drain, gone.  Safe only where no turn arrives while
its session is held (one-turn sessions, as the levers benchmark drains); in production a
turn enqueued during a drain would wait for the reaper.
"""

import shared.store.worker as _worker


async def _nothing(self, session_id):  # type: ignore[no-untyped-def]
    return False


_worker.WorkerStore.claimable = _nothing
