"""ReadIndex: docs/protocol.md §C items 47–50 (etcd-io/raft raft_test.go; thesis §6.4)."""
import pytest

from harness import Network, of_type
from josefine.messages import AppendBlocks, Heartbeat, Status
from josefine.raft.core import Role
from josefine.types import BlockId

pytestmark = pytest.mark.timeout(60)


# ------------------------------------------------------------------------------ C.47
def test_reads_reflect_every_write_acknowledged_before_they_began_across_leaders():
    """docs/protocol.md C.47, A.10, B17; etcd TestReadOnlyOptionSafe; thesis §6.4.

    Writes and ReadIndex reads alternate at successive leaders. A read is never served in
    the step that asks for it (it needs a heartbeat round), is served at the leader's commit
    of that moment, and sees every write that was applied at a leader before it began."""
    net = Network(3)
    acked: list[bytes] = []
    rid = 0
    for leader in (1, 2, 3, 1):
        if net.nodes[leader].role != Role.LEADER:
            net.elect(leader)
        for k in range(2):
            data = b"%d-%d" % (leader, k)
            net.propose(leader, data)
            net.stabilize()
            assert (data in [d for _, _, d in net.sm[leader]])
            acked.append(data)
            rid += 1
            commit_at_start = net.nodes[leader].commit
            r = net.read(leader, rid)
            assert r.reads == []
            heartbeats = of_type(r.eager, Heartbeat)
            assert len(heartbeats) == 2
            net.stabilize()
            node, index, seen = net.read_results[rid]
            assert node == leader and index == commit_at_start
            assert [d for _, _, d in seen] == acked
    assert len(net.read_results) == 8


# ------------------------------------------------------------------------------ C.48
def test_read_at_new_leader_waits_for_its_noop_to_commit():
    """docs/protocol.md C.48, A.10 (deferred reads); etcd TestReadOnlyForNewLeader;
    thesis §6.4 step 1."""
    net = Network(3)
    net.elect(1)
    net.propose(1, b"a")
    net.stabilize()
    net.heartbeat(1)
    net.ignore(AppendBlocks)
    net.elect(2)
    n2 = net.nodes[2]
    assert n2.commit == BlockId(1, 2) and n2.head == BlockId(2, 3)
    r = net.read(2, "r1")
    assert r.reads == [] and r.outcomes == [] and r.eager == []
    net.tick(2, 3)
    net.stabilize()
    assert "r1" not in net.read_results
    net.recover()
    net.heartbeat(2)
    net.stabilize()
    assert n2.commit == BlockId(2, 3)
    node, index, seen = net.read_results["r1"]
    assert node == 2 and index.height >= 3 and index == BlockId(2, 3)
    assert [d for _, _, d in seen] == [b"a"]


# ------------------------------------------------------------------------------ C.49
def test_duplicate_read_ids_get_one_answer_each_and_served_reads_are_freed():
    """docs/protocol.md C.49, A.10; etcd TestReadOnlyDuplicateRequest, TestRaftFreesReadOnlyMem."""
    net = Network(3)
    net.elect(1)
    net.read(1, "dup")
    net.read(1, "dup")
    net.read(1, "other")
    assert len(net.nodes[1].reads) == 3
    net.stabilize()
    assert [rid for rid, _ in net.reads[1]] == ["dup", "dup", "other"]
    assert net.nodes[1].reads == [] and net.nodes[1].deferred_reads == []
    net.heartbeat(1)
    assert len(net.reads[1]) == 3


# ------------------------------------------------------------------------------ C.50
def test_partitioned_stale_leader_never_serves_a_read():
    """docs/protocol.md C.50, A.10; thesis §6.4 (why reads need a heartbeat round)."""
    net = Network(3)
    net.elect(1)
    net.heartbeat(1)
    net.isolate(1)
    net.elect(2)
    net.propose(2, b"new")
    net.stabilize()
    net.read(1, "stale")
    for _ in range(5):
        net.tick(1)
        net.stabilize()
    assert net.nodes[1].role == Role.LEADER
    assert net.reads[1] == [] and "stale" not in net.read_results
    r = net.read(3, "follower")   # a follower of the new leader asks it (A.10)
    assert r.outcomes == [] and r.reads == []
    net.stabilize()
    node, index, seen = net.read_results["follower"]
    assert node == 3 and index == net.nodes[2].commit and ("c", 1, b"new") in seen
    net.recover()
    net.heartbeat(1)
    assert net.nodes[1].role == Role.FOLLOWER and net.nodes[1].term == 2
    assert net.statuses("read", "stale") == [Status.NOT_LEADER]
    assert net.reads[1] == []


def test_read_is_confirmed_only_by_heartbeats_sent_after_it_began():
    """docs/protocol.md C.47, A.10 (read seq = hb_seq + 1); thesis §6.4 step 3.

    Answers to a heartbeat that left before the read prove nothing about leadership at
    the time of the read; only the read's own round (or a later one) may confirm it."""
    net = Network(3)
    net.elect(1)
    net.heartbeat(1)
    net.tick(1)
    before = net.take()
    net.read(1, "r")
    after = net.take()
    assert {m.seq for m in before} == {2} and {m.seq for m in after} == {3}
    net.inject(*before)
    net.stabilize()
    assert net.reads[1] == []
    net.inject(*after)
    net.stabilize()
    assert net.reads[1] == [("r", BlockId(1, 1))]


def test_single_voter_read_waits_for_its_noop_then_needs_no_round_trip():
    """docs/protocol.md C.48, A.10 ("One voter confirms at once")."""
    from harness import new_core, tick_until_campaign
    from josefine.messages import Persisted, ReadIndex
    c = new_core(1, 1)
    tick_until_campaign(c)
    r = c.step(ReadIndex(read_id="x"))
    assert r.reads == [] and c.deferred_reads == [("x", None)]
    r = c.step(Persisted(head=c.head))
    assert r.reads == [("x", BlockId(1, 1))] and r.eager == []
    r = c.step(ReadIndex(read_id="y"))
    assert r.reads == [("y", BlockId(1, 1))]
