"""A turn's events on the wire: its own stream, and its text in its worker's text stream.

Decision 0014.  A streamed turn's text used to be one ``XADD`` per flush per turn: ~70 of a
turn's ~110 Redis commands at 80 tokens/s (B9).  Now one ``XADD`` per flush carries the
text of every turn a worker process runs, and readers take their turn's part of it.

* ``keys.events_key(turn)``: every event but text chunks (status, tool calls and outputs,
  retries, approvals).  The entries a worker writes also say where the turn's text goes:
  ``_w`` the worker's text stream, ``_wf`` an id of it at or before any text that follows
  the entry, and ``_a`` / ``_n`` the worker's previous entry of this turn and how many
  text chunks followed it (all of them sent before this entry).
* ``keys.text_key(worker)``: one entry per flush of a worker process, one field per turn
  with text in it, ``"<anchor>.<n> <text>"``: the n-th chunk of text after the turn's
  entry ``anchor``.

A turn's events, in order, are its entries, each followed by the chunks anchored at it.
An event id is an entry's id (``1733400000000-0``) or a chunk's (``1733400000000-0.3``);
ids order as (ms, seq, n), so a reader resumes after any id exactly.

    merger = Merger(after=pos_of(last_event_id))
    route = merger.entry(entry_id, fields, cycle)    # (text stream, from id) to follow, or None
    merger.chunk(fields_of_text_entry.get(turn_id))  # a text stream entry's part for this turn
    merger.complete(text_stream, cycle)              # that stream was read to its end
    events = merger.ready()                          # [(event id, fields)] in order
"""

from __future__ import annotations

import json
from collections import deque
from typing import Any

import redis.asyncio as aioredis

from shared import keys

Pos = tuple[int, int, int]  # (ms, seq, n): an entry is n = 0, its chunks n = 1, 2, ...
START: Pos = (0, 0, 0)

TEXT_STREAM = "_w"  # the fields a worker adds to its entries; readers never see them
TEXT_FROM = "_wf"
PREVIOUS = "_a"
CHUNKS = "_n"
INTERNAL = (TEXT_STREAM, TEXT_FROM, PREVIOUS, CHUNKS)


def pos_of(event_id: str) -> Pos:
    """``"ms-seq"`` or ``"ms-seq.n"`` (a checked id: shared.validation.check_event_id)."""
    head, _, n = event_id.partition(".")
    ms, _, seq = head.partition("-")
    return int(ms), int(seq or 0), int(n or 0)


def id_of(pos: Pos) -> str:
    ms, seq, n = pos
    return f"{ms}-{seq}.{n}" if n else f"{ms}-{seq}"


def chunk_value(anchor: str, n: int, text: str) -> str:
    return f"{anchor}.{n} {text}"


def public(fields: dict[str, str]) -> dict[str, str]:
    return {k: v for k, v in fields.items() if k not in INTERNAL}


def wire(event: dict[str, Any]) -> dict[str, str]:
    """An event's stream fields: strings as they are, anything else as JSON."""
    return {k: v if isinstance(v, str) else json.dumps(v) for k, v in event.items()}


class Merger:
    """One reader's view of one turn: its entries and text chunks in, its events out in order.

    Entries come in stream order.  A chunk may come before or after the entries that
    follow its anchor (they are in different streams), so an entry is handed out only
    once every chunk before it was: ``_n`` of the entry counts them, and a text stream
    read to its end after the entry arrived (``complete``) shows that a missing chunk is
    gone (a trimmed or flushed stream), so nothing waits forever.
    """

    def __init__(self, after: Pos = START) -> None:
        self.last = after  # the last event handed out (or resumed after)
        self.anchor_w: str | None = None  # the text stream of the entry at last[:2]
        self.taken = (0, 0)  # the last entry taken in, to drop repeats
        self.entries: deque[tuple[Pos, dict[str, str], int]] = deque()
        self.chunks: dict[Pos, str] = {}
        self.done_at: dict[str, int] = {}

    @property
    def waiting(self) -> bool:
        """Entries are held back for chunks: a read of the text streams to their end decides."""
        return bool(self.entries)

    def entry(self, entry_id: str, fields: dict[str, str], cycle: int) -> tuple[str, str] | None:
        p = pos_of(entry_id)
        if p[:2] <= self.taken:
            return None
        self.taken = p[:2]
        if p[:2] < self.last[:2]:
            return None  # before the resume point: neither it nor its chunks are wanted
        w = fields.get(TEXT_STREAM)
        if p[:2] == self.last[:2]:
            self.anchor_w = w  # the resume point's entry: only its chunks after last follow
        else:
            self.entries.append((p, fields, cycle))
        return (w, fields.get(TEXT_FROM) or "0-0") if w else None

    def chunk(self, value: str | None) -> None:
        if not value:
            return
        head, _, text = value.partition(" ")
        p = pos_of(head)
        if p > self.last:
            self.chunks[p] = text

    def complete(self, stream: str, cycle: int) -> None:
        self.done_at[stream] = cycle

    def ready(self) -> list[tuple[str, dict[str, str]]]:
        out: list[tuple[str, dict[str, str]]] = []
        while True:
            ms, seq, n = self.last
            text = self.chunks.pop((ms, seq, n + 1), None)
            if text is not None:
                self.last = (ms, seq, n + 1)
                out.append((id_of(self.last), {"type": "delta", "text": text}))
                continue
            if not self.entries or not self._may_pass(*self.entries[0]):
                return out
            p, fields, _ = self.entries.popleft()
            for c in sorted(c for c in self.chunks if c < p):  # after a lost one: in order
                out.append((id_of(c), {"type": "delta", "text": self.chunks.pop(c)}))
            self.last, self.anchor_w = p, fields.get(TEXT_STREAM)
            out.append((id_of(p), public(fields)))

    def _may_pass(self, p: Pos, fields: dict[str, str], cycle: int) -> bool:
        """Every chunk anchored before ``p`` was handed out, or is known to be gone."""
        if self.anchor_w is None:
            return True  # no worker text follows the anchor (or there is no anchor)
        anchor, n = id_of((*self.last[:2], 0)), self.last[2]
        if fields.get(PREVIOUS) == anchor and n >= int(fields.get(CHUNKS) or 0):
            return True
        return self.done_at.get(self.anchor_w, -1) >= cycle


def decode(value: object) -> str:
    """A Redis reply's string (bytes unless the client decodes responses)."""
    return value.decode() if isinstance(value, bytes) else str(value)


async def read_events(
    redis: aioredis.Redis, turn_id: str, ns: str | None = None, after: str = "0-0"
) -> list[tuple[str, dict[str, str]]]:
    """Every event of the turn after ``after`` that Redis holds now, in order (one read)."""
    merger = Merger(pos_of(after))
    follow: dict[str, str] = {}
    entries: Any = await redis.xrange(keys.events_key(turn_id, ns))
    for entry_id, fields in entries:
        route = merger.entry(decode(entry_id), {decode(k): decode(v) for k, v in fields.items()}, 0)
        if route is not None:
            follow.setdefault(*route)
    for stream, start in follow.items():
        chunks: Any = await redis.xrange(stream, min=start)
        for _, fields in chunks:
            value = fields.get(turn_id) or fields.get(turn_id.encode())
            merger.chunk(None if value is None else decode(value))
        merger.complete(stream, 0)
    return merger.ready()
