"""Benchmark-only: the drain looks in Postgres after every release, as it did before the
"kicked while held" mark (docs/decisions/0012): ``SessionLock.quiet`` is never True.

Put this folder on ``PYTHONPATH`` of a worker (``benchmarks/levers.py``'s
``always_check`` arm) to measure what the mark saves: the ``claimable`` round trip after
every drain that ended with nothing to run.
"""

import shared.locks as _locks

_release = _locks.SessionLock.release


async def _release_and_look(self):  # type: ignore[no-untyped-def]
    released = await _release(self)
    self.quiet = False
    return released


_locks.SessionLock.release = _release_and_look
