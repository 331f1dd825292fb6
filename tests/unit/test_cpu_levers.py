"""The defaults decision 0010 chose for the per-turn CPU levers, and their switches."""

from __future__ import annotations

import pytest

from shared.celery_app import make_celery
from shared.settings import Settings


def test_task_events_are_off_by_default_and_a_setting_turns_them_on(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("TURNQ_TASK_EVENTS", raising=False)
    assert make_celery(Settings()).conf.worker_send_task_events is False
    monkeypatch.setenv("TURNQ_TASK_EVENTS", "true")
    conf = make_celery(Settings()).conf
    assert conf.worker_send_task_events is True
    assert conf.task_send_sent_event is False  # never: a publish per kick
