"""Benchmark-only: every model response is built the OpenAI client's own way
(``construct_type``), as before turnq's fast parse path (docs/decisions/0013).

Put this folder on ``PYTHONPATH`` of a worker (``benchmarks/levers.py``'s
``client_parse`` arm) to measure what the fast path saves.
"""

import shared.models.parsing as _parsing


def _never(cast_to):  # type: ignore[no-untyped-def]
    return None


_parsing.builder = _never
