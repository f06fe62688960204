"""Client sessions: exactly-once application of retried commands (Raft thesis ch. 6, A.8).

Each client keeps, per replica, the sequence number of its last *applied* command and that
command's result. A command `(client_id, seq)` is

* NEW       if the client is unknown or `seq` is above its last seq: apply it and remember;
* DUPLICATE if `seq` equals the last seq: answer with the cached result, do not apply;
* STALE     if `seq` is below it: the result is gone, answer `{"error": "stale sequence"}`.

Only the last result per client is kept, so a client must not have more than one write in
flight (the `Client` retries one request at a time with the same seq).

Expiry is deterministic and driven by the chain only: when recording a new client would
exceed `max_sessions`, the session applied least recently (lowest last-applied height; ties
by order of application inside the block) is evicted. Every replica applies the same blocks
in the same order, so every replica evicts the same session. A client whose session was
evicted is treated as new: a very late retry of its last command would apply again — the
price of a bounded table; keep `max_sessions` well above the number of live clients.
"""
from __future__ import annotations

import hashlib
from collections import OrderedDict
from dataclasses import dataclass
from enum import Enum
from typing import Any, BinaryIO, Iterator

from josefine.codec import packb, read_record, write_record

__all__ = ["Session", "SessionTable", "Verdict", "STALE_RESULT"]

STALE_RESULT = {"error": "stale sequence"}

_SNAPSHOT_TAG = "josefine-sessions"
_SNAPSHOT_VERSION = 1


class Verdict(Enum):
    NEW = "new"
    DUPLICATE = "duplicate"
    STALE = "stale"


@dataclass(slots=True)
class Session:
    client_id: str
    last_seq: int
    result: Any
    height: int
    """Height of the block in which `last_seq` was applied."""


class SessionTable:
    """Per-client last (seq, result); least recently applied first."""

    def __init__(self, max_sessions: int = 10000) -> None:
        if max_sessions < 1:
            raise ValueError("max_sessions must be at least 1")
        self.max_sessions = max_sessions
        self._s: OrderedDict[str, Session] = OrderedDict()
        self.evictions = 0

    def check(self, client_id: str, seq: int) -> tuple[Verdict, Any]:
        """Classify `(client_id, seq)`; for DUPLICATE also return the cached result."""
        s = self._s.get(client_id)
        if s is None or seq > s.last_seq:
            return Verdict.NEW, None
        if seq == s.last_seq:
            return Verdict.DUPLICATE, s.result
        return Verdict.STALE, dict(STALE_RESULT)

    def record(self, client_id: str, seq: int, result: Any, height: int) -> None:
        """Remember the result of an applied command; evict if the table overflows."""
        s = self._s.get(client_id)
        if s is None:
            self._s[client_id] = Session(client_id, seq, result, height)
            while len(self._s) > self.max_sessions:
                self._s.popitem(last=False)
                self.evictions += 1
        else:
            s.last_seq, s.result, s.height = seq, result, height
            self._s.move_to_end(client_id)

    def get(self, client_id: str) -> Session | None:
        return self._s.get(client_id)

    def __contains__(self, client_id: object) -> bool:
        return client_id in self._s

    def __len__(self) -> int:
        return len(self._s)

    def __iter__(self) -> Iterator[Session]:
        """Sessions from least to most recently applied (the eviction order)."""
        return iter(self._s.values())

    # ------------------------------------------------------------- persistence / digest

    def dump(self) -> list[list]:
        """Plain, msgpack-ready form in eviction order (results must be msgpack-encodable)."""
        return [[s.client_id, s.last_seq, s.result, s.height] for s in self._s.values()]

    def load(self, rows: list) -> None:
        """Replace the table by a `dump()`; raises ValueError (table unchanged) if malformed."""
        new: OrderedDict[str, Session] = OrderedDict()
        for row in rows:
            _add_row(new, row)
        self._replace(new)

    def freeze(self) -> "SessionTable":
        """An independent copy of the table as of now (for a snapshot written on another
        thread while this one goes on recording): at most `max_sessions` small rows."""
        copy = SessionTable(self.max_sessions)
        copy._s = OrderedDict((k, Session(s.client_id, s.last_seq, s.result, s.height))
                              for k, s in self._s.items())
        copy.evictions = self.evictions
        return copy

    def snapshot(self, out: BinaryIO) -> None:
        """Stream the table to `out`: a header ``[tag, version, count]``, then one record per
        session in eviction order (the order is state: it decides future evictions).

        Raises ValueError if a cached result cannot be encoded (results go to clients, so
        they must be msgpack-encodable anyway). A restored result is what msgpack gives
        back (a tuple comes back as a list): the same value a client got over the wire.
        """
        write_record(out, [_SNAPSHOT_TAG, _SNAPSHOT_VERSION, len(self._s)])
        for s in self._s.values():
            write_record(out, [s.client_id, s.last_seq, s.result, s.height])

    def restore(self, inp: BinaryIO) -> None:
        """Replace the table by one `snapshot()` streamed, reading exactly that stream.

        Raises ValueError (table unchanged) on invalid or truncated input. Sessions beyond
        `max_sessions` (a snapshot taken with a larger limit) are evicted oldest first, as
        the next `record` would have done.
        """
        head = read_record(inp)
        if not (type(head) is list and len(head) == 3 and head[0] == _SNAPSHOT_TAG
                and type(head[1]) is int and head[1] == _SNAPSHOT_VERSION
                and type(head[2]) is int and head[2] >= 0):
            raise ValueError(f"not a session table snapshot header: {head!r:.100}")
        new: OrderedDict[str, Session] = OrderedDict()
        for _ in range(head[2]):
            _add_row(new, read_record(inp))
        self._replace(new)

    def _replace(self, new: OrderedDict[str, Session]) -> None:
        while len(new) > self.max_sessions:
            new.popitem(last=False)
            self.evictions += 1
        self._s = new

    def digest(self) -> bytes:
        """Stable hash of the table, order included (the order decides future evictions)."""
        try:
            data = packb(self.dump())
        except Exception:  # a result msgpack cannot encode: fall back to its repr
            data = repr(self.dump()).encode()
        return hashlib.sha256(b"josefine-sessions" + data).digest()


def _add_row(table: OrderedDict[str, Session], row: Any) -> None:
    if not (type(row) is list and len(row) == 4 and type(row[0]) is str
            and type(row[1]) is int and type(row[3]) is int and row[1] >= 0 and row[3] >= 0):
        raise ValueError(f"bad session row {row!r:.100}")
    if row[0] in table:
        raise ValueError(f"session {row[0]!r:.100} appears twice")
    table[row[0]] = Session(row[0], row[1], row[2], row[3])
