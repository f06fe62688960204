"""Wing–Gong / Lowe linearizability search for one register.

The search walks a doubly linked list of call and return entries in time order. At each
step it tries to linearize a pending operation whose call comes before the first remaining
return entry (the "just in time" rule); reaching a return entry whose operation is still
unlinearized means this branch failed and the last choice is undone. Memoizing every
(linearized set, register value) pair already entered keeps the search from exploring the
same configuration twice, which is what makes it practical.

Optional operations (unknown outcome: may have taken effect any time after their invoke, or
never) have no return entry. They are tried only when the required operations are stuck,
and three reductions keep them from multiplying the search space; each is sound because any
linearization can be rewritten into one that obeys it:

* an optional op that leaves the register unchanged is never tried (just drop it);
* an optional op must be followed directly by an op that *needs* it: one that succeeds
  after it but would fail in the value before it. Any other successor either overwrites it
  (drop the optional op) or does not care (swap the two: the optional op has no deadline);
* of several unused, already-invoked optional ops with the same effect only the earliest
  is tried: they stay interchangeable from then on, as neither has a deadline;
* a run of consecutive optional moves never revisits a value (cut out the loop).

A configuration that has used a superset of the optional ops of one that already failed
(same required ops linearized, same value) fails too, and is skipped.

Bitsets are Python ints. Required operations get bits in invoke order, so the linearized
set is mostly a run of low ones; the memo key stores that run as a count plus the short
remainder, keeping memory per state small even for keys with many thousands of operations.
"""
from __future__ import annotations

import time
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass

from josefine.check.ops import CAS, CAS_FAIL, READ, WRITE, Operation

__all__ = ["ANY", "AnyValue", "SearchOutcome", "search", "OK", "VIOLATION", "UNKNOWN"]

OK, VIOLATION, UNKNOWN = "ok", "violation", "unknown"


class AnyValue:
    """Symbolic initial register value: anything except the values in `excluded`.

    Used when checking a window cut out of the middle of a history, whose starting value is
    unknown. The first read or successful cas pins the value; a failed comparison only
    learns what it is not.
    """

    __slots__ = ("excluded",)

    def __init__(self, excluded: frozenset[Hashable] = frozenset()) -> None:
        self.excluded = excluded

    def __eq__(self, other: object) -> bool:
        return type(other) is AnyValue and other.excluded == self.excluded

    def __ne__(self, other: object) -> bool:
        return not self.__eq__(other)

    def __hash__(self) -> int:
        return hash((AnyValue, self.excluded))

    def __repr__(self) -> str:
        return f"AnyValue(excluding {set(self.excluded)!r})" if self.excluded else "AnyValue()"


ANY = AnyValue()


@dataclass(frozen=True)
class SearchOutcome:
    """Verdict of one search and how many configurations it entered.

    `stuck_at` is the earliest required op that was never linearized on the deepest path
    explored (None on success): where to look for the trouble when the search fails or
    gives up.
    """

    verdict: str
    states: int
    elapsed: float
    stuck_at: Operation | None = None


def _apply(kind: int, a: Hashable, b: Hashable, state: Hashable) -> tuple[bool, Hashable]:
    """The register model: may `kind(a, b)` happen in `state`, and the resulting state."""
    if kind == READ:
        if state == a:
            return True, state
        if type(state) is AnyValue and a not in state.excluded:
            return True, a
        return False, state
    if kind == WRITE:
        return True, a
    if kind == CAS:
        if state == a:
            return True, b
        if type(state) is AnyValue and a not in state.excluded:
            return True, b
        return False, state
    # CAS_FAIL: the comparison happened and failed; nothing changes.
    if type(state) is AnyValue:
        return True, state if a in state.excluded else AnyValue(state.excluded | {a})
    return state != a, state


def _entry_list(req: list[Operation]) -> tuple[list[int], list[int], list[bool], list[int],
                                              list[int], list[int]]:
    """Doubly linked list of call/return entries of `req` in time order.

    Node 0 is the head sentinel, nodes 1..2n the entries, node 2n+1 the tail. Ties (never
    produced by line positions) put calls first, which only makes operations look more
    concurrent: it can hide, never invent, a violation.
    """
    n = len(req)
    raw = sorted([(op.inv, 0, i) for i, op in enumerate(req)]
                 + [(op.ret, 1, i) for i, op in enumerate(req)])
    m = 2 * n
    nxt = list(range(1, m + 2)) + [m + 1]
    prv = [0] + list(range(0, m + 1))
    is_call = [False] * (m + 2)
    op_of = [0] * (m + 2)
    when = [0] * (m + 2)
    partner = [0] * (m + 2)
    call_node = [0] * n
    for node, (t, is_ret, i) in enumerate(raw, start=1):
        is_call[node] = not is_ret
        op_of[node] = i
        when[node] = t
        if is_ret:
            partner[call_node[i]] = node
        else:
            call_node[i] = node
    return nxt, prv, is_call, op_of, when, partner


class _Optionals:
    """The optional ops of one search, indexed to find the few worth trying at a stall.

    Ops with the same effect form a group; of a group only the first unused op is ever
    tried (unused optional ops have no deadline, so they are interchangeable once invoked).
    A group is only worth trying if a chain of optional ops starting with it leads to a
    pending required op that needs the chain (see the module docstring). Requirements come
    in two shapes: "the value must become v" (a read or cas expecting v) and "the value must
    stop being c" (a failed comparison against c while the value is c). Optional cas groups
    propagate them backwards: one turning u into a wanted value wants u before it.
    """

    def __init__(self, opt: list[Operation], canon: Callable[[int, Hashable, Hashable],
                                                          tuple[Hashable, Hashable]]) -> None:
        self.n = len(opt)
        self.kind = [op.kind for op in opt]
        effects = [canon(op.kind, op.a, op.b) for op in opt]
        self.a = [a for a, _ in effects]
        self.b = [b for _, b in effects]
        self.inv = [op.inv for op in opt]
        by_sig: dict[tuple[int, Hashable, Hashable], int] = {}
        self.group_mask: list[int] = []        # bitset of the group's ops
        self.group_op: list[int] = []          # some op of the group (for its effect)
        self.writes: dict[Hashable, int] = {}  # value -> write group
        self.cas_by_exp: dict[Hashable, list[int]] = {}
        self.cas_by_new: dict[Hashable, list[int]] = {}
        for j, (kind, a, b) in enumerate(zip(self.kind, self.a, self.b)):
            sig = (kind, a, b)
            g = by_sig.get(sig)
            if g is None:
                g = by_sig[sig] = len(self.group_mask)
                self.group_mask.append(0)
                self.group_op.append(j)
                if kind == WRITE:
                    self.writes[a] = g
                elif a != b:  # a cas that cannot change the value is never useful
                    self.cas_by_exp.setdefault(a, []).append(g)
                    self.cas_by_new.setdefault(b, []).append(g)
            self.group_mask[g] |= 1 << j

    def apply(self, j: int, state: Hashable) -> tuple[bool, Hashable]:
        return _apply(self.kind[j], self.a[j], self.b[j], state)

    def needs(self, j: int, prev: Hashable) -> bool:
        return _needs(self.kind[j], self.a[j], self.b[j], prev)

    def _first(self, g: int, olin: int, t: int) -> int:
        """The group's first unused op if it was invoked before `t`, else -1."""
        avail = self.group_mask[g] & ~olin
        if not avail:
            return -1
        j = (avail & -avail).bit_length() - 1
        return j if self.inv[j] < t else -1

    def candidates(self, state: Hashable, kinds: list[int], args: list[Hashable], olin: int,
                   t: int) -> list[int]:
        """Indices (ascending) of optional ops worth trying now, given the pending ops."""
        first = self._first
        if type(state) is AnyValue:
            return sorted(j for g in range(len(self.group_mask)) if (j := first(g, olin, t)) >= 0)
        become: set[Hashable] = set()   # values some pending op needs the register to hold
        leave: set[Hashable] = set()    # values some pending op needs the register to leave
        for k, a in zip(kinds, args):
            if k == READ or k == CAS:
                become.add(a)
            elif k == CAS_FAIL:
                leave.add(a)
        if state in leave:  # anything that changes the value helps
            return sorted(j for g in range(len(self.group_mask)) if (j := first(g, olin, t)) >= 0)
        frontier = list(become) + list(leave)
        seen: set[int] = set()
        while frontier:  # close under optional cas groups that could sit in the chain
            v = frontier.pop()
            for g in self.cas_by_new.get(v, []) + self.cas_by_exp.get(v, []):
                if g in seen:
                    continue
                j = self.group_op[g]
                if (self.b[j] in become or self.a[j] in leave) and first(g, olin, t) >= 0:
                    seen.add(g)
                    if self.a[j] not in become:
                        become.add(self.a[j])
                        frontier.append(self.a[j])
        out = []
        for v in become:
            g = self.writes.get(v)
            if g is not None and (j := first(g, olin, t)) >= 0:
                out.append(j)
        for g in self.cas_by_exp.get(state, ()):
            j = first(g, olin, t)
            if j >= 0 and self.b[j] in become:
                out.append(j)
        out.sort()
        return out


def _dominated(failures: list[int], olin: int) -> bool:
    """Did a configuration that had used only some of the optional ops in `olin` fail?

    It had at least our options (unused optional ops have no deadline), so we fail too.
    """
    for f in failures:
        if not f & ~olin:
            return True
    return False


_NO_PREV = object()  # marker: the last move was a required op


class _Unobserved:
    """Stands for every written value that no operation ever compares against."""

    def __repr__(self) -> str:
        return "<unobserved value>"


UNOBSERVED = _Unobserved()


def _canonicalizer(req: Sequence[Operation], opt: Sequence[Operation]
                   ) -> Callable[[int, Hashable, Hashable], tuple[Hashable, Hashable]]:
    """Map written values nobody reads or compares against to one `UNOBSERVED` value.

    Whether an op can happen depends only on the value's equality with the constants that
    reads and cas ops mention, so such values are indistinguishable: merging them is exact.
    It matters because unknown-outcome writes of never-read values are common (timeouts),
    and without merging each would be a separate way to change the value.
    """
    observed = {op.a for ops in (req, opt) for op in ops if op.kind != WRITE}

    def canon(kind: int, a: Hashable, b: Hashable) -> tuple[Hashable, Hashable]:
        if kind == WRITE:
            return (a if a in observed else UNOBSERVED), b
        if kind == CAS:
            return a, (b if b in observed else UNOBSERVED)
        return a, b

    return canon


class _FromAny:
    """`prev` for an optional op applied to a symbolic `AnyValue` (windows only).

    Swapping the optional op with its successor, or pinning the start value instead, is
    valid except where the successor is a failed comparison against the value a cas
    assumed (`pin`), so that is remembered along with the exclusions.
    """

    __slots__ = ("excluded", "pin")

    def __init__(self, excluded: frozenset[Hashable], pin: Hashable) -> None:
        self.excluded = excluded
        self.pin = pin

    def __eq__(self, other: object) -> bool:
        return (type(other) is _FromAny and other.excluded == self.excluded
                and other.pin == self.pin)

    def __hash__(self) -> int:
        return hash((_FromAny, self.excluded, self.pin))


_NO_PIN = object()


def _prev_of(kind: int, a: Hashable, state: Hashable) -> Hashable:
    """What to remember as `prev` when an optional op (kind, a, ...) is applied to `state`."""
    if type(state) is AnyValue:
        return _FromAny(state.excluded, a if kind == CAS else _NO_PIN)
    return state


def _needs(kind: int, a: Hashable, b: Hashable, prev: Hashable) -> bool:
    """May an op of `kind` directly follow an optional op applied to `prev`?

    Only if it needs that op: with it the op succeeds, without it the op would fail.
    Otherwise the optional op is overwritten (drop it) or can move after the op.
    """
    if type(prev) is _FromAny:
        if kind == READ or kind == CAS:
            return a in prev.excluded  # else pin the start value to what it reads instead
        return kind == CAS_FAIL and a == prev.pin
    return not _apply(kind, a, b, prev)[0]


def search(required: Sequence[Operation], optional: Sequence[Operation] = (), *,
           initial: Hashable = None, reuse_optional: bool = False,
           deadline: float | None = None, max_states: int | None = None) -> SearchOutcome:
    """Is there a linearization of `required` (plus any subset of `optional`) from `initial`?

    `required` ops must have a return position (`ret`); `optional` ops only use `inv`.
    Gives up with verdict "unknown" when `time.monotonic()` passes `deadline` or more than
    `max_states` configurations were entered; never guesses.

    With `reuse_optional` an optional op may take effect any number of times: a further
    relaxation, used for windows, that removes the optional bitset from the state space.

    """
    started = time.monotonic()
    req = sorted(required, key=lambda op: op.inv)
    opt = sorted((op for op in optional if op.kind in (WRITE, CAS)), key=lambda op: op.inv)
    n = len(req)
    if n == 0:
        return SearchOutcome(OK, 0, 0.0)
    if deadline is not None and started > deadline:
        return SearchOutcome(UNKNOWN, 0, 0.0)
    limit = max_states if max_states is not None else 1 << 62
    nxt, prv, is_call, op_of, when, partner = _entry_list(req)
    tail = 2 * n + 1
    canon = _canonicalizer(req, opt)
    kind = [op.kind for op in req]
    effects = [canon(op.kind, op.a, op.b) for op in req]
    arg_a = [a for a, _ in effects]
    arg_b = [b for _, b in effects]
    bit = [1 << i for i in range(n)]
    optionals = _Optionals(opt, canon)

    # Memo key: ((run of low linearized required ops, rest of that bitset, value, value
    # before the last move if it was optional, values seen in the current run of optional
    # moves), optional bitset).
    cache: set[tuple[tuple[int, int, Hashable, Hashable, frozenset | None], int]] = set()
    # Configurations already fully explored without success, by everything but the
    # optional bitset: one that used a subset of our optional ops dominates us.
    failed: dict[tuple[int, int, Hashable, Hashable, frozenset | None], list[int]] = {}
    stack: list[tuple[int, int, Hashable, int, int, Hashable, frozenset | None, tuple]] = []
    state: Hashable = initial
    lin = 0           # bitset of linearized required ops
    olin = 0          # bitset of linearized optional ops
    prev = _NO_PREV   # value before the last move, if that move was an optional op
    no_prev = _NO_PREV
    chain: frozenset[Hashable] | None = None  # values seen in the current run of optional moves
    left = n
    e = nxt[0]
    j = -1            # -1: scanning required calls; >= 0: trying optional ops at stall node e
    steps = 0
    deepest = 0       # longest run of low linearized required ops seen
    monotonic = time.monotonic
    any_type = AnyValue

    def done(verdict: str) -> SearchOutcome:
        stuck = req[deepest] if verdict != OK and deepest < n else None
        return SearchOutcome(verdict, len(cache), monotonic() - started, stuck)

    while True:
        steps += 1
        if not steps & 1023 and deadline is not None and monotonic() > deadline:
            return done(UNKNOWN)
        if j < 0:
            if is_call[e]:
                i = op_of[e]
                k = kind[i]
                # Inlined fast paths of _apply for concrete values.
                if k == READ:
                    if state == arg_a[i]:
                        ok, new = True, state
                    elif type(state) is any_type:
                        ok, new = _apply(k, arg_a[i], None, state)
                    else:
                        ok = False
                elif k == WRITE:
                    ok, new = True, arg_a[i]
                elif k == CAS:
                    if state == arg_a[i]:
                        ok, new = True, arg_b[i]
                    elif type(state) is any_type:
                        ok, new = _apply(k, arg_a[i], arg_b[i], state)
                    else:
                        ok = False
                else:
                    ok, new = _apply(k, arg_a[i], None, state)
                if ok and prev is not no_prev:
                    ok = _needs(k, arg_a[i], arg_b[i], prev)
                if ok:
                    nlin = lin | bit[i]
                    low = (~nlin & (nlin + 1)).bit_length() - 1
                    base = (low, nlin >> low, new, no_prev, None)
                    key = (base, olin)
                    if key not in cache and not (base in failed and _dominated(failed[base], olin)):
                        if len(cache) >= limit:
                            return done(UNKNOWN)
                        cache.add(key)
                        stack.append((e, -1, state, lin, olin, prev, chain, key))
                        if low > deepest:
                            deepest = low
                        r = partner[e]
                        nxt[prv[e]] = nxt[e]
                        prv[nxt[e]] = prv[e]
                        nxt[prv[r]] = nxt[r]
                        prv[nxt[r]] = prv[r]
                        state = new
                        lin = nlin
                        prev = no_prev
                        chain = None
                        left -= 1
                        if not left:
                            return done(OK)
                        e = nxt[0]
                        continue
                e = nxt[e]
                continue
            if e == tail:  # cannot happen while required ops are left; be defensive
                raise AssertionError("linearizability search ran off the end of the history")
            j = 0
        # Stuck at return node e: try useful optional ops invoked before it, then backtrack.
        moved = False
        if optionals.n:
            pending = []
            x = nxt[0]
            while x != e:
                pending.append(op_of[x])
                x = nxt[x]
            for jc in optionals.candidates(state, [kind[i] for i in pending],
                                           [arg_a[i] for i in pending], olin, when[e]):
                if jc < j:
                    continue
                ok, new = optionals.apply(jc, state)
                if not ok or new == state:
                    continue
                if prev is not no_prev and not optionals.needs(jc, prev):
                    continue
                # A run of optional moves that revisits a value can skip the loop.
                nchain = frozenset((state,)) if chain is None else chain
                if new in nchain:
                    continue
                nchain = nchain | {new}
                nolin = olin if reuse_optional else olin | (1 << jc)
                low = (~lin & (lin + 1)).bit_length() - 1
                nprev = _prev_of(optionals.kind[jc], optionals.a[jc], state)
                base = (low, lin >> low, new, nprev, nchain)
                key = (base, nolin)
                if key in cache or (base in failed and _dominated(failed[base], nolin)):
                    continue
                if len(cache) >= limit:
                    return done(UNKNOWN)
                cache.add(key)
                stack.append((e, jc, state, lin, olin, prev, chain, key))
                prev = nprev
                chain = nchain
                state = new
                olin = nolin
                e = nxt[0]
                j = -1
                moved = True
                break
        if moved:
            continue
        if not stack:
            return done(VIOLATION)
        e0, j0, state, lin, olin, prev, chain, key = stack.pop()
        failed.setdefault(key[0], []).append(key[1])
        if j0 < 0:
            r = partner[e0]
            nxt[prv[r]] = r
            prv[nxt[r]] = r
            nxt[prv[e0]] = e0
            prv[nxt[e0]] = e0
            left += 1
            e = nxt[e0]
            j = -1
        else:
            e = e0
            j = j0 + 1
