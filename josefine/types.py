"""Plain value types shared by every layer.

`BlockId` is a NamedTuple so that ids compare lexicographically by (term, height):
that comparison *is* the Chained Raft voting rule (docs/protocol.md A.2, A.6).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

NodeId = int
"""Cluster-unique node number, 1..N in a launched cluster."""

Term = int
Height = int
ClientId = str


class BlockId(NamedTuple):
    """Identity of a block: the term of the leader that made it and its height."""

    term: int
    height: int

    def __str__(self) -> str:
        return f"({self.term},{self.height})"


GENESIS_ID = BlockId(0, 0)


@dataclass(frozen=True, slots=True)
class HardState:
    """The one record a vote or a term change must reach disk in before anyone hears of it."""

    term: int
    voted_for: int | None


class SafetyViolation(Exception):
    """An assumption the protocol's safety rests on is broken; the node must stop."""
