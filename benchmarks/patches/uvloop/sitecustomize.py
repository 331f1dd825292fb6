"""Benchmark-only: every asyncio loop of the process is a uvloop loop.

Put this folder on ``PYTHONPATH`` of a worker (``benchmarks/levers.py``'s ``uvloop`` arm;
``pip install uvloop`` first): the worker's turn loop (``shared.loop.LoopThread`` calls
``asyncio.new_event_loop()``, which asks the policy) runs on uvloop.
"""

import asyncio

import uvloop

asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
