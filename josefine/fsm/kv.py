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
"""
from __future__ import annotations

import hashlib
from typing import Any, Iterator

from josefine.codec import packb, unpackb

__all__ = ["KVStateMachine", "kv_put", "kv_delete", "kv_cas", "kv_get"]

Key = str | bytes
Value = str | bytes

_SNAPSHOT_TAG = "kv1"


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

    def snapshot(self) -> bytes:
        return packb([_SNAPSHOT_TAG, self._pairs()])

    def restore(self, data: bytes) -> None:
        """Replace the state by a `snapshot()`; raises ValueError (state unchanged) if invalid."""
        try:
            obj = unpackb(data)
        except Exception as exc:
            raise ValueError(f"undecodable KV snapshot: {exc!r}") from None
        if not (isinstance(obj, list) and len(obj) == 2 and obj[0] == _SNAPSHOT_TAG
                and isinstance(obj[1], list)):
            raise ValueError("not a KV snapshot")
        new: dict[Key, Value] = {}
        for pair in obj[1]:
            if not (isinstance(pair, list) and len(pair) == 2 and _is_kv(pair[0])
                    and _is_kv(pair[1])):
                raise ValueError(f"bad KV snapshot entry {pair!r}")
            new[pair[0]] = pair[1]
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
