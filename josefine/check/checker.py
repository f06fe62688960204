"""Linearizability checking of key-value register histories, key by key.

Linearizability is compositional (Herlihy & Wing): a history is linearizable iff the
sub-history of every object is. Each key is an independent register, so each key is checked
on its own; this keeps the search space per key small.

Verdicts are never guessed: a search that hits the time or state budget yields "unknown".
When a key is not linearizable its operations are shrunk to a small window that still cannot
be ordered (see `josefine.check.shrink`), so a failure report points at a handful of lines.
"""
from __future__ import annotations

import os
import textwrap
import time
from collections.abc import Hashable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from josefine.check.history import load_history
from josefine.check.ops import Operation, extract_operations
from josefine.check.search import OK, UNKNOWN, VIOLATION, search
from josefine.check.shrink import Windows

__all__ = ["CheckResult", "KeyResult", "check_history", "check_file", "format_result",
           "DEFAULT_MAX_STATES"]

DEFAULT_MAX_STATES = 2_000_000
"""Memo entries per key before giving up; each costs roughly 200-300 bytes."""

_QUICK_STATES = 20_000   # least budget of the first search of a key; see _check_key
_QUICK_PER_OP = 4        # ... and per operation (a healthy key needs about 1 state per op)
_SCAN_SECONDS = 30.0     # at most this long looking for a failing window anywhere
_WINDOW_STATES = 50_000  # state budget of one window search while locating


@dataclass
class KeyResult:
    """Verdict for one key: `operations` counted after dropping ones that constrain nothing."""

    key: Any
    verdict: str
    operations: int
    states: int
    elapsed: float

    def to_dict(self) -> dict[str, Any]:
        return {"key": self.key, "verdict": self.verdict, "operations": self.operations,
                "states": self.states, "elapsed": round(self.elapsed, 6)}


@dataclass
class CheckResult:
    """Overall verdict ("ok", "violation" or "unknown") with per-key details.

    For a violation, `key` names the (first) non-linearizable key and `window` lists a small
    set of its operations that cannot be ordered; `window_from_start` tells whether that
    window starts at the beginning of the history (initial value: missing) or fails for any
    starting value.
    """

    verdict: str
    per_key: dict[Hashable, KeyResult] = field(default_factory=dict)
    key: Any = None
    window: list[Operation] = field(default_factory=list)
    window_from_start: bool = True
    cas_fail_is_compare_failure: bool = False
    elapsed: float = 0.0

    @property
    def ok(self) -> bool:
        return self.verdict == OK

    def to_dict(self) -> dict[str, Any]:
        return {"verdict": self.verdict, "key": self.key,
                "window": [op.to_dict() for op in self.window],
                "window_from_start": self.window_from_start,
                "cas_fail_is_compare_failure": self.cas_fail_is_compare_failure,
                "elapsed": round(self.elapsed, 6),
                "keys": [r.to_dict() for r in self.per_key.values()]}


def _key_order(key: Hashable) -> tuple[str, str]:
    return (type(key).__name__, repr(key))


def _check_key(ops: list[Operation], deadline: float | None, max_states: int | None,
               localize: bool) -> tuple[KeyResult, tuple[int, int] | None]:
    """Verdict for one key's ops, plus a failing window ops[lo:hi] if one was found.

    A violation in a long history can take the full search a long time to prove (it must
    exhaust every ordering before the bad op), so a first search with a small state budget
    is followed, if it gives up, by looking for a failing window where it got stuck, then
    anywhere; only if that finds nothing does the search run again with the whole budget.
    """
    required = [op for op in ops if op.required]
    optional = [op for op in ops if not op.required]
    quick = max(_QUICK_STATES, _QUICK_PER_OP * len(ops))
    if max_states is not None:
        quick = min(quick, max_states)
    window_states = _WINDOW_STATES if max_states is None else min(_WINDOW_STATES, max_states)
    outcome = search(required, optional, deadline=deadline, max_states=quick)
    states, elapsed = outcome.states, outcome.elapsed
    window = None
    if outcome.verdict == UNKNOWN and quick != max_states and outcome.stuck_at is not None:
        t0 = time.monotonic()
        windows = Windows(ops)
        window = windows.locate(outcome.stuck_at, deadline=deadline, max_states=window_states)
        if window is None:
            scan_deadline = t0 + _SCAN_SECONDS
            window = windows.scan(deadline=scan_deadline if deadline is None
                                  else min(deadline, scan_deadline),
                                  max_states=window_states // 5)
        elapsed += time.monotonic() - t0
        if window is None:
            outcome = search(required, optional, deadline=deadline, max_states=max_states)
            states, elapsed = states + outcome.states, elapsed + outcome.elapsed
    if outcome.verdict == VIOLATION and localize and outcome.stuck_at is not None:
        window = Windows(ops).locate(outcome.stuck_at, deadline=deadline,
                                     max_states=window_states)
    verdict = VIOLATION if window is not None else outcome.verdict
    return KeyResult(ops[0].key, verdict, len(ops), states, elapsed), window


def check_history(history: Iterable[Mapping[str, Any]], *,
                  cas_fail_is_compare_failure: bool = False,
                  time_limit: float | None = None,
                  max_states: int | None = DEFAULT_MAX_STATES,
                  shrink: bool = True,
                  shrink_time_limit: float = 10.0) -> CheckResult:
    """Check a history (records in time order, as from `load_history`) for linearizability.

    `time_limit` (seconds, whole check) and `max_states` (per key) bound the search; when
    either is hit the affected key, and the result if no key is known bad, is "unknown".
    `shrink_time_limit` bounds the extra work of minimizing a violation's window.
    """
    started = time.monotonic()
    deadline = None if time_limit is None else started + time_limit
    by_key = extract_operations(history, cas_fail_is_compare_failure=cas_fail_is_compare_failure)
    result = CheckResult(OK, cas_fail_is_compare_failure=cas_fail_is_compare_failure)
    bad: dict[Hashable, tuple[int, int] | None] = {}
    for fkey in sorted(by_key, key=_key_order):
        ops = by_key[fkey]
        key_result, window = _check_key(ops, deadline, max_states, localize=shrink)
        result.per_key[fkey] = key_result
        if key_result.verdict == VIOLATION:
            bad[fkey] = window
        elif key_result.verdict == UNKNOWN and result.verdict == OK:
            result.verdict = UNKNOWN
    if bad:
        result.verdict = VIOLATION
        fkey, window = next(iter(bad.items()))
        ops = by_key[fkey]
        result.key = ops[0].key
        lo, hi = window if window is not None else (0, len(ops))
        result.window, result.window_from_start = ops[lo:hi], lo == 0
        if shrink:
            shrink_deadline = time.monotonic() + shrink_time_limit
            if deadline is not None:
                shrink_deadline = min(shrink_deadline, max(deadline, time.monotonic()))
            small = Windows(ops).shrink(lo, hi, deadline=shrink_deadline,
                                        max_states=_WINDOW_STATES if max_states is None
                                        else min(max_states, _WINDOW_STATES))
            result.window, result.window_from_start = small.ops, small.from_start
    result.elapsed = time.monotonic() - started
    return result


def check_file(path: str | os.PathLike[str], **options: Any) -> CheckResult:
    """`check_history(load_history(path), **options)`."""
    return check_history(load_history(path), **options)


def format_result(result: CheckResult) -> str:
    """Human-readable report: verdict, per-key summary and, for a violation, the window."""
    nops = sum(r.operations for r in result.per_key.values())
    mode = "cas fail = comparison failed" if result.cas_fail_is_compare_failure \
        else "cas fail = did not happen"
    lines = [f"linearizability: {result.verdict.upper()}  ({len(result.per_key)} key(s), "
             f"{nops} operation(s), {result.elapsed:.3f} s; {mode})"]
    for r in result.per_key.values():
        lines.append(f"  key {r.key!r}: {r.verdict}  ({r.operations} ops, {r.states} states, "
                     f"{r.elapsed:.3f} s)")
    if result.verdict == VIOLATION:
        start = "starting from an empty register" if result.window_from_start \
            else "whatever value the register held before them"
        lines.append("")
        lines.append(textwrap.fill(
            f"Key {result.key!r} is not linearizable: these {len(result.window)} operation(s) "
            f"cannot be put in any order consistent with real time, {start}, even granting "
            "that any unlisted write overlapping them took effect at any point after its "
            "invoke, or never:", width=92))
        lines.extend(f"  {op.describe()}" for op in result.window)
    elif result.verdict == UNKNOWN:
        gave_up = [repr(r.key) for r in result.per_key.values() if r.verdict == UNKNOWN]
        lines.append("")
        lines.append(f"Gave up (time or state limit) on key(s) {', '.join(gave_up)}; "
                     "no violation found in the rest.")
    return "\n".join(lines)
