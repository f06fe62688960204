"""Progress: the leader's per-follower flow control (docs/protocol.md A.7; etcd tracker/progress.go
and raft_flow_control_test.go)."""
import pytest

from josefine.raft.progress import Progress, ProgressState
from josefine.types import BlockId

pytestmark = pytest.mark.timeout(60)


def test_new_progress_probes_from_next_with_unknown_match():
    """docs/protocol.md A.6 (become_leader: match None, next = head + 1, PROBE)."""
    p = Progress(5)
    assert (p.state, p.next, p.match, p.active, p.acked_seq) == \
        (ProgressState.PROBE, 5, None, False, 0)
    assert not p.paused(4)


def test_probe_pauses_after_one_message_until_answered():
    """etcd TestProgressPaused: PROBE keeps exactly one AppendBlocks in flight."""
    p = Progress(3)
    p.probe_sent = True
    assert p.paused(100)
    p.become_probe()
    assert not p.paused(100) and p.next == 3      # match unknown: next kept


def test_replicate_window_fills_to_max_inflight_and_acks_free_slots():
    """etcd TestInflightsFull / TestInflightFreeTo: the window counts messages, an ack frees
    every message whose tail the follower now holds."""
    p = Progress(2)
    p.match = BlockId(1, 1)
    p.become_replicate()
    assert p.state == ProgressState.REPLICATE and p.next == 2 and not p.paused(3)
    for tail in (2, 3, 4):
        p.inflight.append((tail, 0))
    assert p.paused(3) and not p.paused(4)
    p.ack(2)
    assert list(p.inflight) == [(3, 0), (4, 0)] and not p.paused(3)
    p.ack(4)
    assert not p.inflight
    p.ack(9)
    assert not p.inflight


def test_become_probe_and_replicate_restart_from_match():
    """etcd TestProgressBecomeProbe / TestProgressBecomeReplicate: next = match + 1."""
    p = Progress(10)
    p.match = BlockId(2, 6)
    p.inflight.append((9, 1))
    p.probe_sent = True
    p.become_probe()
    assert (p.state, p.next, p.probe_sent, len(p.inflight)) == (ProgressState.PROBE, 7, False, 0)
    p.next = 12
    p.become_replicate()
    assert (p.state, p.next) == (ProgressState.REPLICATE, 7)


def test_snapshot_state_is_always_paused_and_seq_numbers_increase():
    """docs/protocol.md A.7 (SNAPSHOT pauses blocks), A.4 (AppendBlocks seq)."""
    p = Progress(1)
    p.state = ProgressState.SNAPSHOT
    assert p.paused(1000)
    assert [p.next_seq() for _ in range(3)] == [1, 2, 3]
