"""Leader-side view of one follower: match/next and flow control (etcd's tracker).

PROBE keeps one AppendBlocks outstanding until an answer or a heartbeat response; REPLICATE
pipelines up to `max_inflight` messages. Each in-flight entry remembers the heartbeat seq at
send time: when heartbeats sent two rounds *after* it have round-tripped but the entry is
still unacked, the append was lost and the follower drops back to PROBE.
"""
from __future__ import annotations

from collections import deque
from enum import IntEnum

from josefine.types import BlockId


class ProgressState(IntEnum):
    PROBE = 0
    REPLICATE = 1
    SNAPSHOT = 2  # reserved for InstallSnapshot (docs/protocol.md A.14)


class Progress:
    __slots__ = ("acked_seq", "active", "inflight", "match", "next", "probe_sent", "seq", "state")

    def __init__(self, next_height: int) -> None:
        self.match: BlockId | None = None
        self.next = next_height
        self.state = ProgressState.PROBE
        self.inflight: deque[tuple[int, int]] = deque()  # (tail height, hb_seq at send)
        self.probe_sent = False
        self.active = False
        self.acked_seq = 0
        self.seq = 0  # AppendBlocks sequence numbers for this follower

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
        self.probe_sent = False
        self.inflight.clear()
        self.next = (self.match.height + 1) if self.match is not None else self.next

    def become_replicate(self) -> None:
        self.state = ProgressState.REPLICATE
        self.probe_sent = False
        self.inflight.clear()
        self.next = (self.match.height + 1) if self.match is not None else self.next

    def __repr__(self) -> str:
        return (f"Progress(match={self.match}, next={self.next}, {self.state.name}, "
                f"inflight={len(self.inflight)}, active={self.active})")
