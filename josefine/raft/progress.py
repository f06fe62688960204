"""Leader-side view of one follower: match/next and flow control (etcd's tracker).

PROBE keeps one AppendBlocks outstanding until an answer or a heartbeat response; REPLICATE
pipelines up to `max_inflight` messages. Each in-flight entry remembers the heartbeat seq at
send time: when heartbeats sent two rounds *after* it have round-tripped but the entry is
still unacked, the append was lost and the follower drops back to PROBE. SNAPSHOT (the
follower needs blocks the leader compacted away) sends nothing until the snapshot is
acknowledged or fails (A.14).
"""
from __future__ import annotations

from collections import deque
from enum import IntEnum

from josefine.types import BlockId


class ProgressState(IntEnum):
    PROBE = 0
    REPLICATE = 1
    SNAPSHOT = 2  # an InstallSnapshot is on its way (docs/protocol.md A.14)


class Progress:
    __slots__ = ("acked_seq", "active", "inflight", "match", "next", "pending_snapshot",
                 "probe_sent", "seq", "snap_ticks", "state")

    def __init__(self, next_height: int) -> None:
        self.match: BlockId | None = None
        self.next = next_height
        self.state = ProgressState.PROBE
        self.inflight: deque[tuple[int, int]] = deque()  # (tail height, hb_seq at send)
        self.probe_sent = False
        self.active = False
        self.acked_seq = 0
        self.seq = 0  # AppendBlocks sequence numbers for this follower
        self.pending_snapshot: BlockId | None = None  # the snapshot base sent, in SNAPSHOT
        self.snap_ticks = 0   # ticks spent in SNAPSHOT (a backstop for a lost answer)

    def next_seq(self) -> int:
        self.seq += 1
        return self.seq

    def paused(self, max_inflight: int) -> bool:
        if self.state == ProgressState.PROBE:
            return self.probe_sent
        if self.state == ProgressState.REPLICATE:
            return len(self.inflight) >= max_inflight
        return True

    def ack(self, match_height: int) -> None:
        """Free every in-flight message whose tail the follower now holds."""
        infl = self.inflight
        while infl and infl[0][0] <= match_height:
            infl.popleft()

    def become_probe(self) -> None:
        self.state = ProgressState.PROBE
        self.pending_snapshot = None
        self.probe_sent = False
        self.inflight.clear()
        self.next = (self.match.height + 1) if self.match is not None else self.next

    def become_snapshot(self, last: BlockId) -> None:
        self.state = ProgressState.SNAPSHOT
        self.pending_snapshot = last
        self.snap_ticks = 0
        self.probe_sent = False
        self.inflight.clear()

    def become_replicate(self) -> None:
        self.state = ProgressState.REPLICATE
        self.probe_sent = False
        self.inflight.clear()
        self.next = (self.match.height + 1) if self.match is not None else self.next

    def __repr__(self) -> str:
        return (f"Progress(match={self.match}, next={self.next}, {self.state.name}, "
                f"inflight={len(self.inflight)}, active={self.active})")
