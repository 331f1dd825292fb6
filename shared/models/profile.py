"""How a model answers over time: instantly (the default) or in a production shape.

    profile = ModelProfile.build("realistic")            # 300 tokens at 60-100 tokens/s
    profile = ModelProfile.build("realistic", tokens_per_s="80", tool_first=True)
    reply = profile.shape(reply, items, tools)          # a tool call first; the answer padded
    pace = profile.pace(rng)                            # this call's rate and first-token delay
    async for frame in pace.stream(frames): ...         # (is_token, frame): tokens 1/rate apart

Shared by the offline model (in-process, ``TURNQ_MODEL_PROFILE``...) and the stub HTTP
server (``turnq stub-llm --profile realistic``), so both stream the same shape:

* ``answer_tokens``: a text answer is padded with filler words up to this many tokens (a
  token is one streamed delta, a word with its trailing space); 0 keeps the brain's answer.
  The brain's own words come first, so answers stay meaningful; one longer than N is kept.
* ``tokens_per_s``: a rate drawn per model call in ``(low, high)``; token ``i`` is sent
  ``(i + 1) / rate`` seconds after the first frame, so N tokens take N / rate.  0: at once.
* ``tool_first``: when the agent offers tools, the first model call of a turn calls one
  (the brain's choice, else the first tool) and the answer streams after its output.
* ``jitter_s``: each call's time to first byte grows by a uniform draw in ``[0, jitter_s]``.
* ``stamp``: (benchmarks) each filler token carries the wall-clock millisecond it was sent,
  in base 36 after a ``~`` (``read_stamps``), so a reader can measure token latency.
"""

from __future__ import annotations

import asyncio
import random
import re
import time
from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any, Literal, TypeVar

from shared.models.brain import Reply, ToolSpec, first_tool_call

__all__ = ["PROFILES", "ModelProfile", "Pace", "parse_rate", "read_stamps", "tokens"]

T = TypeVar("T")
ProfileName = Literal["instant", "realistic"]
PROFILES: tuple[ProfileName, ...] = ("instant", "realistic")

FILLER = (
    "lorem ipsum dolor sit amet consectetur adipiscing elit sed do eiusmod tempor "
    "incididunt ut labore et dolore magna aliqua"
).split()
STAMP_MARK = "~"
_STAMP_WIDTH = 8  # base-36 digits: milliseconds since the epoch until the year 2059
PLACEHOLDER = STAMP_MARK + "?" * _STAMP_WIDTH  # replaced by the stamp as the token is sent
_STAMP = re.compile(r"~([0-9a-z]{8})\b")
_TOKEN = re.compile(r"\S+\s*|\s+")


def tokens(text: str) -> list[str]:
    """The text as streamed deltas: words with their trailing space (the brain's unit)."""
    return _TOKEN.findall(text) or [""]


def parse_rate(value: str | float | tuple[float, float] | None) -> tuple[float, float]:
    """``"80"`` -> (80, 80); ``"60-100"`` -> (60, 100); None or 0 -> (0, 0): instant."""
    if value is None:
        return (0.0, 0.0)
    if isinstance(value, tuple):
        low, high = value
    elif isinstance(value, int | float):
        low = high = float(value)
    else:
        low_s, _, high_s = str(value).partition("-")
        low = float(low_s)
        high = float(high_s) if high_s else low
    if low < 0 or high < low:
        raise ValueError(f"tokens per second must be N or LOW-HIGH with 0 <= LOW <= HIGH: {value}")
    return (float(low), float(high))


def _base36(n: int) -> str:
    digits = "0123456789abcdefghijklmnopqrstuvwxyz"
    out = ""
    while n:
        n, r = divmod(n, 36)
        out = digits[r] + out
    return out.rjust(_STAMP_WIDTH, "0")[-_STAMP_WIDTH:]


def read_stamps(text: str) -> list[float]:
    """The send times (epoch seconds) of the stamped tokens in ``text``, in order."""
    return [int(m, 36) / 1000 for m in _STAMP.findall(text)]


@dataclass(frozen=True)
class Pace:
    """One model call's timing: the extra time to first byte and the token interval."""

    first_byte_s: float = 0.0
    token_interval_s: float = 0.0
    stamp: bool = False

    def generation_s(self, token_count: int) -> float:
        """How long the answer takes to generate (a non-streamed call waits for it)."""
        return token_count * self.token_interval_s

    async def paced(self, frames: Iterable[tuple[bool, T]]) -> AsyncIterator[tuple[bool, T]]:
        """``(is_token, frame)`` pairs, each token frame released on its schedule:
        ``(i + 1)`` token intervals after the first frame."""
        loop = asyncio.get_running_loop()
        start = loop.time()
        n = 0
        for is_token, frame in frames:
            if is_token and self.token_interval_s > 0:
                n += 1
                delay = start + n * self.token_interval_s - loop.time()
                if delay > 0:
                    await asyncio.sleep(delay)
            yield is_token, frame

    async def stream(self, frames: Iterable[tuple[bool, str]]) -> AsyncIterator[str]:
        """Paced SSE frames, each token stamped as it goes if asked; later frames that
        repeat the text (a Responses ``done`` event) get the same stamps."""
        sent: list[str] = []
        async for is_token, frame in self.paced(frames):
            if self.stamp and PLACEHOLDER in frame:
                if is_token:
                    stamp = STAMP_MARK + _base36(int(time.time() * 1000))
                    sent.append(stamp)
                    frame = frame.replace(PLACEHOLDER, stamp, 1)
                else:
                    for stamp in sent:
                        frame = frame.replace(PLACEHOLDER, stamp, 1)
            yield frame


@dataclass(frozen=True)
class ModelProfile:
    answer_tokens: int = 0
    tokens_per_s: tuple[float, float] = (0.0, 0.0)
    tool_first: bool = False
    jitter_s: float = 0.0
    stamp: bool = False

    @classmethod
    def build(
        cls,
        profile: str = "instant",
        *,
        answer_tokens: int | None = None,
        tokens_per_s: str | float | tuple[float, float] | None = None,
        tool_first: bool | None = None,
        jitter_s: float | None = None,
        stamp: bool | None = None,
    ) -> ModelProfile:
        """A named profile with any of its fields overridden (None: the profile's own)."""
        if profile == "instant":
            base = cls()
        elif profile == "realistic":
            base = cls(answer_tokens=300, tokens_per_s=(60.0, 100.0), jitter_s=0.2)
        else:
            raise ValueError(f"unknown model profile {profile!r}: one of {', '.join(PROFILES)}")
        changes: dict[str, Any] = {}
        if answer_tokens is not None:
            if answer_tokens < 0:
                raise ValueError("answer_tokens must be >= 0")
            changes["answer_tokens"] = answer_tokens
        if tokens_per_s is not None:
            changes["tokens_per_s"] = parse_rate(tokens_per_s)
        if tool_first is not None:
            changes["tool_first"] = tool_first
        if jitter_s is not None:
            if jitter_s < 0:
                raise ValueError("jitter_s must be >= 0")
            changes["jitter_s"] = jitter_s
        if stamp is not None:
            changes["stamp"] = stamp
        return replace(base, **changes)

    @property
    def instant(self) -> bool:
        return self == ModelProfile()

    def shape(
        self, reply: Reply, items: Sequence[Mapping[str, Any]], tools: Sequence[ToolSpec]
    ) -> Reply:
        """The brain's reply in this profile: a tool call first, the answer padded."""
        if self.tool_first and reply.text is not None:
            forced = first_tool_call(items, tools)
            if forced is not None:
                return forced
        if reply.text is None or self.answer_tokens <= 0:
            return reply
        have = tokens(reply.text) if reply.text else []
        missing = self.answer_tokens - len(have)
        if missing <= 0:
            return reply
        text = reply.text if not reply.text or reply.text[-1].isspace() else reply.text + " "
        words = (
            [PLACEHOLDER] * missing
            if self.stamp
            else [FILLER[i % len(FILLER)] for i in range(missing)]
        )
        return Reply(text=text + " ".join(words) + ".")

    def pace(self, rng: random.Random | None = None) -> Pace:
        """One call's timing: a rate drawn in the range, a jittered first byte."""
        draw = rng or random
        low, high = self.tokens_per_s
        rate = draw.uniform(low, high) if high > 0 else 0.0
        return Pace(
            first_byte_s=draw.uniform(0.0, self.jitter_s) if self.jitter_s > 0 else 0.0,
            token_interval_s=1.0 / rate if rate > 0 else 0.0,
            stamp=self.stamp,
        )
