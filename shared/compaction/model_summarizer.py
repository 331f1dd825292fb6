"""A model as summarizer, the validation every summarizer passes, and loading by name.

    summarize = load_summarizer("auto", settings)   # extractive offline, an Agent online
    summary = await summarize(previous, evicted, max_tokens=policy.summary_max_tokens)

``validated`` turns a failure, an empty answer or an error text into ``SummaryError``,
so a failed summary is never committed over the history it replaces.
"""

from __future__ import annotations

import importlib
import inspect
import re
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, cast

from shared.compaction.base import Item, Summarizer, SummaryError
from shared.compaction.summarizers import ExtractiveSummarizer, render_items
from shared.compaction.turns import shorten_text
from shared.tokens import HeuristicEstimator, TokenEstimator

if TYPE_CHECKING:
    from agents import Model, ModelProvider

    from shared.settings import Settings

__all__ = ["AgentSummarizer", "ValidatedSummarizer", "load_summarizer", "validated"]


# --- a model as summarizer ----------------------------------------------------------------

DEFAULT_INSTRUCTIONS = """\
You maintain the running summary of a conversation between a user and an assistant.
You receive the previous summary (possibly empty) and the part of the conversation that
is leaving the assistant's context. Write ONE new summary that replaces both.
Rules:
- Copy identifiers exactly as written: names, numbers, codes, ids (e.g. A-1234), e-mail
  addresses, URLs, dates, amounts. Never round, translate or paraphrase them.
- Keep every fact the user stated about themselves, their preferences and their task.
  When a fact changed, keep only the latest value.
- Keep tool results that may matter later as `tool(arguments) -> result`.
- List questions the assistant could not answer yet.
- Reduce small talk and finished topics to a short gist.
Use these sections, each line starting with "- ": "User facts:", "Tool results:",
"Open questions:", "Earlier topics:". Output only the summary, no preamble."""


class AgentSummarizer:
    """A summarizer ``agents.Agent`` on its own (usually cheaper) model.

    Long evictions are folded in chunks of at most ``max_input_tokens``, each chunk
    into the summary so far, so the summarizer model's own window is never exceeded.
    Any model failure becomes ``SummaryError``.
    """

    def __init__(
        self,
        model: Model | str,
        instructions: str | None = None,
        *,
        model_provider: ModelProvider | None = None,
        max_input_tokens: int = 24_000,
        tracing_disabled: bool = True,
        estimator: TokenEstimator | None = None,
    ) -> None:
        self.model = model
        self.instructions = instructions or DEFAULT_INSTRUCTIONS
        self.model_provider = model_provider
        self.max_input_tokens = max_input_tokens
        self.tracing_disabled = tracing_disabled
        self.estimator = estimator or HeuristicEstimator()

    def _chunks(self, lines: Sequence[str]) -> list[list[str]]:
        budget = self.max_input_tokens
        chunks: list[list[str]] = [[]]
        used = 0
        for original in lines:
            line, cap = original, budget * 4
            cost = self.estimator.count_text(line) + 1
            while cost > budget and cap > 0:  # one huge message: keep its head and tail
                line, cap = shorten_text(original, cap), cap // 2
                cost = self.estimator.count_text(line) + 1
            if used + cost > budget and chunks[-1]:
                chunks.append([])
                used = 0
            chunks[-1].append(line)
            used += cost
        return chunks

    async def __call__(
        self, previous: str | None, evicted: Sequence[Item], *, max_tokens: int
    ) -> str:
        summary = previous
        for chunk in self._chunks(render_items(evicted)):
            summary = await self._fold(summary, chunk, max_tokens)
            # A bad intermediate summary must not become the next chunk's "previous".
            problem = _looks_failed(summary, (previous or "") + "\n" + "\n".join(chunk))
            if problem:
                raise SummaryError(problem)
        return summary or ""

    async def _fold(self, previous: str | None, lines: Sequence[str], max_tokens: int) -> str:
        from agents import Agent, ModelSettings, RunConfig, Runner

        agent: Agent[None] = Agent(
            name="turnq-summarizer",
            instructions=self.instructions,
            model=self.model,
            model_settings=ModelSettings(max_tokens=max(256, 2 * max_tokens)),
        )
        prompt = (
            f"Previous summary:\n{previous or '(none)'}\n\n"
            "Conversation leaving the context:\n" + "\n".join(lines) + "\n\n"
            f"Write the new summary in at most {max_tokens} tokens."
        )
        config = RunConfig(tracing_disabled=self.tracing_disabled)
        if self.model_provider is not None:
            config.model_provider = self.model_provider
        try:
            result = await Runner.run(agent, prompt, run_config=config, max_turns=1)
        except Exception as exc:
            raise SummaryError(f"summarizer model failed: {type(exc).__name__}: {exc}") from exc
        output = result.final_output
        if not isinstance(output, str):
            raise SummaryError(f"summarizer returned {type(output).__name__}, not text")
        return output.strip()


# --- validation and loading ---------------------------------------------------------------

_ERROR_START = re.compile(r"^\s*(?:error\b|traceback\b|exception\b|\{\s*['\"]error['\"])", re.I)
_ERROR_PHRASES = (
    "rate limit",
    "exceeded your quota",
    "internal server error",
    "service unavailable",
    "context_length_exceeded",
    "maximum context length",
)


def _looks_failed(summary: str | None, source: str | Callable[[], str]) -> str | None:
    """Why ``summary`` is no summary (empty, an error text), or None if it may be one.

    Error phrases count only when the summarized text does not contain them itself
    (``source``), so a conversation about rate limits can still be summarized.
    """
    if summary is None or not summary.strip():
        return "the summarizer returned an empty summary"
    if _ERROR_START.match(summary):
        return f"the summary looks like an error: {summary[:120]!r}"
    lowered = summary.lower()
    found = [phrase for phrase in _ERROR_PHRASES if phrase in lowered]
    if found:
        text = (source if isinstance(source, str) else source()).lower()
        if any(phrase not in text for phrase in found):
            return f"the summary looks like an error: {summary[:120]!r}"
    return None


class ValidatedSummarizer:
    """Refuses (``SummaryError``) any summary that must not replace the history it covers."""

    def __init__(self, inner: Summarizer, estimator: TokenEstimator | None = None) -> None:
        self.inner = inner
        self.estimator = estimator or HeuristicEstimator()

    async def __call__(
        self, previous: str | None, evicted: Sequence[Item], *, max_tokens: int
    ) -> str:
        try:
            summary = await self.inner(previous, evicted, max_tokens=max_tokens)
        except SummaryError:
            raise
        except Exception as exc:
            raise SummaryError(f"summarizer failed: {type(exc).__name__}: {exc}") from exc
        if not isinstance(summary, str):
            raise SummaryError(f"the summarizer returned {type(summary).__name__}, not text")
        problem = _looks_failed(
            summary, lambda: (previous or "") + "\n" + "\n".join(render_items(evicted))
        )
        if problem:
            raise SummaryError(problem)
        tokens = self.estimator.count_text(summary)
        if tokens >= max_tokens * 1.5:
            raise SummaryError(f"the summary has {tokens} tokens, over 1.5 x {max_tokens}")
        return summary


def validated(summarizer: Summarizer, estimator: TokenEstimator | None = None) -> Summarizer:
    """``summarizer`` behind the checks of ``ValidatedSummarizer`` (never wrapped twice)."""
    if isinstance(summarizer, ValidatedSummarizer):
        return summarizer
    return ValidatedSummarizer(summarizer, estimator)


def _from_import_path(spec: str) -> Summarizer:
    module_name, _, attr = spec.partition(":")
    try:
        obj: Any = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as exc:
        raise ValueError(f"cannot load summarizer {spec!r}: {exc}") from exc
    if inspect.isclass(obj):
        return cast(Summarizer, obj())
    if inspect.iscoroutinefunction(obj):  # the summarizer itself
        return cast(Summarizer, obj)
    if callable(obj) and inspect.isfunction(obj):
        required = [
            p
            for p in inspect.signature(obj).parameters.values()
            if p.default is p.empty and p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
        ]
        if not required:
            return cast(Summarizer, obj())
    if callable(obj):
        return cast(Summarizer, obj)
    raise ValueError(f"{spec!r} is neither a summarizer nor a factory of one")


def load_summarizer(spec: str, settings: Settings) -> Summarizer:
    """ "auto", "extractive", "agent" or "package.module:attr", always ``validated``.

    "auto" is extractive with the offline model and a model summarizer otherwise;
    "agent" uses ``settings.summarizer_model`` on the configured backend.
    """
    builders: dict[str, Callable[[], Summarizer]] = {
        "extractive": ExtractiveSummarizer,
        "agent": lambda: _agent_summarizer(settings),
    }
    if spec == "auto":
        spec = "extractive" if settings.use_offline_model else "agent"
    if spec in builders:
        return validated(builders[spec]())
    if ":" in spec:
        return validated(_from_import_path(spec))
    raise ValueError(f"unknown summarizer {spec!r}: use auto, extractive, agent or module:attr")


def _agent_summarizer(settings: Settings) -> Summarizer:
    from shared.models import build_model_provider

    model = build_model_provider(settings).get_model(settings.summarizer_model)
    return AgentSummarizer(model, tracing_disabled=not settings.tracing)
