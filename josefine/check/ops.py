"""Turning history lines into register operations with real-time intervals.

Each client operation becomes one `Operation`: what it did to one key and the interval of
line positions in which it may have taken effect. Line positions (not the `time` field) are
the clock: lines are written in time order, an invoke line is written before the request is
sent and a completion line after the answer arrives, so "A's completion line comes before
B's invoke line" implies A really finished before B started. Using positions also makes the
Jepsen corpus (whose `time` is the line number) and our own monotonic-ns histories uniform.

Operations that cannot constrain a linearization are dropped here: failed reads/writes
(never happened), reads with unknown outcome (they change nothing), and, unless
`cas_fail_is_compare_failure` is set, failed cas operations.
"""
from __future__ import annotations

import warnings
from collections.abc import Hashable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from josefine.check.history import HistoryError, HistoryWarning

__all__ = ["READ", "WRITE", "CAS", "CAS_FAIL", "Operation", "extract_operations", "freeze"]

# Operation kinds as the search sees them.
READ, WRITE, CAS, CAS_FAIL = range(4)
_KIND_NAMES = {READ: "read", WRITE: "write", CAS: "cas", CAS_FAIL: "cas"}


def freeze(value: Any) -> Hashable:
    """A hashable stand-in for a JSON value, equal iff the JSON values are equal.

    Booleans are tagged because Python treats True == 1 while JSON does not.
    """
    if isinstance(value, bool):
        return ("\0bool", value)
    if isinstance(value, list | tuple):
        return tuple(freeze(v) for v in value)
    if isinstance(value, dict):
        return ("\0dict", tuple(sorted((str(k), freeze(v)) for k, v in value.items())))
    return value


@dataclass(frozen=True, slots=True)
class Operation:
    """One client operation on one key.

    `kind` is READ, WRITE, CAS or CAS_FAIL (a cas whose comparison failed). `a` is the value
    read / written / expected, `b` the new value of a cas (frozen: hashable). `inv` and `ret`
    are line positions; `ret` is None when the outcome is unknown (type "info" or no
    completion), and such operations are *optional*: they may take effect at any point after
    `inv`, or never.
    """

    kind: int
    a: Hashable
    b: Hashable
    inv: int
    ret: int | None
    process: Any
    key: Any
    f: str
    outcome: str
    value: Any
    invoke_time: Any = None
    complete_time: Any = None

    @property
    def required(self) -> bool:
        return self.ret is not None

    @property
    def changes_state(self) -> bool:
        return self.kind in (WRITE, CAS)

    def describe(self) -> str:
        """Readable one-line form, e.g. ``process 3: cas x ['1', '2']: ok  (lines 10-14)``."""
        key = "" if self.key is None else f" {self.key}"
        if self.kind == READ:
            what = f"read{key} -> {self.value!r}"
        elif self.kind == WRITE:
            what = f"write{key} {self.value!r}"
        else:
            what = f"cas{key} {self.value!r}"
        outcome = "fail (compare failed)" if self.kind == CAS_FAIL else self.outcome
        if self.ret is None:
            span = f"invoked line {self.inv + 1}, " + (
                "never completed" if self.outcome == "pending" else "outcome unknown")
        else:
            span = f"lines {self.inv + 1}-{self.ret + 1}"
        return f"process {self.process}: {what}: {outcome}  ({span})"

    def to_dict(self) -> dict[str, Any]:
        return {"process": self.process, "f": self.f, "key": self.key, "value": self.value,
                "outcome": "compare-failed" if self.kind == CAS_FAIL else self.outcome,
                "invoke_line": self.inv + 1,
                "complete_line": None if self.ret is None else self.ret + 1,
                "invoke_time": self.invoke_time, "complete_time": self.complete_time}


def _make(inv_rec: Mapping[str, Any], inv: int, comp: Mapping[str, Any] | None,
          ret: int | None, cas_fail_is_compare_failure: bool) -> Operation | None:
    """Build the Operation for an invoke and its completion, or None if it constrains nothing."""
    f = inv_rec.get("f")
    outcome = "pending" if comp is None else comp.get("type")
    key = inv_rec.get("key")
    common: dict[str, Any] = dict(process=inv_rec.get("process"), key=key, f=f,
                  invoke_time=inv_rec.get("time"),
                  complete_time=None if comp is None else comp.get("time"))
    unknown = outcome in ("info", "pending")
    if outcome not in ("ok", "fail", "info", "pending"):
        raise HistoryError(f"line {ret + 1 if ret is not None else inv + 1}: "
                           f"unknown type {outcome!r}")
    if f == "read":
        if outcome != "ok":
            return None  # a failed or unknown read changes nothing, so constrains nothing
        value = comp.get("value") if comp is not None else None
        return Operation(READ, freeze(value), None, inv, ret, outcome="ok", value=value, **common)
    value = inv_rec.get("value")
    if f == "write":
        if outcome == "fail":
            return None
        return Operation(WRITE, freeze(value), None, inv, None if unknown else ret,
                         outcome=outcome, value=value, **common)
    if f == "cas":
        if not isinstance(value, list | tuple) or len(value) != 2:
            raise HistoryError(f"line {inv + 1}: cas value must be [expected, new], got {value!r}")
        expected, new = freeze(value[0]), freeze(value[1])
        if outcome == "fail":
            if not cas_fail_is_compare_failure:
                return None
            return Operation(CAS_FAIL, expected, None, inv, ret, outcome="fail", value=value,
                             **common)
        return Operation(CAS, expected, new, inv, None if unknown else ret, outcome=outcome,
                         value=value, **common)
    raise HistoryError(f"line {inv + 1}: unsupported operation f={f!r} (want read/write/cas)")


def extract_operations(history: Iterable[Mapping[str, Any]], *,
                       cas_fail_is_compare_failure: bool = False
                       ) -> dict[Hashable, list[Operation]]:
    """Pair invokes with completions (per process, in order) and group operations by key.

    Lines whose process is "nemesis" are skipped, as are unknown fields. An invoke whose
    process invokes again, or never completes, counts as an unknown ("info") outcome. A
    completion without a pending invoke is ignored with a `HistoryWarning`. Operations in
    each list are in invoke order.
    """
    by_key: dict[Hashable, list[Operation]] = {}
    pending: dict[Hashable, tuple[Mapping[str, Any], int]] = {}

    def emit(inv_rec: Mapping[str, Any], inv: int, comp: Mapping[str, Any] | None,
             ret: int | None) -> None:
        op = _make(inv_rec, inv, comp, ret, cas_fail_is_compare_failure)
        if op is not None:
            by_key.setdefault(freeze(op.key), []).append(op)

    for index, rec in enumerate(history):
        if not isinstance(rec, Mapping):
            raise HistoryError(f"line {index + 1}: expected an object, got {type(rec).__name__}")
        process = rec.get("process")
        if process == "nemesis":
            continue
        proc = freeze(process)
        kind = rec.get("type")
        if kind == "invoke":
            if proc in pending:
                emit(*pending.pop(proc), None, None)
            pending[proc] = (rec, index)
        elif kind in ("ok", "fail", "info"):
            started = pending.pop(proc, None)
            if started is None:
                warnings.warn(f"line {index + 1}: {kind} of process {process!r} has no pending "
                              "invoke; ignored", HistoryWarning, stacklevel=2)
                continue
            emit(started[0], started[1], rec, index)
        else:
            raise HistoryError(f"line {index + 1}: unknown type {kind!r}")
    for inv_rec, inv in pending.values():
        emit(inv_rec, inv, None, None)
    for ops in by_key.values():
        ops.sort(key=lambda op: op.inv)
    return by_key
