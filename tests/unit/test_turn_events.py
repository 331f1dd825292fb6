"""A reader's merge of a turn's entries and its text chunks (shared/turn_events.py).

A worker writes a turn's entries to the turn's stream and its text to the process's text
stream (decision 0014).  Whatever order a reader happens to read the two streams in, it
hands out the turn's events in the order the worker wrote them, each character once, and
resumes after any event id exactly.
"""

from __future__ import annotations

import random

from hypothesis import given, settings
from hypothesis import strategies as st

from shared.turn_events import (
    CHUNKS,
    PREVIOUS,
    TEXT_FROM,
    TEXT_STREAM,
    Merger,
    chunk_value,
    id_of,
    pos_of,
)

W = "turnq:text:w1"
Write = tuple[str, str, dict[str, str]]  # ("entry", id, fields) or ("chunk", "", {"v": value})


def worker_writes(plan: list[int]) -> tuple[list[Write], list[tuple[str, dict[str, str]]]]:
    """What a worker writes for ``plan`` (chunks after each entry), and the events in order."""
    writes: list[Write] = []
    events: list[tuple[str, dict[str, str]]] = []
    anchor, ms = "", 1000
    for i, chunks in enumerate(plan):
        ms += random.randint(1, 5)
        entry_id = f"{ms}-0"
        fields = {"type": "status" if i == 0 else "tool_call", "i": str(i)}
        writes.append(
            ("entry", entry_id, fields | {TEXT_STREAM: W, TEXT_FROM: "0-0", PREVIOUS: anchor,
                                          CHUNKS: str(plan[i - 1] if i else 0)})
        )  # fmt: skip
        events.append((entry_id, fields))
        for n in range(1, chunks + 1):
            text = f"<{i}.{n}>"
            writes.append(("chunk", "", {"v": chunk_value(entry_id, n, text)}))
            events.append((f"{entry_id}.{n}", {"type": "delta", "text": text}))
        anchor = entry_id
    return writes, events


def read_in_some_order(merger: Merger, writes: list[Write], rng: random.Random) -> list[str]:
    """Read both streams, each in order, interleaved at random, with an honest read of the
    text stream to its end now and then; every batch handed out must extend the last."""
    entries = [w for w in writes if w[0] == "entry"]
    chunks = [w for w in writes if w[0] == "chunk"]
    out: list[str] = []
    e = c = cycle = 0
    while e < len(entries) or c < len(chunks):
        cycle += 1
        move = rng.random()
        if move < 0.45 and e < len(entries):
            merger.entry(entries[e][1], entries[e][2], cycle)
            e += 1
        elif move < 0.9 and c < len(chunks):
            merger.chunk(chunks[c][2]["v"])
            c += 1
        else:  # a read without blocking: every chunk written before the entries read
            upto = writes.index(entries[e - 1]) if e else -1
            while c < len(chunks) and writes.index(chunks[c]) < upto:
                merger.chunk(chunks[c][2]["v"])
                c += 1
            merger.complete(W, cycle)
        out += [event_id for event_id, _ in merger.ready()]
    merger.complete(W, cycle + 1)
    return out + [event_id for event_id, _ in merger.ready()]


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(0, 4), min_size=1, max_size=6), st.integers(0, 2**32))
def test_any_read_order_gives_the_written_order(plan: list[int], seed: int) -> None:
    rng = random.Random(seed)
    writes, events = worker_writes(plan)
    assert read_in_some_order(Merger(), writes, rng) == [i for i, _ in events]


@settings(max_examples=100, deadline=None)
@given(st.lists(st.integers(0, 4), min_size=1, max_size=6), st.integers(0, 2**32))
def test_resume_after_any_id_gives_exactly_the_rest(plan: list[int], seed: int) -> None:
    rng = random.Random(seed)
    writes, events = worker_writes(plan)
    ids = [i for i, _ in events]
    for k, after in enumerate(ids):
        assert read_in_some_order(Merger(pos_of(after)), writes, rng) == ids[k + 1 :]


def test_fields_are_the_events_without_the_routing() -> None:
    writes, events = worker_writes([2, 1])
    merger = Merger()
    for kind, entry_id, fields in writes:
        if kind == "entry":
            merger.entry(entry_id, fields, 1)
        else:
            merger.chunk(fields["v"])
    assert merger.ready() == events


def test_a_lost_chunk_holds_the_next_entry_until_the_text_stream_was_read_to_its_end() -> None:
    writes, events = worker_writes([3, 0])
    merger = Merger()
    merger.entry(writes[0][1], writes[0][2], 1)
    merger.chunk(writes[1][2]["v"])
    merger.chunk(writes[3][2]["v"])  # chunk 2 was trimmed away
    merger.entry(writes[4][1], writes[4][2], 2)
    assert [i for i, _ in merger.ready()] == [events[0][0], events[1][0]]
    assert merger.waiting
    merger.complete(W, 1)  # a read that ended before the entry came: proves nothing
    assert merger.ready() == [] and merger.waiting
    merger.complete(W, 2)
    assert [i for i, _ in merger.ready()] == [events[3][0], events[4][0]]
    assert not merger.waiting


def test_an_entry_of_another_writer_waits_for_the_text_before_it() -> None:
    writes, events = worker_writes([2])
    merger = Merger()
    merger.entry(writes[0][1], writes[0][2], 1)
    merger.entry("2000-0", {"type": "status", "status": "failed"}, 2)  # no routing fields
    merger.chunk(writes[1][2]["v"])
    assert [i for i, _ in merger.ready()] == [events[0][0], events[1][0]]
    merger.complete(W, 3)
    merger.chunk(writes[2][2]["v"])  # read in the same read as the end
    assert [i for i, _ in merger.ready()] == [events[2][0], "2000-0"]


def test_repeated_and_older_entries_and_chunks_are_ignored() -> None:
    writes, events = worker_writes([1, 1])
    merger = Merger()
    for _ in range(2):
        for kind, entry_id, fields in writes:
            if kind == "entry":
                merger.entry(entry_id, fields, 1)
            else:
                merger.chunk(fields["v"])
    assert [i for i, _ in merger.ready()] == [i for i, _ in events]
    merger.chunk(writes[1][2]["v"])
    assert merger.ready() == []


def test_ids_round_trip() -> None:
    for pos in [(0, 0, 0), (1733400000000, 3, 0), (1733400000000, 0, 12)]:
        assert pos_of(id_of(pos)) == pos
    assert id_of((5, 1, 0)) == "5-1" and id_of((5, 1, 2)) == "5-1.2"
