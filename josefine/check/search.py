"""Wing–Gong / Lowe linearizability search for one register.

The search walks a doubly linked list of call and return entries in time order. At each
step it tries to linearize a pending operation whose call comes before the first remaining
return entry (the "just in time" rule); reaching a return entry whose operation is still
unlinearized means this branch failed and the last choice is undone. Memoizing every
(linearized set, register value) pair already entered keeps the search from exploring the
same configuration twice, which is what makes it practical.

Optional operations (unknown outcome: may have taken effect any time after their invoke, or
never) have no return entry. They are tried only when the required operations are stuck,
and these reductions keep them from multiplying the search space; each is sound because
any linearization can be rewritten into one that obeys it:

* an optional op that leaves the register unchanged is never tried (just drop it);
* an optional op must be followed directly by an op that *needs* it: one that succeeds
  after it but would fail in the value before it. Any other successor either overwrites it
  (drop the optional op) or does not care (swap the two: the optional op has no deadline);
* of several unused, already-invoked optional ops with the same effect only the earliest
  is tried: they stay interchangeable from then on, as neither has a deadline;
* a run of consecutive optional moves never revisits a value (cut out the loop).

A configuration that has used a superset of the optional ops of one that already failed
(same required ops linearized, same value) fails too, and is skipped. And a required op
that succeeds without changing the value (a read, a failed comparison) is linearized as
soon as it can be, without trying alternatives: moving it first never breaks a completion.

Bitsets are Python ints. Required operations get bits in invoke order, so the linearized
set is mostly a run of low ones; the memo key stores that run as a count plus the short
remainder, keeping memory per state small even for keys with many thousands of operations.
"""
from __future__ import annotations

import time
from collections.abc import Hashable, Sequence
from dataclasses import dataclass

from josefine.check.model import ANY, AnyValue, apply, canonicalizer, needs, prev_of
from josefine.check.ops import CAS, CAS_FAIL, READ, WRITE, Operation
from josefine.check.optionals import Optionals

__all__ = ["ANY", "AnyValue", "SearchOutcome", "search", "OK", "VIOLATION", "UNKNOWN"]

OK, VIOLATION, UNKNOWN = "ok", "violation", "unknown"

# A configuration minus its optional bitset; see the memo key in `search`.
_Base = tuple[int, int, Hashable, Hashable, "frozenset[Hashable] | None"]


@dataclass(frozen=True)
class SearchOutcome:
    """Verdict of one search and how many configurations it entered.

    `stuck_at` is the required op whose completion the search got stuck at latest in the
    history (None on success): where to look for the trouble when the search fails or
    gives up.
    """

    verdict: str
    states: int
    elapsed: float
    stuck_at: Operation | None = None


def _entry_list(req: list[Operation]) -> tuple[list[int], list[int], list[bool], list[int],
                                              list[int], list[int]]:
    """Doubly linked list of call/return entries of `req` in time order.

    Node 0 is the head sentinel, nodes 1..2n the entries, node 2n+1 the tail. Ties (never
    produced by line positions) put calls first, which only makes operations look more
    concurrent: it can hide, never invent, a violation.
    """
    n = len(req)
    raw = [(op.inv, 0, i) for i, op in enumerate(req)]
    for i, op in enumerate(req):
        assert op.ret is not None, "only required operations (known returns) are listed"
        raw.append((op.ret, 1, i))
    raw.sort()
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


def _dominated(failures: list[int], olin: int) -> bool:
    """Did a configuration that had used only some of the optional ops in `olin` fail?

    It had at least our options (unused optional ops have no deadline), so we fail too.
    """
    for f in failures:
        if not f & ~olin:
            return True
    return False


_NO_PREV = object()  # marker: the last move was a required op


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
    canon = canonicalizer(req, opt)
    kind = [op.kind for op in req]
    effects = [canon(op.kind, op.a, op.b) for op in req]
    arg_a = [a for a, _ in effects]
    arg_b = [b for _, b in effects]
    bit = [1 << i for i in range(n)]
    optionals = Optionals(opt, canon)
    if type(initial) is not AnyValue:
        # A read or cas expecting a value that nothing ever writes can never happen.
        made = {initial, *(a for k, a in zip(kind, arg_a, strict=True) if k == WRITE),
                *(b for k, b in zip(kind, arg_b, strict=True) if k == CAS),
                *(a for k, a in zip(optionals.kind, optionals.a, strict=True) if k == WRITE),
                *(b for k, b in zip(optionals.kind, optionals.b, strict=True) if k == CAS)}
        for i, k in enumerate(kind):
            if (k == READ or k == CAS) and arg_a[i] not in made:
                return SearchOutcome(VIOLATION, 0, time.monotonic() - started, req[i])

    # Memo key: ((run of low linearized required ops, rest of that bitset, value, value
    # before the last move if it was optional, values seen in the current run of optional
    # moves), optional bitset).
    cache: set[tuple[_Base, int]] = set()
    # Configurations already fully explored without success, by everything but the
    # optional bitset: one that used a subset of our optional ops dominates us.
    failed: dict[_Base, list[int]] = {}
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
    dead = False      # the current configuration is known to fail: backtrack
    fresh = True      # just entered the current configuration
    steps = 0
    deepest = 0       # longest run of low linearized required ops seen
    furthest = 0      # latest return entry the search ever got stuck at
    monotonic = time.monotonic
    any_type = AnyValue

    def done(verdict: str) -> SearchOutcome:
        stuck = None
        if verdict != OK:
            stuck = req[op_of[furthest]] if furthest else req[deepest] if deepest < n else None
        return SearchOutcome(verdict, len(cache), monotonic() - started, stuck)

    while True:
        steps += 1
        if not steps & 1023 and deadline is not None and monotonic() > deadline:
            return done(UNKNOWN)
        if j < 0:
            if fresh:
                # In a new configuration, an op that succeeds without changing anything is
                # taken first (see below): it needs no choice, so it is never wrong.
                fresh = False
                if type(state) is not any_type:
                    x = e
                    while is_call[x]:
                        i = op_of[x]
                        k = kind[i]
                        a = arg_a[i]
                        if ((k == READ and state == a) or (k == CAS_FAIL and state != a)
                                or (k == CAS and state == a == arg_b[i])) and (
                                prev is no_prev or needs(k, a, arg_b[i], prev)):
                            e = x
                            break
                        x = nxt[x]
            if is_call[e]:
                i = op_of[e]
                k = kind[i]
                # Inlined fast paths of `apply` for concrete values.
                if k == READ:
                    if state == arg_a[i]:
                        ok, new = True, state
                    elif type(state) is any_type:
                        ok, new = apply(k, arg_a[i], None, state)
                    else:
                        ok = False
                elif k == WRITE:
                    ok, new = True, arg_a[i]
                elif k == CAS:
                    if state == arg_a[i]:
                        ok, new = True, arg_b[i]
                    elif type(state) is any_type:
                        ok, new = apply(k, arg_a[i], arg_b[i], state)
                    else:
                        ok = False
                else:
                    ok, new = apply(k, arg_a[i], None, state)
                if ok and prev is not no_prev:
                    ok = needs(k, arg_a[i], arg_b[i], prev)
                if ok:
                    nlin = lin | bit[i]
                    low = (~nlin & (nlin + 1)).bit_length() - 1
                    base: _Base = (low, nlin >> low, new, no_prev, None)
                    key = (base, olin)
                    # An op that succeeds now and changes nothing (a read, a failed
                    # comparison) can go first in any completion: take it, try nothing else.
                    forced = k != WRITE and new == state and type(state) is not any_type
                    if key not in cache and not (base in failed and _dominated(failed[base], olin)):
                        if len(cache) >= limit:
                            return done(UNKNOWN)
                        cache.add(key)
                        stack.append((e, -2 if forced else -1, state, lin, olin, prev, chain, key))
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
                        fresh = True
                        continue
                    dead = forced  # its only successor already failed
                if not dead:
                    e = nxt[e]
                    continue
            elif e == tail:  # cannot happen while required ops are left; be defensive
                raise AssertionError("linearizability search ran off the end of the history")
            else:
                j = 0
                if when[e] > when[furthest]:
                    furthest = e
        # Stuck at return node e: try useful optional ops invoked before it, then backtrack.
        moved = False
        if not dead and optionals.n:
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
                nprev = prev_of(optionals.kind[jc], optionals.a[jc], state)
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
                fresh = True
                moved = True
                break
        if moved:
            continue
        dead = False
        while True:  # backtrack
            if not stack:
                return done(VIOLATION)
            e0, j0, state, lin, olin, prev, chain, key = stack.pop()
            failed.setdefault(key[0], []).append(key[1])
            if j0 >= 0:
                e = e0
                j = j0 + 1
                break
            r = partner[e0]
            nxt[prv[r]] = r
            prv[nxt[r]] = r
            nxt[prv[e0]] = e0
            prv[nxt[e0]] = e0
            left += 1
            if j0 == -1:
                e = nxt[e0]
                j = -1
                break
            # j0 == -2: a forced move failed, so did the configuration it was forced in.
