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

`Windows.locate` finds a failing window near where a search got stuck, which proves a
violation without exhausting every ordering of a long history (`Windows.scan` looks
everywhere). `Windows.shrink` then binary-searches for the shortest failing prefix of a
failing window, then for the latest start that still fails (trying short suffixes one by
one first), then (for small windows) tries removing single operations.
"""
from __future__ import annotations

import bisect
import time
from collections.abc import Sequence
from dataclasses import dataclass

from josefine.check.ops import Operation
from josefine.check.search import ANY, VIOLATION, search

__all__ = ["Window", "Windows", "window_fails"]

_GREEDY_LIMIT = 60  # windows up to this size get the single-removal pass
_SUFFIX_LIMIT = 48  # suffixes up to this long are tried one by one


@dataclass(frozen=True)
class Window:
    """A verified-failing window: operations `ops` (invoke order) of the key.

    `from_start` is False when earlier operations were cut off, i.e. the window fails
    whatever value the register held when it began.
    """

    ops: list[Operation]
    from_start: bool


class Windows:
    """Window checks over one key's operations (in invoke order), with the indexes that make
    each check cost about the window's size rather than the whole history's."""

    def __init__(self, ops: Sequence[Operation]) -> None:
        self.ops = ops
        self.invs = [op.inv for op in ops]
        # Unknown-outcome writes/cas overlap every window after their invoke.
        self.unknown_writers = [i for i, op in enumerate(ops)
                                if op.changes_state and op.ret is None]
        # How far back (in ops) an earlier completed write/cas can still overlap a window.
        self.reach = max((bisect.bisect_right(self.invs, op.ret) - i for i, op in enumerate(ops)
                          if op.changes_state and op.ret is not None), default=0)

    def fails(self, lo: int, hi: int, dropped: frozenset[int] = frozenset(), *,
              deadline: float | None = None, max_states: int | None = None) -> bool:
        """Is ops[lo:hi] minus `dropped` non-linearizable under the relaxations above?"""
        ops = self.ops
        members = [i for i in range(lo, hi) if i not in dropped]
        required = [ops[i] for i in members if ops[i].required]
        if not required:
            return False
        first_inv = ops[members[0]].inv
        last_ret = max(op.ret for op in required if op.ret is not None)  # all, being required
        optional = [ops[i] for i in members if not ops[i].required]
        context = {i for i in self.unknown_writers if i < lo}
        context.update(i for i in range(max(0, lo - self.reach), lo)
                       if ops[i].changes_state and (ret := ops[i].ret) is not None
                       and ret > first_inv)  # the rest is covered by the free start
        context.update(i for i in dropped if ops[i].changes_state)
        # Ops invoked after every required window op ended cannot matter.
        context.update(i for i in range(hi, bisect.bisect_right(self.invs, last_ret))
                       if ops[i].changes_state)
        optional += [ops[i] for i in sorted(context)]
        outcome = search(required, optional, initial=None if lo == 0 else ANY,
                         reuse_optional=True, deadline=deadline, max_states=max_states)
        return outcome.verdict == VIOLATION

    def locate(self, stuck: Operation, *, deadline: float | None = None,
               max_states: int = 50_000) -> tuple[int, int] | None:
        """A failing window around `stuck` (where a search got stuck), or None if none found.

        Searching a whole long history to prove a violation can mean exhausting every way
        to order everything before it; a window around the trouble is usually easy to refute.
        """
        n = len(self.ops)
        c = bisect.bisect_left(self.invs, stuck.inv)
        end = bisect.bisect_right(self.invs, stuck.ret if stuck.ret is not None else stuck.inv)
        tried = set()
        for width in (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048):
            # Mostly before the stuck op (the usual culprit is an earlier op), then after it.
            for lo, hi in ((max(0, c - width), min(n, end + width // 4 + 1)),
                           (c, min(n, end + width))):
                if (lo, hi) in tried:
                    continue
                tried.add((lo, hi))
                if deadline is not None and time.monotonic() > deadline:
                    return None
                if self.fails(lo, hi, deadline=deadline, max_states=max_states):
                    return lo, hi
            if c - width <= 0 and end + width // 4 + 1 >= n:
                break
        return None

    def scan(self, *, width: int = 64, deadline: float | None = None,
             max_states: int = 10_000) -> tuple[int, int] | None:
        """A failing window among overlapping windows covering all ops, or None.

        The fallback when a search neither finishes nor gets stuck near a refutable window:
        any window that fails proves a violation, however hard the rest of the history is.
        """
        n = len(self.ops)
        for lo in range(0, max(1, n - width // 2), width // 2):
            if deadline is not None and time.monotonic() > deadline:
                return None
            if self.fails(lo, min(n, lo + width), deadline=deadline, max_states=max_states):
                return lo, min(n, lo + width)
        return None

    def shrink(self, lo: int = 0, hi: int | None = None, *, deadline: float | None = None,
               max_states: int | None = None) -> Window:
        """Smallest failing window we can find before `deadline` inside failing ops[lo:hi].

        Falls back to ops[lo:hi] itself, which the caller must know to fail.
        """
        def fails(a: int, b: int, dropped: frozenset[int] = frozenset()) -> bool:
            if deadline is not None and time.monotonic() > deadline:
                return False
            return self.fails(a, b, dropped, deadline=deadline, max_states=max_states)

        if hi is None:
            hi = len(self.ops)
        # Shortest failing prefix: invariant fails(lo, end), and `short` not shown to fail.
        short, end = lo, hi
        while end - short > 1:
            mid = (short + end) // 2
            if fails(lo, mid):
                end = mid
            else:
                short = mid
        # Latest failing start. Relaxed checks are not monotone in the start (cutting an op
        # off can free the writes it overlapped), so first look for a short failing suffix,
        # then binary-search: invariant fails(start, end), and `stop` not shown to fail.
        start, stop = lo, end
        for cut in range(end - 1, max(lo, end - _SUFFIX_LIMIT), -1):
            if fails(cut, end):
                start = stop = cut
                break
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
        kept = [self.ops[i] for i in range(start, end) if i not in dropped]
        return Window(kept, from_start=start == 0)


def window_fails(ops: Sequence[Operation], lo: int, hi: int, dropped: frozenset[int] = frozenset(),
                 *, deadline: float | None = None, max_states: int | None = None) -> bool:
    """`Windows(ops).fails(...)`, for one-off checks."""
    return Windows(ops).fails(lo, hi, dropped, deadline=deadline, max_states=max_states)
