"""Token estimation: the heuristic, calibration, and tiktoken only when it is local."""

from __future__ import annotations

import asyncio
import sys
import types
from typing import Any

import pytest
from agents import RunConfig, Runner

from shared.demo_agent import build_agent
from shared.models.brain import estimate_tokens as brain_estimate
from shared.models.offline import OfflineModel
from shared.store import estimate_tokens as store_estimate
from shared.tokens import (
    ATTACHMENT_TOKENS,
    CalibratedEstimator,
    HeuristicEstimator,
    TiktokenEstimator,
    TokenEstimator,
    calibrate,
    default_estimator,
)


def test_heuristic_is_about_four_ascii_characters_a_token() -> None:
    est = HeuristicEstimator()
    assert est.count_text("") == 0
    assert est.count_text("abcd") == 1
    assert est.count_text("a" * 400) == 100
    assert HeuristicEstimator(chars_per_token=2.0).count_text("a" * 400) == 200


def test_heuristic_counts_utf8_so_non_latin_text_costs_more_per_character() -> None:
    est = HeuristicEstimator()
    assert est.count_text("東京" * 100) == 150  # 600 bytes: real tokenizers split CJK finely
    assert est.count_text("é" * 100) == 50
    assert est.count_text("ab" * 50) == 25
    # JSON escapes are not counted: the characters themselves are.
    assert est.count_items([{"content": "é" * 100}]) < est.count_items(
        [{"content": "\\u00e9" * 100}]
    )


def test_every_item_costs_at_least_one_token_plus_overhead() -> None:
    est = HeuristicEstimator(per_item_overhead=2)
    assert est.count_items([]) == 0
    assert est.count_items([{}]) == 1 + 2
    assert est.count_items([{"role": "user", "content": ""}] * 3) == 3 * est.count_items(
        [{"role": "user", "content": ""}]
    )
    with pytest.raises(ValueError):
        HeuristicEstimator(chars_per_token=0)


def test_heuristic_satisfies_the_protocol() -> None:
    assert isinstance(HeuristicEstimator(), TokenEstimator)
    assert isinstance(CalibratedEstimator(HeuristicEstimator()), TokenEstimator)


def _offline_conversation() -> tuple[list[Any], int]:
    async def main() -> tuple[list[Any], int]:
        agent, history = build_agent(), list[Any]()
        config = RunConfig(model=OfflineModel(), tracing_disabled=True)
        result: Any = None
        texts = [
            "My name is Ada and the door code is 4417.",
            "What is the weather in Austin?",
            "How about Seattle?",
            "Which city is warmer?",
            "Tell me something about the history of Paris, I am going there in May. " * 3,
            "What is my name?",
        ]
        for text in texts:
            result = await Runner.run(
                agent, [*history, {"role": "user", "content": text}], run_config=config
            )
            history = result.to_input_list()
        return history, int(result.raw_responses[-1].usage.input_tokens)

    return asyncio.run(main())


def test_estimates_agree_with_the_offline_models_reported_usage() -> None:
    history, measured = _offline_conversation()
    est = HeuristicEstimator()
    ours = est.count_items(history)
    assert abs(ours - brain_estimate(history)) <= 0.2 * brain_estimate(history)
    assert abs(ours - sum(store_estimate(i) for i in history)) <= 0.2 * ours
    # The offline model reports the items plus instructions and tool schemas of the
    # last call (whose input is the history minus the final answer).
    agent = build_agent()
    tool = agent.tools[0]
    overhead = est.count_text(str(agent.instructions)) + est.count_text(
        f"{tool.name} {getattr(tool, 'description', '')} {getattr(tool, 'params_json_schema', '')}"
    )
    estimated = est.count_items(history[:-1]) + overhead
    assert abs(estimated - measured) <= 0.2 * measured


def test_calibrate_is_the_bounded_ratio_of_measured_to_estimated() -> None:
    est = HeuristicEstimator()
    assert calibrate(est, 900, 1000) == pytest.approx(0.9)
    assert calibrate(est, 10_000, 1000) == 2.0
    assert calibrate(est, 1, 1000) == 0.5
    assert calibrate(est, 0, 1000) == 1.0  # no measurement: no correction
    assert calibrate(est, 1000, 0) == 1.0


def test_calibration_is_relative_to_the_raw_estimator() -> None:
    raw = HeuristicEstimator()
    text = "x" * 4000  # 1000 raw tokens
    first = CalibratedEstimator.wrap(raw, calibrate(raw, 800, raw.count_text(text)))
    assert first.count_text(text) == 800
    # The calibrated estimator now says 800; the model measures 600.
    second = CalibratedEstimator.wrap(first, calibrate(first, 600, first.count_text(text)))
    assert second.inner is raw and second.factor == pytest.approx(0.6)
    assert second.count_text(text) == 600
    assert CalibratedEstimator.wrap(raw, 50.0).factor == 2.0
    assert CalibratedEstimator.wrap(raw, float("nan")).factor == 1.0
    assert second.count_items([]) == 0


def test_without_tiktoken_the_default_is_the_heuristic(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "tiktoken", None)  # import fails
    assert TiktokenEstimator.load() is None
    assert isinstance(default_estimator(), HeuristicEstimator)


class _FakeEncoding:
    def encode(self, text: str, disallowed_special: Any = ()) -> list[int]:
        return list(range(len(text.split())))


def _fake_tiktoken(
    monkeypatch: pytest.MonkeyPatch, cached: bool
) -> tuple[list[str], types.ModuleType]:
    """A stand-in tiktoken whose get_encoding reads its BPE file like the real one does."""
    fetched: list[str] = []
    load = types.ModuleType("tiktoken.load")

    def read_file(blobpath: str) -> bytes:
        fetched.append(blobpath)
        return b"bpe"

    load.read_file = read_file  # type: ignore[attr-defined]
    module = types.ModuleType("tiktoken")
    module.load = load  # type: ignore[attr-defined]

    def get_encoding(name: str) -> _FakeEncoding:
        if not cached:
            load.read_file(f"https://openaipublic.blob.core.windows.net/encodings/{name}.tiktoken")
        return _FakeEncoding()

    module.get_encoding = get_encoding  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "tiktoken", module)
    monkeypatch.setitem(sys.modules, "tiktoken.load", load)
    return fetched, load


def test_tiktoken_is_never_allowed_to_download(monkeypatch: pytest.MonkeyPatch) -> None:
    fetched, load = _fake_tiktoken(monkeypatch, cached=False)
    original = load.read_file
    assert TiktokenEstimator.load() is None
    assert isinstance(default_estimator(), HeuristicEstimator)
    assert fetched == []  # the download was refused before it started
    assert load.read_file is original


def test_a_locally_available_tiktoken_encoding_is_used(monkeypatch: pytest.MonkeyPatch) -> None:
    _fake_tiktoken(monkeypatch, cached=True)
    est = default_estimator()
    assert isinstance(est, TiktokenEstimator)
    assert est.count_text("one two three") == 3
    item = {"type": "message", "role": "assistant", "id": "msg_x", "content": "a b"}
    assert est.count_items([item]) == (1 + 2) + 3  # role + text, plus the per-item overhead


def test_an_image_or_file_counts_as_a_fixed_estimate_not_its_base64() -> None:
    """An 8 MiB data URL counted as text would be ~2.8M tokens: the budget would trim away
    the message it came in.  Every estimate counts it as ATTACHMENT_TOKENS instead."""
    big = "data:image/png;base64," + "A" * 4 * 1024 * 1024
    parts = [
        {"type": "input_text", "text": "what is this?"},
        {"type": "input_image", "image_url": big},
        {"type": "input_file", "file_data": big, "filename": "a.pdf"},
    ]
    item = {"role": "user", "content": parts}
    text_only = {"role": "user", "content": [parts[0]]}
    est = HeuristicEstimator()
    assert est.count_items([item]) == est.count_items([text_only]) + 2 * ATTACHMENT_TOKENS
    assert brain_estimate([item]) == brain_estimate([text_only]) + 2 * ATTACHMENT_TOKENS
    assert store_estimate(item) == store_estimate(text_only) + 2 * ATTACHMENT_TOKENS
    # In a tool's output too; and text that merely names a part type is text.
    output = {"type": "function_call_output", "call_id": "c1", "output": [parts[1]]}
    assert est.count_items([output]) < ATTACHMENT_TOKENS + 50
    said = {"role": "user", "content": 'a part is {"type": "input_image"}'}
    assert est.count_items([said]) == est.count_item(said) < 20
    odd = {"role": "user", "content": [{"type": {"not": "hashable"}}, parts[1]]}
    assert ATTACHMENT_TOKENS < est.count_items([odd]) < ATTACHMENT_TOKENS + 30  # no error


class _Encoding:
    """tiktoken's interface, one token per word."""

    def encode(self, text: str, disallowed_special: Any = ()) -> list[int]:
        return [0] * len(text.split())


def test_tiktoken_counts_attachments_the_same_way() -> None:
    est = TiktokenEstimator(_Encoding())
    image = {"type": "input_image", "image_url": "data:image/png;base64," + "A" * 10_000}
    item = {"role": "user", "content": [{"type": "input_text", "text": "a b c"}, image]}
    assert est.count_items([item]) == est.count_items([{"role": "user", "content": "a b c"}]) + (
        ATTACHMENT_TOKENS
    )
