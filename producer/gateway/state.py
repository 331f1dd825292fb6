"""What one gateway process holds for its lifetime (built in the app's lifespan)."""

from __future__ import annotations

from dataclasses import dataclass, field

from fastapi import Request

from producer.client import AsyncClient
from producer.gateway.keys import KeyStore
from producer.gateway.ratelimit import RateLimiter
from shared.settings import Settings


@dataclass
class Gateway:
    settings: Settings
    client: AsyncClient
    keys: KeyStore
    limiter: RateLimiter
    workers_cache: tuple[float, dict[str, object]] | None = field(default=None)


def gateway_of(request: Request) -> Gateway:
    gw = request.app.state.gateway
    assert isinstance(gw, Gateway), "the gateway's lifespan did not run"
    return gw
