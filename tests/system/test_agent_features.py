"""Agent features through a real worker (I11): guardrails, max_turns, structured output,
content parts, and users' models that answer only whole.

One deployment, ``tests.agents:features``, has an entry agent per feature; each test's
sessions pick theirs with ``agent=``.  tests/system/test_error_codes.py checks each failure's
code and reason everywhere they are read; here the agent's side: what the transcript
keeps, that nothing is retried, and that the session goes on.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Callable, Iterator
from typing import Any

import psycopg
import pytest

from shared.errors import ContentTooLarge, InvalidInput
from shared.status import ErrorCode, TurnStatus
from tests.support.deployments import Deployment, deployment
from tests.system.test_gateway_support import is_terminal, sse_events

pytestmark = pytest.mark.system

ATTACHMENT_LIMIT = 1024 * 1024


@pytest.fixture(scope="module")
def features(stack_env: dict[str, str]) -> Iterator[Deployment]:
    limits = {"TURNQ_MAX_TURNS": "3", "TURNQ_MAX_ATTACHMENT_BYTES": str(ATTACHMENT_LIMIT)}
    with deployment(stack_env, "features", "tests.agents:features", gateway=True, **limits) as d:
        yield d


@pytest.fixture(scope="module")
def written(database_url: str) -> Iterator[Callable[[], tuple[int, int, int]]]:
    """(sessions, turns, items): a refused request adds to none of them."""
    with psycopg.connect(database_url, autocommit=True) as conn:

        def counts() -> tuple[int, int, int]:
            row = conn.execute(
                "SELECT (SELECT count(*) FROM sessions), (SELECT count(*) FROM turns), "
                "(SELECT count(*) FROM items)"
            ).fetchone()
            assert row is not None
            return int(row[0]), int(row[1]), int(row[2])

        yield counts


def run(d: Deployment, session: str, user: str, content: Any, agent: str) -> Any:
    return d.client.wait(d.client.enqueue(session, user, content, agent=agent).id, timeout=60)


def kinds(items: list[dict[str, Any]]) -> list[str]:
    """The transcript in short: user/assistant messages by their text, tool items by name."""
    out = []
    for item in items:
        if item.get("role") == "user":
            out.append(f"user: {item['content']}")
        elif item.get("type") == "function_call":
            out.append(f"call: {item['name']}")
        elif item.get("type") == "function_call_output":
            out.append("output")
        else:
            out.append(f"{item.get('role')}: {item['content'][0]['text']}")
    return out


# ====================================================================== guardrails
@pytest.mark.parametrize(
    ("marker", "guardrail", "model_calls"),
    [
        ("[block-in]", "the input guardrail 'no_blocked_words'", 0),  # blocking: no call
        ("[leak]", "the output guardrail 'no_secret_out'", 1),
        ("[tool-in]", "the tool guardrail 'no_forbidden_query'", 1),
        ("[tool-out]", "the tool guardrail 'no_classified_result'", 1),
    ],
)
def test_a_guardrail_keeps_the_users_message_and_the_session_goes_on(
    features: Deployment, uid: str, marker: str, guardrail: str, model_calls: int
) -> None:
    client, session, user = features.client, f"g-{uid}", f"u-{uid}"
    assert run(features, session, user, "hello", "guarded").output == "ok: hello"
    failed = run(features, session, user, f"please {marker}", "guarded")
    assert (failed.status, failed.error_code) == (TurnStatus.FAILED, ErrorCode.GUARDRAIL)
    assert failed.error is not None and failed.error.startswith(guardrail), failed.error
    # Not retried: one execution, and only the model calls the run made before it tripped.
    assert failed.attempts == 1 and failed.output is None
    assert failed.usage is not None and failed.usage["requests"] == model_calls
    # The user's message stays in the transcript, with no answer and no tool call.
    assert kinds(client.history(session, user)) == [
        "user: hello",
        "assistant: ok: hello",
        f"user: please {marker}",
    ]
    after = run(features, session, user, "still there?", "guarded")
    assert (after.status, after.output) == (TurnStatus.SUCCEEDED, "ok: still there?")
    assert kinds(client.history(session, user))[-2:] == [
        "user: still there?",
        "assistant: ok: still there?",
    ]
    s = client.session(session, user)
    assert s.active_agent == "guarded" and s.requests == 2 + model_calls  # failed calls count


# ====================================================================== max_turns
def test_max_turns_ends_the_turn_after_that_many_model_calls(
    features: Deployment, uid: str
) -> None:
    client, session, user = features.client, f"m-{uid}", f"u-{uid}"
    failed = run(features, session, user, "go on forever", "looping")
    assert (failed.status, failed.error_code) == (TurnStatus.FAILED, ErrorCode.MAX_TURNS)
    assert "max_turns" in (failed.error or "") and "(3)" in (failed.error or "")
    assert failed.attempts == 1 and failed.usage is not None
    assert failed.usage["requests"] == 3  # TURNQ_MAX_TURNS model calls, then it stopped
    assert client.history(session, user) == []  # nothing of a failed run; no dangling calls
    after = run(features, session, user, "enough", "looping")
    assert (after.status, after.output) == (TurnStatus.SUCCEEDED, "stopped")
    assert kinds(client.history(session, user)) == ["user: enough", "assistant: stopped"]


# ====================================================================== structured output
def test_structured_output_is_output_json_everywhere(
    features: Deployment, database_url: str, uid: str
) -> None:
    expected = {"answer": "yes: is it?", "confidence": 0.75, "tags": ["a", "ü"]}
    done = run(features, f"s-{uid}", f"u-{uid}", "is it?", "structured")
    assert done.status is TurnStatus.SUCCEEDED, done.error
    assert done.output_json == expected and json.loads(done.output or "") == expected

    api = features.api(database_url, f"web-{uid}")
    turn = api.send(f"s-{uid}", "is it?", agent="structured")
    with api.http.stream("GET", f"/v1/turns/{turn['turn_id']}/events") as r:
        events = [e["data"] for e in sse_events(r.iter_lines(), stop=is_terminal)]
    final = events[-1]
    assert (final["status"], final["agent"]) == ("succeeded", "structured")
    assert json.loads(final["output_json"]) == expected
    view = api.wait(turn["turn_id"])
    assert view["output_json"] == expected and json.loads(view["output"]) == expected
    # The transcript holds the model's message as it was (the JSON text).
    answer = api.items(f"s-{uid}")[-1]
    assert json.loads(answer["content"][0]["text"]) == expected


# ====================================================================== content parts
def data_url(media_type: str, data: bytes) -> str:
    return f"data:{media_type};base64,{base64.b64encode(data).decode()}"


PNG = data_url("image/png", b"\x89PNG\r\n\x1a\n" + bytes(range(256)))
PARTS = [
    {"type": "input_text", "text": "Describe:"},
    {"type": "input_image", "image_url": "https://example.com/pets/cat.png", "detail": "low"},
    {"type": "input_image", "image_url": PNG},
    {
        "type": "input_file",
        "file_data": data_url("application/pdf", b"%PDF-1.4 a report"),
        "filename": "report.pdf",
    },
]


def test_every_part_type_is_accepted_and_reaches_the_model_as_given(
    features: Deployment, database_url: str, uid: str
) -> None:
    client, session, user = features.client, f"p-{uid}", f"u-{uid}"
    done = run(features, session, user, PARTS, "plain")
    assert done.status is TurnStatus.SUCCEEDED, done.error
    assert done.content == PARTS
    assert done.input == "Describe:\n[image]\n[image]\n[file: report.pdf]"
    # The offline model cannot look: it names what it was given.
    for shown in ("[image: cat.png]", "[image: inline data]", "[file: report.pdf]"):
        assert shown in (done.output or ""), done.output
    assert client.history(session, user)[0] == {"role": "user", "content": PARTS}

    # An image alone is a message too; and the same through HTTP.
    big = data_url("image/jpeg", b"\xff\xd8" + b"j" * (ATTACHMENT_LIMIT // 2))
    api = features.api(database_url, user)
    turn = api.expect(
        202,
        "POST",
        f"/v1/sessions/h-{uid}/turns",
        json={"content": [{"type": "input_image", "image_url": big}], "agent": "plain"},
    )
    view = api.wait(turn["turn_id"])
    assert view["status"] == "succeeded", view
    assert view["content"] == [{"type": "input_image", "image_url": big}]
    assert view["input"] == "[image]" and "[image: inline data]" in view["output"]
    assert api.items(f"h-{uid}")[0]["content"] == [{"type": "input_image", "image_url": big}]


TEXT = {"type": "input_text", "text": "look"}
IMAGE = "input_image"
TOO_LARGE = data_url("image/png", b"p" * (ATTACHMENT_LIMIT * 3 // 4 + 100))  # just over
# (what, parts, the field named, what the message says, HTTP status)
REFUSED: list[tuple[str, list[Any], str, str, int]] = [
    ("unknown type", [TEXT, {"type": "input_audio", "data": "x"}], "content[1].type",
     "must be one of input_text, input_image, input_file", 422),
    ("http image", [{"type": IMAGE, "image_url": "http://x.org/a.png"}], "content[0].image_url",
     "must be an https:// URL", 422),
    ("javascript: URL", [{"type": IMAGE, "image_url": "javascript:alert(1)"}],
     "content[0].image_url", "must be an https:// URL", 422),
    ("file: URL", [{"type": "input_file", "file_url": "file:///etc/passwd"}],
     "content[0].file_url", "must be an https:// URL", 422),
    ("bad base64", [{"type": IMAGE, "image_url": "data:image/png;base64,abc"}],
     "content[0].image_url", "is not valid base64", 422),
    ("not base64", [{"type": "input_file", "file_data": "data:text/plain,hello"}],
     "content[0].file_data", "must be a base64 data URL", 422),
    ("html as image", [{"type": IMAGE, "image_url": data_url("text/html", b"<b>")}],
     "content[0].image_url", "images must be one of", 422),
    ("unknown field", [{"type": "input_text", "text": "x", "color": "red"}], "content[0]",
     "unknown field(s) for input_text: color", 422),
    ("two sources", [{"type": IMAGE, "image_url": PNG, "file_id": "f1"}], "content[0]",
     "needs exactly one of image_url, file_id", 422),
    ("no source", [{"type": "input_file", "filename": "a.pdf"}], "content[0]",
     "needs exactly one of file_data, file_url, file_id", 422),
    ("bad detail", [{"type": IMAGE, "image_url": PNG, "detail": "max"}], "content[0].detail",
     "must be auto, low or high", 422),
    ("bad filename", [{"type": "input_file", "file_data": PNG, "filename": "../../x"}],
     "content[0].filename", "no / \\ or controls", 422),
    ("NUL in text", [{"type": "input_text", "text": "a\x00b"}], "content[0].text", "NUL", 422),
    ("blank text only", [{"type": "input_text", "text": "  "}], "content", "empty", 422),
    ("no parts", [], "content", "1 to 32 parts", 422),
    ("too many parts", [TEXT] * 33, "content", "1 to 32 parts", 422),
    ("not an object", ["look"], "content[0]", "must be an object", 422),
    ("too large", [{"type": IMAGE, "image_url": TOO_LARGE}], "content",
     "its images and files are", 413),
]  # fmt: skip


def test_bad_parts_are_refused_naming_the_part_and_nothing_is_written(
    features: Deployment,
    database_url: str,
    written: Callable[[], tuple[int, int, int]],
    uid: str,
) -> None:
    client, user = features.client, f"u-{uid}"
    api = features.api(database_url, user)
    for what, parts, field, says, status in REFUSED:
        before = written()
        with pytest.raises(ContentTooLarge if status == 413 else InvalidInput) as err:
            client.enqueue(f"r-{uid}", user, parts, agent="plain")
        assert (err.value.field, says in err.value.message) == (field, True), (what, err.value)
        assert len(str(err.value)) < 300, (what, "the error echoes the input")
        r = api.request(
            "POST", f"/v1/sessions/r-{uid}/turns", json={"content": parts, "agent": "plain"}
        )
        assert r.status_code == status, (what, r.status_code, r.text[:300])
        problem = r.json()
        code = "content_too_large" if status == 413 else "invalid_input"
        assert (problem["code"], problem["detail"]) == (code, f"{field}: {err.value.message}")
        if status == 422:
            assert problem["errors"] == [{"field": field, "message": err.value.message}]
        assert written() == before, f"{what}: a refusal wrote rows"
    # The session was never created; a good message still goes through.
    assert run(features, f"r-{uid}", user, [TEXT], "plain").status is TurnStatus.SUCCEEDED


# ====================================================================== whole answers
@pytest.mark.parametrize("agent", ["whole-def", "whole-async", "whole-gen"])
def test_a_model_that_only_answers_whole_is_streamed_anyway(
    features: Deployment, database_url: str, uid: str, agent: str
) -> None:
    api, session = features.api(database_url, f"u-{uid}"), f"w-{uid}"
    for message in ("[tool] first", "second"):  # the second after the model is known
        turn = api.send(session, message, agent=agent)
        with api.http.stream("GET", f"/v1/turns/{turn['turn_id']}/events") as r:
            events = [e["data"] for e in sse_events(r.iter_lines(), stop=is_terminal)]
        view = api.wait(turn["turn_id"])
        assert view["status"] == "succeeded", (view, features.logs())
        assert view["attempts"] == 1 and view["output"].startswith(f"whole: {message} word")
        text = "".join(e["text"] for e in events if e["type"] == "delta")
        assert text == view["output"]  # the whole answer, replayed as deltas
        deltas = [e for e in events if e["type"] == "delta"]
        assert len(deltas) >= 1 and events[-1]["status"] == "succeeded"
        tools = [e["name"] for e in events if e["type"] == "tool_call"]
        assert tools == (["tick"] if "[tool]" in message else [])
    assert kinds(api.items(session)) == [
        "user: [tool] first",
        "call: tick",
        "output",
        f"assistant: whole: [tool] first {'word ' * 40}",
        "user: second",
        f"assistant: whole: second {'word ' * 40}",
    ]
