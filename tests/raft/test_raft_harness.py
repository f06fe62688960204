"""The simulated network itself: durability model and invariant checks (harness.py)."""
import pytest

from harness import Network, of_type
from josefine.messages import AppendBlocks, AppendResp
from josefine.raft.core import Role
from josefine.types import BlockId

pytestmark = pytest.mark.timeout(60)


def test_crash_loses_unsynced_blocks_and_acks_and_restart_uses_the_disk_only():
    """docs/protocol.md A.3, B4: an ack leaves only after its blocks are durable."""
    net = Network(3)
    net.elect(1)
    net.heartbeat(1)
    net.pause_disk(2)
    net.propose(1, b"x")
    net.deliver(lambda m: isinstance(m, AppendBlocks) and m.dst == 2)
    assert net.nodes[2].head == BlockId(1, 2)
    assert net.disk[2].head == BlockId(1, 1) and BlockId(1, 2) not in net.disk[2].blocks
    assert not [m for m in of_type(net.sent, AppendResp) if m.src == 2 and
                m.match == BlockId(1, 2)]
    net.crash(2)
    assert net.restart(2).head == BlockId(1, 1)
    assert net.nodes[2].role == Role.FOLLOWER and net.nodes[2].term == 1
    net.stabilize()
    for _ in range(4):   # the leader resends once two heartbeat rounds pass without an ack
        net.heartbeat(1)
    assert net.nodes[2].head == BlockId(1, 2)


def test_flush_releases_held_acks_in_order():
    net = Network(3)
    net.elect(1)
    net.heartbeat(1)
    net.pause_disk(2)
    net.propose(1, b"x")
    net.deliver(lambda m: m.dst == 2)
    assert net.unsynced[2]
    net.flush(2)
    assert net.disk[2].head == BlockId(1, 2)
    assert [m.match for m in net.queue if isinstance(m, AppendResp) and m.src == 2] == \
        [BlockId(1, 2)]


def test_invariant_checks_catch_planted_violations():
    net = Network(3)
    net.elect(1)
    net.events.append((2, ("became_leader", 1)))
    with pytest.raises(AssertionError, match="B1"):
        net.check()
    net = Network(3)
    net.elect(1)
    net.events.append((2, ("voted", 1, 3)))
    with pytest.raises(AssertionError, match="B2"):
        net.check()
    net = Network(3)
    net.elect(1)
    net.applied[2].append(net.nodes[1].tree.get(BlockId(1, 1)))
    with pytest.raises(AssertionError, match="B15"):
        net.check()
