"""The built-in key-value state machine: put / get / cas / delete.

Commands and queries are msgpack lists built by the helpers below, so a client and every
replica agree on the bytes:

    kv_put(k, v)          -> ["put", k, v]         result {"ok": True}
    kv_delete(k)          -> ["delete", k]         result {"ok": True, "existed": bool}
    kv_cas(k, expected, new) -> ["cas", k, expected, new]
                                                   result {"ok": bool, "value": current}
                                                   (expected None means "k is absent";
                                                    current is the value after the command)
    kv_get(k)             -> ["get", k]            result {"value": v or None}

Keys and values are `str` or `bytes` (msgpack keeps the two apart, so "a" and b"a" are
different keys). A command that does not decode or is not one of the above yields
`{"error": "..."}`: a bad command committed to the chain must not crash every replica.

Snapshot stream (`josefine.codec` stream records): ``["josefine-kv", 1, count]``, then
`count` records ``[key, value]`` in key order (every str key before every bytes key, each
group in Python's order). The order makes equal states give equal bytes whatever order the
keys were written in, and lets `restore` refuse a stream with a repeated key.
"""
from __future__ import annotations

import hashlib
import itertools
from typing import Any, BinaryIO, Iterator

from josefine.codec import packb, read_record, unpackb, write_record

__all__ = ["KVStateMachine", "kv_put", "kv_delete", "kv_cas", "kv_get"]

Key = str | bytes
Value = str | bytes

_SNAPSHOT_TAG = "josefine-kv"
_SNAPSHOT_VERSION = 1


def _is_kv(x: object) -> bool:
    return type(x) is str or type(x) is bytes


def _need(x: object, what: str) -> None:
    if not _is_kv(x):
        raise TypeError(f"{what} must be str or bytes, not {type(x).__name__}")


def kv_put(key: Key, value: Value) -> bytes:
    _need(key, "key")
    _need(value, "value")
    return packb(["put", key, value])


def kv_delete(key: Key) -> bytes:
    _need(key, "key")
    return packb(["delete", key])


def kv_cas(key: Key, expected: Value | None, new: Value) -> bytes:
    """Set `key` to `new` iff its value is `expected` (None: iff `key` is absent)."""
    _need(key, "key")
    if expected is not None:
        _need(expected, "expected")
    _need(new, "new")
    return packb(["cas", key, expected, new])


def kv_get(key: Key) -> bytes:
    _need(key, "key")
    return packb(["get", key])


def _sort_key(item: tuple[Key, Value]) -> tuple[bool, Key]:
    k = item[0]
    return (type(k) is bytes, k)


class KVStateMachine:
    """An in-memory dict replicated by the chain. Deterministic; never raises on a command."""

    def __init__(self) -> None:
        self._data: dict[Key, Value] = {}

    # ------------------------------------------------------------------ StateMachine

    def apply(self, command: bytes) -> Any:
        op = _decode(command)
        if isinstance(op, dict):
            return op
        name, args = op
        if name == "put" and len(args) == 2 and _is_kv(args[0]) and _is_kv(args[1]):
            self._data[args[0]] = args[1]
            return {"ok": True}
        if name == "delete" and len(args) == 1 and _is_kv(args[0]):
            existed = self._data.pop(args[0], None) is not None
            return {"ok": True, "existed": existed}
        if (name == "cas" and len(args) == 3 and _is_kv(args[0])
                and (args[1] is None or _is_kv(args[1])) and _is_kv(args[2])):
            key, expected, new = args
            current = self._data.get(key)
            if current != expected:  # "a" != b"a": str and bytes never match
                return {"ok": False, "value": current}
            self._data[key] = new
            return {"ok": True, "value": new}
        if name == "get" and len(args) == 1 and _is_kv(args[0]):
            return {"value": self._data.get(args[0])}
        return {"error": f"invalid command {name!r} with {len(args)} argument(s)"}

    def query(self, query: bytes) -> Any:
        op = _decode(query)
        if isinstance(op, dict):
            return op
        name, args = op
        if name == "get" and len(args) == 1 and _is_kv(args[0]):
            return {"value": self._data.get(args[0])}
        return {"error": f"invalid query {name!r}: only get is read-only"}

    # ------------------------------------------------------------------ extras

    def digest(self) -> bytes:
        """SHA-256 of the sorted contents: equal states give equal digests on every replica."""
        return hashlib.sha256(b"josefine-kv" + packb(self._pairs())).digest()

    def snapshot(self, out: BinaryIO) -> None:
        """Stream the state to `out`, one record per pair (see the module docstring).

        Extra memory is one record plus the sorted key list (a pointer per key, a small
        fraction of the state): the pairs are never packed into one object.
        """
        data = self._data
        write_record(out, [_SNAPSHOT_TAG, _SNAPSHOT_VERSION, len(data)])
        for key in self._sorted_keys():
            write_record(out, [key, data[key]])

    def freeze(self) -> "KVStateMachine":
        """A copy of the state as of now whose `snapshot()` may run on another thread while
        this one goes on applying (api.py, `freeze`). One shallow dict copy: keys and
        values are immutable str/bytes, so nothing is shared that can change; it costs a
        pointer pair per key, done in C (a few ms per 100,000 keys)."""
        frozen = KVStateMachine()
        frozen._data = dict(self._data)
        return frozen

    def restore(self, inp: BinaryIO) -> None:
        """Replace the state by one `snapshot()` streamed, reading exactly that stream.

        Raises ValueError (state unchanged) on invalid or truncated input, including keys
        out of order or repeated: the new dict is built aside and swapped in at the end.
        """
        head = read_record(inp)
        if not (type(head) is list and len(head) == 3 and head[0] == _SNAPSHOT_TAG
                and type(head[1]) is int and head[1] == _SNAPSHOT_VERSION
                and type(head[2]) is int and head[2] >= 0):
            raise ValueError(f"not a KV snapshot header: {head!r:.100}")
        new: dict[Key, Value] = {}
        prev: tuple[bool, Key] | None = None
        for _ in range(head[2]):
            pair = read_record(inp)
            if not (type(pair) is list and len(pair) == 2 and _is_kv(pair[0])
                    and _is_kv(pair[1])):
                raise ValueError(f"bad KV snapshot entry {pair!r:.100}")
            key = pair[0]
            order = (type(key) is bytes, key)
            if prev is not None and not prev < order:
                raise ValueError(f"KV snapshot key {key!r:.100} is out of order or repeated")
            prev = order
            new[key] = pair[1]
        self._data = new

    def get(self, key: Key) -> Value | None:
        """Direct local read (tests, debugging); not linearizable on its own."""
        return self._data.get(key)

    def items(self) -> Iterator[tuple[Key, Value]]:
        return iter(sorted(self._data.items(), key=_sort_key))

    def __len__(self) -> int:
        return len(self._data)

    def _pairs(self) -> list[list]:
        return [[k, v] for k, v in sorted(self._data.items(), key=_sort_key)]

    def _sorted_keys(self) -> Iterator[Key]:
        # Two plain sorts of the keys alone: no (flag, key) tuple per key, as a key= sort
        # would build, so the extra memory is one list of pointers.
        strs = [k for k in self._data if isinstance(k, str)]
        strs.sort()
        raw = [k for k in self._data if isinstance(k, bytes)]
        raw.sort()
        return itertools.chain(strs, raw)


def _decode(data: bytes) -> tuple[str, list] | dict:
    """(op, args) or an error result; never raises."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        return {"error": f"command must be bytes, not {type(data).__name__}"}
    try:
        obj = unpackb(bytes(data))
    except Exception as exc:  # msgpack raises several unrelated exception types
        return {"error": f"undecodable command: {type(exc).__name__}"}
    if not isinstance(obj, list) or not obj or type(obj[0]) is not str:
        return {"error": "command must be a list starting with an operation name"}
    return obj[0], obj[1:]
