"""Benchmark-only: ``json.dumps``/``json.loads`` served by orjson wherever the call allows.

Put this folder on ``PYTHONPATH`` of a worker (``benchmarks/levers.py``'s ``orjson`` arm):
it is the upper bound of what orjson can save a turn -- every stdlib JSON call of the
process that orjson can take (turnq's JSONB items and stream events, psycopg's JSONB
loads), not only the ones turnq would switch.  Calls with a custom encoder class, hooks,
indentation or separators (kombu's messages) stay on the stdlib.
"""

import json

import orjson

_dumps, _loads = json.dumps, json.loads


def dumps(obj, *args, **kw):  # type: ignore[no-untyped-def]
    extra = set(kw) - {"ensure_ascii", "default", "sort_keys", "check_circular", "allow_nan"}
    if args or extra:
        return _dumps(obj, *args, **kw)
    option = orjson.OPT_NON_STR_KEYS | (orjson.OPT_SORT_KEYS if kw.get("sort_keys") else 0)
    try:
        return orjson.dumps(obj, default=kw.get("default"), option=option).decode()
    except (TypeError, orjson.JSONEncodeError):
        return _dumps(obj, **kw)


def loads(s, *args, **kw):  # type: ignore[no-untyped-def]
    if args or kw:
        return _loads(s, *args, **kw)
    try:
        return orjson.loads(s)
    except orjson.JSONDecodeError:
        return _loads(s)


json.dumps = dumps
json.loads = loads
