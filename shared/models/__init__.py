"""Which model the agents talk to: the offline brain or an OpenAI-compatible endpoint.

    from shared.models import chat_model
    from shared.settings import get_settings
    run_config = RunConfig(model=chat_model(get_settings()), tracing_disabled=True)

``Settings.use_offline_model`` decides: with no API key and no base URL (the default in
dev and tests) every call stays in-process; point ``openai_base_url`` at the stub server
(``python -m shared.models.stub_server``) to exercise the real HTTP client path.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from agents import Model, ModelProvider, OpenAIChatCompletionsModel, OpenAIResponsesModel

from shared.models.offline import OfflineModel, OfflineModelProvider
from shared.models.profile import ModelProfile

if TYPE_CHECKING:
    from openai import AsyncOpenAI

    from shared.settings import Settings

__all__ = [
    "OfflineModel",
    "OfflineModelProvider",
    "build_model_provider",
    "chat_model",
    "offline_profile",
]


def _client(settings: Settings) -> AsyncOpenAI:
    import httpx2
    from openai import DefaultAsyncHttpxClient

    from shared.models.parsing import FastParseOpenAI

    # One connection per model call in flight: the SDK's default pool (1,000 connections,
    # 100 kept alive) would queue a worker's calls beyond that and reconnect after bursts.
    connections = max(1000, settings.worker_concurrency + 100)
    limits = httpx2.Limits(max_connections=connections, max_keepalive_connections=connections)
    # "unused": a base_url-only setup (stub server, local gateway) still needs a non-empty key.
    # max_retries=0: turnq's retry policy (workers/retry.py) is the one retry layer.
    return FastParseOpenAI(
        api_key=settings.openai_api_key or "unused",
        base_url=settings.openai_base_url,
        timeout=settings.model_timeout_s,
        max_retries=0,
        http_client=DefaultAsyncHttpxClient(limits=limits),
    )


def _openai_model(name: str, settings: Settings, client: AsyncOpenAI) -> Model:
    if settings.openai_api == "chat":
        return OpenAIChatCompletionsModel(model=name, openai_client=client)
    return OpenAIResponsesModel(model=name, openai_client=client)


class _OpenAIProvider(ModelProvider):
    """One shared client (one connection pool) for every model name asked for."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._client = _client(settings)

    def get_model(self, model_name: str | None) -> Model:
        return _openai_model(model_name or self._settings.chat_model, self._settings, self._client)

    async def aclose(self) -> None:
        await self._client.close()


def offline_profile(settings: Settings) -> ModelProfile:
    """The offline model's answer shape: ``TURNQ_MODEL_PROFILE`` and its overrides."""
    return ModelProfile.build(
        settings.model_profile,
        answer_tokens=settings.model_answer_tokens,
        tokens_per_s=settings.model_tokens_per_s,
        tool_first=settings.model_tool_first,
        jitter_s=settings.model_jitter_s,
    )


def build_model_provider(settings: Settings) -> ModelProvider:
    """The provider for ``RunConfig(model_provider=...)``, offline or OpenAI per settings."""
    if settings.use_offline_model:
        return OfflineModelProvider(profile=offline_profile(settings))
    return _OpenAIProvider(settings)


def chat_model(settings: Settings) -> Model:
    """The model for ``RunConfig(model=...)``: ``settings.chat_model`` on the chosen backend."""
    if settings.use_offline_model:
        return OfflineModel(profile=offline_profile(settings))
    return _openai_model(settings.chat_model, settings, _client(settings))
