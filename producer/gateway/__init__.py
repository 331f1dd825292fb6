"""turnq's HTTP gateway: the API any backend (any language) uses to send turns.

    from producer.gateway import create_app         # FastAPI app factory
    app = create_app(get_settings())                # `turnq gateway` serves it with uvicorn

    from producer.gateway.keys import create_key    # API keys (hashed at rest)
    key = create_key(database_url, "alice", "laptop")

Modules: ``app`` (factory, health, metrics, OpenAPI), ``routes`` (/v1), ``auth`` and
``keys`` (API keys), ``ratelimit`` (per-user token bucket in Redis), ``problems``
(RFC 9457 errors), ``sse`` (event streams), ``server`` (uvicorn), ``http_client``
(what `turnq chat --url` uses).  Importing this package does not import FastAPI.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from producer.gateway.app import create_app

__all__ = ["create_app"]


def __getattr__(name: str) -> Any:
    if name == "create_app":
        from producer.gateway.app import create_app

        return create_app
    raise AttributeError(name)
