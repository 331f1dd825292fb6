"""Rules that need no services: settings, validation, status transitions, keys."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from shared import keys
from shared.errors import ContentTooLarge, InvalidInput
from shared.settings import Settings, read_stack_file
from shared.validation import check_content, check_id, check_turn_id


def test_database_url_spellings_normalise_to_psycopg3() -> None:
    for url in ("postgres://u@h/db", "postgresql://u@h/db", "postgresql+psycopg2://u@h/db"):
        assert Settings(database_url=url).database_url == "postgresql+psycopg://u@h/db"
    with pytest.raises(ValueError, match="postgresql"):
        Settings(database_url="mysql://u@h/db")


def test_blank_urls_mean_unset(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TURNQ_DATABASE_URL", raising=False)
    s = Settings(redis_url="  ", database_url="", data_dir=tmp_path)
    assert s.redis_url is None and s.database_url is None
    with pytest.raises(RuntimeError, match="turnq dev"):
        s.require_database_url()


def test_stack_file_of_a_dead_process_is_ignored(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("TURNQ_REDIS_URL", raising=False)
    monkeypatch.delenv("TURNQ_DATABASE_URL", raising=False)
    (tmp_path / "stack.json").write_text(
        json.dumps({"redis_url": "redis://x", "database_url": "postgresql://y", "pid": 2**22 + 7})
    )
    assert read_stack_file(tmp_path) is None
    assert Settings(data_dir=tmp_path).redis_url is None


def test_offline_model_unless_a_key_or_url_is_given() -> None:
    assert Settings(model_provider="auto").use_offline_model
    assert not Settings(model_provider="auto", openai_api_key="sk-test").use_offline_model
    assert not Settings(
        model_provider="auto", openai_base_url="http://127.0.0.1:1/v1"
    ).use_offline_model
    assert Settings(model_provider="offline", openai_api_key="sk-test").use_offline_model


def test_prod_refuses_placeholder_secret() -> None:
    with pytest.raises(ValueError, match="placeholder"):
        Settings(env="prod", openai_api_key="changeme")


@pytest.mark.parametrize(
    "value", ["", " x", "a b", "a/b", "a'b", "x" * 129, "é", "a\x00", "-lead", 5, None]
)
def test_bad_ids(value: object) -> None:
    with pytest.raises(InvalidInput) as info:
        check_id("session_id", value, 128)
    assert info.value.field == "session_id"


@pytest.mark.parametrize("value", ["a", "support-42", "user@example.com", "org:team.1_2"])
def test_good_ids(value: str) -> None:
    assert check_id("session_id", value, 128) == value


@pytest.mark.parametrize("value", ["", "   \n\t", "a\x00b", "\ud800", 7, b"bytes"])
def test_bad_content(value: object) -> None:
    with pytest.raises(InvalidInput):
        check_content(value, 100)


def test_content_size_is_bytes_not_characters() -> None:
    assert check_content("é" * 50, 100)  # 100 bytes: accepted
    with pytest.raises(ContentTooLarge, match="101 bytes"):
        check_content("é" * 50 + "x", 100)


def test_turn_id_must_be_a_uuid() -> None:
    with pytest.raises(InvalidInput):
        check_turn_id("42")
    assert check_turn_id("6F9619FF-8B86-D011-B42D-00C04FC964FF") == (
        "6f9619ff-8b86-d011-b42d-00c04fc964ff"
    )


def test_keys_and_queues_are_namespaced() -> None:
    assert keys.lock_key("abc", "t1:") == "t1:turnq:lock:abc"
    assert keys.events_key("t", "") == "turnq:events:t"
    assert keys.queue(keys.TURNS_QUEUE, "x:") == "x:turns"
