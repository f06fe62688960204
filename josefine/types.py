"""Plain value types shared by every layer.

`BlockId` is a NamedTuple so that ids compare lexicographically by (term, height):
that comparison *is* the Chained Raft voting rule (PROTOCOL.md A.2, A.6).
"""
from __future__ import annotations

from typing import NamedTuple, NewType

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


class SafetyViolation(Exception):
    """An assumption the protocol's safety rests on is broken; the node must stop."""
