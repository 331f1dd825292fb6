"""Token estimates for the model's context, until the model measures it.

    from shared.tokens import calibrate, default_estimator
    estimator = default_estimator()              # tiktoken if installed and cached, else heuristic
    estimator.count_items(view)                  # the trim and compaction budgets use this
    # after a model call reported usage.input_tokens for a context we estimated:
    estimator = CalibratedEstimator.wrap(estimator, calibrate(estimator, measured, estimated))

The model's reported usage is the truth (DESIGN "Token accounting"); estimates only
bridge the text added since the last call.  The heuristic counts UTF-8 bytes of each
item's compact-ish JSON divided by ``chars_per_token`` (≈ chars/4 for English, so it
agrees with ``shared.models.brain.estimate_tokens`` -- the offline model's reported
usage -- and ``shared.store.estimate_tokens``), while text outside ASCII, which real
tokenizers split finer, costs more per character.  It overestimates real models a
little (JSON keys are counted), which is the safe side for I8; ``calibrate`` corrects it.
"""

from __future__ import annotations

import json
import math
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

__all__ = [
    "ATTACHMENT_TOKENS",
    "CalibratedEstimator",
    "HeuristicEstimator",
    "TiktokenEstimator",
    "TokenEstimator",
    "calibrate",
    "default_estimator",
    "text_and_attachments",
]

Item = Mapping[str, Any]
MIN_FACTOR, MAX_FACTOR = 0.5, 2.0


@runtime_checkable
class TokenEstimator(Protocol):
    def count_text(self, text: str) -> int:
        """Tokens of a bare text (0 for "")."""
        ...

    def count_items(self, items: Sequence[Item]) -> int:
        """Tokens of input items, each at least 1 plus a small per-item overhead."""
        ...


def _item_json(item: object) -> str:
    return item if isinstance(item, str) else json.dumps(item, ensure_ascii=False, default=str)


# An image or a file in a message (a content part, also in a tool's output).  Models charge
# them by size in tiles or pages, not by their base64 text: a high-detail 1024x1024 image
# is 765 tokens at OpenAI.  Counted as text, one 8 MiB data URL would be ~2.8M tokens and
# the budget would trim away the very message it came in (I8); a fixed estimate instead,
# which calibration against the model's measured usage corrects like any other.
ATTACHMENT_TOKENS = 1000
_ATTACHMENT_TYPES = frozenset({"input_image", "input_file"})


def _attachments_apart(value: object) -> tuple[object, int]:
    """``value`` without its image and file parts, and how many there were."""
    if isinstance(value, Mapping):
        out, n = {}, 0
        for key, v in value.items():
            out[key], m = _attachments_apart(v)
            n += m
        return out, n
    if isinstance(value, list | tuple):
        kept, n = [], 0
        for v in value:
            if isinstance(v, Mapping) and str(v.get("type")) in _ATTACHMENT_TYPES:
                n += 1
                continue
            w, m = _attachments_apart(v)
            kept.append(w)
            n += m
        return kept, n
    return value, 0


def text_and_attachments(value: object) -> tuple[str, int]:
    """``value`` as JSON text to estimate from, images and files left out, and how many
    images and files it holds (each worth ``ATTACHMENT_TOKENS``)."""
    text = _item_json(value)
    if '"input_image"' not in text and '"input_file"' not in text:
        return text, 0  # the usual case: one substring test, no second walk
    stripped, n = _attachments_apart(value)
    return _item_json(stripped), n


@dataclass(frozen=True)
class HeuristicEstimator:
    """UTF-8 bytes / ``chars_per_token``: no tokenizer, no download, deterministic."""

    chars_per_token: float = 4.0
    per_item_overhead: int = 2

    def __post_init__(self) -> None:
        if self.chars_per_token <= 0:
            raise ValueError("chars_per_token must be positive")
        if self.per_item_overhead < 0:
            raise ValueError("per_item_overhead must not be negative")

    def count_text(self, text: str) -> int:
        return math.ceil(len(text.encode("utf-8", "surrogatepass")) / self.chars_per_token)

    def count_item(self, item: Item) -> int:
        text, attachments = text_and_attachments(item)
        own = max(1, self.count_text(text)) + attachments * ATTACHMENT_TOKENS
        return own + self.per_item_overhead

    def count_items(self, items: Sequence[Item]) -> int:
        return sum(self.count_item(item) for item in items)


# Keys whose values are ids, flags or opaque blobs rather than text the model reads.
_NOT_TEXT = frozenset({"id", "type", "status", "call_id", "annotations", "logprobs"})


def _strings(value: object) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, Mapping):
        return [s for k, v in value.items() if k not in _NOT_TEXT for s in _strings(v)]
    if isinstance(value, list | tuple):
        return [s for v in value for s in _strings(v)]
    return [] if value is None else [str(value)]


class TiktokenEstimator:
    """Real BPE counts of each item's text fields plus a per-item overhead (3, as OpenAI's).

    Build it with ``TiktokenEstimator.load()``, which returns None rather than download
    an encoding: tiktoken fetches its BPE files over HTTP on first use, and turnq must
    run on machines with no network.
    """

    _load_lock = threading.Lock()  # guards the temporary patch of tiktoken.load.read_file

    def __init__(self, encoding: Any, per_item_overhead: int = 3) -> None:
        self.encoding = encoding
        self.per_item_overhead = per_item_overhead

    @classmethod
    def load(cls, name: str = "o200k_base") -> TiktokenEstimator | None:
        """The estimator for encoding ``name`` if tiktoken has it locally, else None."""
        try:
            import tiktoken
            import tiktoken.load
        except ImportError:
            return None
        original = tiktoken.load.read_file

        def local_only(blobpath: str) -> bytes:
            if "://" in blobpath:
                raise OSError(f"tiktoken encoding {name!r} is not cached; not downloading it")
            return bytes(original(blobpath))

        with cls._load_lock:  # read_file is module state: patch it for this call only
            tiktoken.load.read_file = local_only
            try:
                encoding = tiktoken.get_encoding(name)
            except Exception:  # not cached, unknown name, corrupt cache: fall back
                return None
            finally:
                tiktoken.load.read_file = original
        return cls(encoding)

    def count_text(self, text: str) -> int:
        return len(self.encoding.encode(text, disallowed_special=()))

    def count_items(self, items: Sequence[Item]) -> int:
        total = 0
        for item in items:
            text, attachments = _attachments_apart(item)
            own = max(1, sum(self.count_text(s) for s in _strings(text)))
            total += own + attachments * ATTACHMENT_TOKENS + self.per_item_overhead
        return total


@dataclass(frozen=True)
class CalibratedEstimator:
    """Another estimator's counts times ``factor`` (see ``calibrate``)."""

    inner: TokenEstimator
    factor: float = 1.0

    @classmethod
    def wrap(cls, estimator: TokenEstimator, factor: float) -> CalibratedEstimator:
        """``estimator`` with ``factor`` (replacing, not stacking on, an earlier calibration)."""
        inner = estimator.inner if isinstance(estimator, CalibratedEstimator) else estimator
        return cls(inner, _bounded(factor))

    def count_text(self, text: str) -> int:
        return math.ceil(self.inner.count_text(text) * self.factor)

    def count_items(self, items: Sequence[Item]) -> int:
        return math.ceil(self.inner.count_items(items) * self.factor) if items else 0


def _bounded(factor: float) -> float:
    if not math.isfinite(factor):
        return 1.0
    return min(MAX_FACTOR, max(MIN_FACTOR, factor))


def calibrate(estimator: TokenEstimator, measured_tokens: int, estimated_tokens: int) -> float:
    """The correction factor (0.5-2.0) that makes ``estimator`` match a measured count.

    ``estimated_tokens`` is what ``estimator`` said for the context the model then
    measured as ``measured_tokens``.  For a ``CalibratedEstimator`` the factor already
    applied is taken into account, so the result is always relative to the raw
    estimator and can be passed straight to ``CalibratedEstimator.wrap``.  Nonsense
    input (zero or negative counts) keeps the current factor.
    """
    current = estimator.factor if isinstance(estimator, CalibratedEstimator) else 1.0
    if measured_tokens <= 0 or estimated_tokens <= 0:
        return current
    return _bounded(current * measured_tokens / estimated_tokens)


def default_estimator() -> TokenEstimator:
    """tiktoken's o200k_base (then cl100k_base) when available offline, else the heuristic."""
    for name in ("o200k_base", "cl100k_base"):
        estimator = TiktokenEstimator.load(name)
        if estimator is not None:
            return estimator
    return HeuristicEstimator()
