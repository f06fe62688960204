"""Index of a search's optional (unknown-outcome) operations.

At every point where the required operations are stuck, the search asks which optional
operations are worth trying; answering that by scanning them all made long histories with
many timeouts slow, so they are grouped by effect and indexed by the values they need and
produce.
"""
from __future__ import annotations

from collections.abc import Callable, Hashable

from josefine.check.model import AnyValue, apply, needs
from josefine.check.ops import CAS, CAS_FAIL, READ, WRITE, Operation

__all__ = ["Optionals"]


class Optionals:
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
        for j, (kind, a, b) in enumerate(zip(self.kind, self.a, self.b, strict=True)):
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
        return apply(self.kind[j], self.a[j], self.b[j], state)

    def needs(self, j: int, prev: Hashable) -> bool:
        return needs(self.kind[j], self.a[j], self.b[j], prev)

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
        for k, a in zip(kinds, args, strict=True):
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
            wg = self.writes.get(v)
            if wg is not None and (j := first(wg, olin, t)) >= 0:
                out.append(j)
        for g in self.cas_by_exp.get(state, ()):
            j = first(g, olin, t)
            if j >= 0 and self.b[j] in become:
                out.append(j)
        out.sort()
        return out
