"""Recording and loading JSON Lines operation histories.

The chaos harness records every client operation twice: once when it is invoked and once
when its outcome is known. A linearizability checker only needs the *order* of those
records, so the recorder takes the timestamp and writes the line under one lock: line order
is then real-time order, and the checker can use line positions as its clock.

Each line is flushed as soon as it is written because harness processes may be killed at
any moment; a torn final line is tolerated by `load_history` (skipped with a warning).
"""
from __future__ import annotations

import itertools
import json
import os
import threading
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["HistoryError", "HistoryWarning", "HistoryRecorder", "OpHandle", "load_history"]


class HistoryError(ValueError):
    """The history cannot be interpreted (bad JSON in the middle, bad record shape...)."""


class HistoryWarning(UserWarning):
    """Something in the history was ignored (torn final line, completion without invoke)."""


@dataclass(frozen=True)
class OpHandle:
    """What `HistoryRecorder.invoke` returns: enough to write the matching completion."""

    process: Any
    f: str
    key: Any
    value: Any
    time: int
    seq: int


class HistoryRecorder:
    """Thread-safe append-only writer of history lines (`time` = `time.monotonic_ns()`).

    Use one recorder per file. `invoke` before sending a request and `complete` after its
    answer (or when giving up: type ``"info"``); that bracketing is what makes line order a
    sound real-time order for the checker.
    """

    def __init__(self, path: str | os.PathLike[str], *, fsync: bool = False) -> None:
        self.path = Path(path)
        self._fsync = fsync
        self._lock = threading.Lock()
        self._file = open(self.path, "a", encoding="utf-8")
        self._pending: set[int] = set()
        self._seq = itertools.count()

    def _write(self, record: dict[str, Any]) -> int:
        # Time is taken under the lock so that line order and time order agree.
        with self._lock:
            if self._file.closed:
                raise ValueError("history recorder is closed")
            now = time.monotonic_ns()
            record["time"] = now
            self._file.write(json.dumps(record, separators=(",", ":")) + "\n")
            self._file.flush()
            if self._fsync:
                os.fsync(self._file.fileno())
            return now

    def invoke(self, process: Any, f: str, key: Any, value: Any = None) -> OpHandle:
        """Record the start of operation `f` ("read", "write" or "cas") by `process`.

        `value` is None for a read, the written value for a write, [expected, new] for a cas.
        """
        if isinstance(value, tuple):
            value = list(value)
        t = self._write({"process": process, "type": "invoke", "f": f, "key": key, "value": value})
        with self._lock:
            handle = OpHandle(process, f, key, value, t, next(self._seq))
            self._pending.add(handle.seq)
        return handle

    def complete(self, handle: OpHandle, type: str, value: Any = None) -> None:
        """Record the outcome ("ok", "fail" or "info") of the operation behind `handle`.

        For a read, `value` is the value read (None: key missing). Writes and cas repeat
        their invoke's value whatever is passed, as the history format requires.
        """
        if type not in ("ok", "fail", "info"):
            raise ValueError(f"completion type must be ok, fail or info, not {type!r}")
        with self._lock:
            if handle.seq not in self._pending:
                raise ValueError("operation already completed (or not from this recorder)")
            self._pending.discard(handle.seq)
        if handle.f != "read":
            value = handle.value
        elif isinstance(value, tuple):
            value = list(value)
        self._write({"process": handle.process, "type": type, "f": handle.f,
                     "key": handle.key, "value": value})

    def nemesis(self, event: str, **details: Any) -> None:
        """Record a fault-injection event; the checker skips these lines."""
        self._write({"process": "nemesis", "type": "info", "f": event, "value": details or None})

    def close(self) -> None:
        with self._lock:
            if not self._file.closed:
                self._file.close()

    def __enter__(self) -> HistoryRecorder:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def load_history(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """Read a JSON Lines history into a list of dicts, in file (= time) order.

    Blank lines are ignored. A final line that is not valid JSON is assumed to be torn by a
    killed writer and is skipped with a `HistoryWarning`; bad JSON anywhere else, or a line
    that is not a JSON object, raises `HistoryError`. I/O errors propagate as `OSError`.
    """
    with open(path, "r", encoding="utf-8", errors="strict") as fh:
        try:
            lines = fh.read().split("\n")
        except UnicodeDecodeError as exc:
            raise HistoryError(f"{path}: not UTF-8 text: {exc}") from exc
    while lines and not lines[-1].strip():
        lines.pop()
    records: list[dict[str, Any]] = []
    for lineno, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            if lineno == len(lines):
                warnings.warn(f"{path}:{lineno}: skipping truncated final line", HistoryWarning,
                              stacklevel=2)
                break
            raise HistoryError(f"{path}:{lineno}: invalid JSON: {exc}") from exc
        if not isinstance(record, dict):
            raise HistoryError(f"{path}:{lineno}: expected a JSON object")
        records.append(record)
    return records
