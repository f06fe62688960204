"""The register model the search runs: values, operation effects, and symbolic values.

Kept apart from the search so that the search loop reads as the algorithm; the search
inlines the hot paths of `apply` for concrete values.
"""
from __future__ import annotations

from collections.abc import Callable, Hashable, Sequence

from josefine.check.ops import CAS, CAS_FAIL, READ, WRITE, Operation

__all__ = ["ANY", "AnyValue", "UNOBSERVED", "apply", "canonicalizer", "needs", "prev_of"]


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


def apply(kind: int, a: Hashable, b: Hashable, state: Hashable) -> tuple[bool, Hashable]:
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


class _Unobserved:
    """Stands for every written value that no operation ever compares against."""

    def __repr__(self) -> str:
        return "<unobserved value>"


UNOBSERVED = _Unobserved()


def canonicalizer(req: Sequence[Operation], opt: Sequence[Operation]
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


def prev_of(kind: int, a: Hashable, state: Hashable) -> Hashable:
    """What to remember as `prev` when an optional op (kind, a, ...) is applied to `state`."""
    if type(state) is AnyValue:
        return _FromAny(state.excluded, a if kind == CAS else _NO_PIN)
    return state


def needs(kind: int, a: Hashable, b: Hashable, prev: Hashable) -> bool:
    """May an op of `kind` directly follow an optional op applied to `prev`?

    Only if it needs that op: with it the op succeeds, without it the op would fail.
    Otherwise the optional op is overwritten (drop it) or can move after the op.
    """
    if type(prev) is _FromAny:
        if kind == READ or kind == CAS:
            return a in prev.excluded  # else pin the start value to what it reads instead
        return kind == CAS_FAIL and a == prev.pin
    return not apply(kind, a, b, prev)[0]
