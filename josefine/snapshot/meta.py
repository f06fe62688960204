"""What a snapshot says about itself: the block it replaces the chain up to, and for whom.

A snapshot stands in for every block up to and including its *base* (docs/protocol.md
A.14), so a node that restores it must know which block that is (id and digest, so that a
block stored or received later at the base height can be checked against it), which
cluster it belongs to (a data dir copied from another cluster must be refused), and the
voter configuration in force at the base (membership changes will need it). The node id of
the writer is recorded for the operator reading a file that travelled by InstallSnapshot.

There is deliberately no timestamp: two nodes that snapshot the same base with the same
state write byte-identical files, which the simulation and the tests rely on.

The encoding is the project's one codec (`josefine.codec`, STYLE 3.4): a msgpack map
with fixed keys in a fixed order, so the same meta always encodes to the same bytes.
Decoding checks every field and raises `ValueError` with the reason; callers reading
files wrap it into `CorruptSnapshotError`.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from josefine.codec import DIGEST_BYTES, CodecError, packb, unpack
from josefine.types import BlockId

__all__ = ["SnapshotMeta"]

_KEYS = ("cluster_id", "base", "base_digest", "voters", "node_id")


def _nat(v: Any) -> bool:
    # Node ids, terms and heights are non-negative ints; bools are not ints here.
    return type(v) is int and v >= 0


@dataclass(frozen=True, slots=True)
class SnapshotMeta:
    """The header record of one snapshot file; immutable so it can be shared freely.

    Attributes:
        cluster_id: the cluster the snapshot's chain belongs to (ClusterConfig.cluster_id).
        base: the last block the snapshot covers; the state is the result of applying the
            committed chain from genesis up to and including it.
        base_digest: that block's digest (`Block.digest`, 32 bytes).
        voters: the voter configuration at `base`.
        node_id: the node that wrote the file.
    """

    cluster_id: str
    base: BlockId
    base_digest: bytes
    voters: frozenset[int]
    node_id: int

    def __post_init__(self) -> None:
        # Refuse a bad meta when it is made, not when a restore trips over it later.
        problem = _problem(self.cluster_id, self.base, self.base_digest, self.voters,
                           self.node_id)
        if problem:
            raise ValueError(f"invalid snapshot meta: {problem}")

    def encode(self) -> bytes:
        """The meta as msgpack bytes; deterministic (voters are written sorted)."""
        return packb({
            "cluster_id": self.cluster_id,
            "base": [self.base.term, self.base.height],
            "base_digest": self.base_digest,
            "voters": sorted(self.voters),
            "node_id": self.node_id,
        })

    @classmethod
    def decode(cls, data: bytes) -> SnapshotMeta:
        """Inverse of `encode`.

        Raises:
            ValueError: the bytes are not a meta this version understands (missing or
                unknown key, wrong type, duplicate voter).
        """
        try:
            m = unpack(data)
        except CodecError as exc:
            raise ValueError(f"snapshot meta is not msgpack: {exc}") from None
        if type(m) is not dict:
            raise ValueError("snapshot meta is not a map")
        # NB: unknown keys are refused, not skipped: a meta is only ever read by the format
        # version that wrote it (the file header carries that version).
        if set(m) != set(_KEYS):
            raise ValueError(f"snapshot meta keys {sorted(map(str, m))} != {list(_KEYS)}")
        base, voters = m["base"], m["voters"]
        if not (type(base) is list and len(base) == 2 and all(_nat(x) for x in base)):
            raise ValueError("snapshot meta base is not [term, height]")
        if type(voters) is not list or len(set(voters)) != len(voters):
            raise ValueError("snapshot meta voters is not a list of distinct ids")
        try:
            return cls(m["cluster_id"], BlockId(base[0], base[1]), m["base_digest"],
                       frozenset(voters), m["node_id"])
        except TypeError as exc:  # an unhashable voter
            raise ValueError(f"snapshot meta voters: {exc}") from None


def _problem(cluster_id: Any, base: Any, digest: Any, voters: Any, node_id: Any) -> str:
    if type(cluster_id) is not str or not cluster_id:
        return "cluster_id must be a non-empty str"
    if not (isinstance(base, tuple) and len(base) == 2 and all(_nat(x) for x in base)):
        return "base must be a BlockId"
    if type(digest) is not bytes or len(digest) != DIGEST_BYTES:
        return f"base_digest must be {DIGEST_BYTES} bytes"
    if type(voters) is not frozenset or not voters or not all(_nat(v) for v in voters):
        return "voters must be a non-empty frozenset of node ids"
    if not _nat(node_id):
        return "node_id must be a non-negative int"
    return ""
