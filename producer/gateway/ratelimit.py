"""Per-user rate limit: a token bucket in Redis, one Lua script per request.

    limiter = RateLimiter(redis, rate_per_s=20, burst=40, namespace=settings.namespace)
    decision = await limiter.hit("alice")      # .allowed, .retry_after_s

The key layout lives here rather than in ``shared/keys.py`` because only the gateway
uses it (see ``rate_limit_key``).  A Redis outage fails open: the gateway keeps
answering (turns are durable in Postgres) and logs that it is not limiting.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path

import redis.asyncio as aioredis
from redis.exceptions import RedisError

log = logging.getLogger(__name__)

SCRIPT = (Path(__file__).parent / "ratelimit.lua").read_text()


def rate_limit_key(user_id: str, ns: str) -> str:
    """``{ns}turnq:ratelimit:{user_id}``  HASH {tokens, ts}: the user's token bucket.

    Expires once the bucket would be full again, so idle users cost no memory.
    """
    return f"{ns}turnq:ratelimit:{user_id}"


@dataclass(frozen=True)
class Decision:
    allowed: bool
    retry_after_s: int  # whole seconds for the Retry-After header (>= 1 when refused)
    remaining: int


ALLOW = Decision(True, 0, 0)


class RateLimiter:
    def __init__(
        self, redis: aioredis.Redis, *, rate_per_s: float, burst: int, namespace: str
    ) -> None:
        self.redis = redis
        self.rate = rate_per_s
        self.burst = burst
        self.namespace = namespace
        self._script = redis.register_script(SCRIPT)

    @property
    def enabled(self) -> bool:
        return self.rate > 0

    async def hit(self, user_id: str) -> Decision:
        if not self.enabled:
            return ALLOW
        try:
            raw = await self._script(
                keys=[rate_limit_key(user_id, self.namespace)], args=[self.rate, self.burst]
            )
        except (RedisError, OSError):
            log.warning("rate limiter unavailable (Redis); not limiting", exc_info=True)
            return ALLOW
        allowed, retry_ms, remaining = (int(x) for x in raw)
        if allowed:
            return Decision(True, 0, remaining)
        return Decision(False, max(1, math.ceil(retry_ms / 1000)), 0)
