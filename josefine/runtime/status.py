"""`NodeStatus`: what a node says about itself, typed.

The role actor assembles it (core state, its own queues, the node's transport, store and
writer counters) when asked, on its own thread, so the figures are one consistent moment
of the core. On the wire (`ClientStatusResp`) and in `josefine status --json` it travels
as `to_dict()`, whose keys are the stable contract; for embedding code written against the
former plain dict, it also reads as a read-only mapping of those keys.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class NodeStatus(Mapping[str, Any]):
    id: int
    role: str
    """follower, precandidate, candidate, leader; or stopped."""
    term: int | None = None
    voted_for: int | None = None
    leader: int | None = None
    head: list[int] | None = None
    commit: list[int] | None = None
    applied: list[int] | None = None
    """[term, height] of the last block the state machine applied."""
    base: list[int] | None = None
    """[term, height] of the chain's base: genesis, or the block the chain was compacted
    to (its blocks below are gone from this node, held by a snapshot)."""
    snapshot: list[int] | None = None
    """[term, height] of the base of this node's newest durable snapshot, or None."""
    members: list[dict[str, Any]] | None = None
    """Every member in force on this node's path: id, address, role (voter / learner)."""
    snapshots: dict[str, Any] | None = None
    """Snapshot counters (runtime/snapshots.SnapshotStats): taken, failed, last_seconds,
    installed, sent, received, transfer_failures."""
    blocks: int | None = None
    """Blocks the core holds in memory."""
    pending: int | None = None
    """Commands proposed here and not yet committed (a leader's)."""
    tripwire: dict[str, int] | None = None
    follower_reads: int | None = None
    """Reads this node served as a follower, with a read index from the leader (A.10)."""
    forwarded_writes: int | None = None
    """Client commands this node forwarded to its leader as a follower (A.8)."""
    queued_proposals: int | None = None
    dropped_ticks: int | None = None
    ran_on_io_thread: int | None = None
    """Input batches the role actor's state handled on the transport's I/O thread."""
    address: str | None = None
    pid: int | None = None
    sm_digest: str | None = None
    dropped_frames: int | None = None
    transport: dict[str, Any] | None = None
    fsync: bool | None = None
    waiting_proposals: int | None = None
    rss_bytes: int | None = None
    leveldb_memory_bytes: int | None = None
    elections: int | None = None
    """Elections this node started as a candidate (pre-votes not counted)."""
    followers: dict[int, int] | None = None
    """A leader's view of each follower's match height; None on a non-leader."""
    metrics_address: str | None = None
    """Where the node serves Prometheus metrics, or None."""
    writes: dict[str, int] | None = None
    """total, synced, inline (writes run by whichever thread held the role actor's state,
    without the hand-off to the chain actor), readys (Readys they carried)."""

    def to_dict(self) -> dict[str, Any]:
        """The wire form: every field, stopped nodes only their id and role."""
        if self.role == "stopped":
            return {"id": self.id, "role": self.role}
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}

    def __getitem__(self, key: str) -> Any:
        return self.to_dict()[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self.to_dict())

    def __len__(self) -> int:
        return len(self.to_dict())


def most_caught_up(followers: Mapping[int, int]) -> int:
    """The follower a leader should hand over to: the highest match height, then the lowest
    id (`NodeStatus.followers` maps follower id to match height; must not be empty)."""
    return min(followers, key=lambda v: (-followers[v], v))
