"""Cutting a non-linearizable key history down to a small window that explains why.

A window is a run of the key's operations (in invoke order) minus some inner ones. The claim
reported for it is: *these operations cannot be ordered*, even granting every relaxation of
the rest of the history. So a window is only accepted if it is non-linearizable when

* every write/cas outside it (or removed from it) that overlaps it in time is treated as
  optional: it may take effect any time after its invoke, or never;
* every optional write/cas (those and the window's own unknown-outcome ones) may even take
  effect more than once, which keeps the search small (no record of which were used);
* the register starts with an arbitrary value whenever earlier operations were cut off.

Each relaxation can only make a history easier to linearize, so a window that still fails
proves the whole history fails: the report is never a false explanation. Searches that run
out of budget count as "not shown to fail", which also keeps the report sound.

`locate` finds a failing window near where a search got stuck, which proves a violation
without exhausting every ordering of a long history. `shrink` then binary-searches for the
shortest failing prefix of a failing window, then for the latest start that still fails,
then (for small windows) tries removing single operations.
"""
from __future__ import annotations

import bisect
import time
from collections.abc import Sequence
from dataclasses import dataclass

from josefine.check.ops import Operation
from josefine.check.search import ANY, VIOLATION, search

__all__ = ["Window", "window_fails", "locate", "scan", "shrink"]

_GREEDY_LIMIT = 60  # windows up to this size get the single-removal pass


@dataclass(frozen=True)
class Window:
    """A verified-failing window: operations `ops` (invoke order) of the key.

    `from_start` is False when earlier operations were cut off, i.e. the window fails
    whatever value the register held when it began.
    """

    ops: list[Operation]
    from_start: bool


def window_fails(ops: Sequence[Operation], lo: int, hi: int, dropped: frozenset[int] = frozenset(),
                 *, deadline: float | None = None, max_states: int | None = None) -> bool:
    """Is ops[lo:hi] minus `dropped` non-linearizable under the relaxations above?"""
    members = [i for i in range(lo, hi) if i not in dropped]
    if not members:
        return False
    window = [ops[i] for i in members]
    required = [op for op in window if op.required]
    if not required:
        return False
    first_inv = min(op.inv for op in window)
    last_ret = max(op.ret for op in required)
    optional = [op for op in window if not op.required]
    for i, op in enumerate(ops):
        if (lo <= i < hi and i not in dropped) or not op.changes_state:
            continue
        if i < lo and op.ret is not None and op.ret < first_inv:
            continue  # finished before the window began: covered by the arbitrary start
        if op.inv > last_ret:
            continue  # began after every required window op ended: cannot matter
        optional.append(op)
    outcome = search(required, optional, initial=None if lo == 0 else ANY, reuse_optional=True,
                     deadline=deadline, max_states=max_states)
    return outcome.verdict == VIOLATION


def locate(ops: Sequence[Operation], stuck: Operation, *, deadline: float | None = None,
           max_states: int = 50_000) -> tuple[int, int] | None:
    """A failing window around `stuck` (where a search got stuck), or None if none found.

    Searching a whole long history to prove a violation can mean exhausting every way to
    order everything before it; a window around the trouble is usually tiny to refute.
    """
    invs = [op.inv for op in ops]
    c = bisect.bisect_left(invs, stuck.inv)
    end = bisect.bisect_right(invs, stuck.ret if stuck.ret is not None else stuck.inv)
    for width in (8, 32, 128, 512, 2048):
        if deadline is not None and time.monotonic() > deadline:
            return None
        lo, hi = max(0, c - width), min(len(ops), end + width // 4 + 1)
        if window_fails(ops, lo, hi, deadline=deadline, max_states=max_states):
            return lo, hi
        if lo == 0 and hi == len(ops):
            break
    return None


def scan(ops: Sequence[Operation], *, width: int = 64, deadline: float | None = None,
         max_states: int = 10_000) -> tuple[int, int] | None:
    """A failing window among overlapping windows covering all of `ops`, or None.

    The fallback when a search neither finishes nor gets stuck near a refutable window:
    any window that fails proves a violation, however hard the rest of the history is.
    """
    n = len(ops)
    for lo in range(0, max(1, n - width // 2), width // 2):
        if deadline is not None and time.monotonic() > deadline:
            return None
        hi = min(n, lo + width)
        if window_fails(ops, lo, hi, deadline=deadline, max_states=max_states):
            return lo, hi
    return None


def shrink(ops: Sequence[Operation], lo: int = 0, hi: int | None = None, *,
           deadline: float | None = None, max_states: int | None = None) -> Window:
    """Smallest failing window we can find before `deadline` inside failing ops[lo:hi].

    Falls back to ops[lo:hi] itself, which the caller must know to fail.
    """
    def fails(a: int, b: int, dropped: frozenset[int] = frozenset()) -> bool:
        if deadline is not None and time.monotonic() > deadline:
            return False
        return window_fails(ops, a, b, dropped, deadline=deadline, max_states=max_states)

    if hi is None:
        hi = len(ops)
    # Shortest failing prefix of the window: invariant fails(lo, end); `short` not shown to.
    short, end = lo, hi
    while end - short > 1:
        mid = (short + end) // 2
        if fails(lo, mid):
            end = mid
        else:
            short = mid
    # Latest failing start: invariant fails(start, end), and `stop` not shown to fail.
    start, stop = lo, end
    while stop - start > 1:
        mid = (start + stop) // 2
        if fails(mid, end):
            start = mid
        else:
            stop = mid
    dropped: set[int] = set()
    if end - start <= _GREEDY_LIMIT:
        for i in range(start, end):
            if fails(start, end, frozenset(dropped | {i})):
                dropped.add(i)
    kept = [ops[i] for i in range(start, end) if i not in dropped]
    return Window(kept, from_start=start == 0)
