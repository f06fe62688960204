"""Clients served by any node: reads at followers (docs/protocol.md A.10, "Reads at
followers") and proposals forwarded to the leader (A.8), on the pure cores."""
from __future__ import annotations

import pytest
from harness import Network, of_type

from josefine.chain.block import Command, encode_commands
from josefine.messages import (AppendBlocks, ForwardPropose, ForwardProposeResp, Heartbeat,
                               ReadIndexReq, ReadIndexResp, Status)
from josefine.raft.core import Role

pytestmark = pytest.mark.timeout(60)


def _datas(seen: list) -> list[bytes]:
    return [d for _, _, d in seen]


# ------------------------------------------------------------------------ reads at followers
def test_follower_read_is_served_locally_at_the_leaders_confirmed_index():
    net = Network(3)
    net.elect(1)
    net.propose(1, b"a")
    net.stabilize()
    net.heartbeat(1)
    r = net.read(2, "r")
    assert r.reads == [] and r.outcomes == []
    assert [(m.dst, m.term) for m in of_type(r.messages, ReadIndexReq)] == [(1, 1)]
    net.deliver(lambda m: type(m) is ReadIndexReq)
    # the leader needs a heartbeat round of its own before it answers
    assert of_type(net.queue, ReadIndexResp) == []
    net.stabilize()
    node, index, seen = net.read_results["r"]
    assert node == 2 and index == net.nodes[1].commit and _datas(seen) == [b"a"]
    assert net.reads[1] == []   # the leader served nothing itself
    assert net.nodes[2].follower_reads == 1 and net.nodes[2].fwd_reads == {}


def test_a_follower_behind_the_index_waits_until_it_has_applied_that_far():
    net = Network(3)
    net.elect(1)
    net.heartbeat(1)
    # node 3 stops hearing replication: it will be behind the index it is given
    net.filters.append(lambda m: m.dst == 3 and type(m) in (AppendBlocks, Heartbeat))
    net.propose(1, b"w")
    net.stabilize()
    net.heartbeat(1)
    assert net.nodes[1].commit.height == 2 and net.nodes[3].applied.height == 1
    net.read(3, "r")
    net.stabilize()
    fr = next(iter(net.nodes[3].fwd_reads.values()))
    assert fr.index == net.nodes[1].commit      # the answer arrived ...
    assert "r" not in net.read_results          # ... but 3 has not applied that far
    net.recover()
    net.heartbeat(1)
    node, index, seen = net.read_results["r"]
    assert node == 3 and _datas(seen) == [b"w"]
    assert net.nodes[3].applied.height >= index.height


def test_a_read_at_a_follower_of_a_deposed_partitioned_leader_is_never_served():
    """Node 4 still follows the old leader 1 across a partition; the new leader 2 commits
    a write. 1 cannot collect a quorum for 4's read, so no stale answer is ever given;
    when the partition heals 1 steps down and 4's read is refused, then a retry at 4 sees
    the write."""
    net = Network(5)
    net.elect(1)
    net.heartbeat(1)
    net.partition({1, 4}, {2, 3, 5})
    net.elect(2)
    net.propose(2, b"new")
    net.stabilize()
    net.heartbeat(2)
    assert net.nodes[4].leader == 1 and net.nodes[4].term == 1
    net.read(4, "stale")
    for _ in range(5):
        net.tick(1)
        net.stabilize()
    assert net.nodes[1].role == Role.LEADER and "stale" not in net.read_results
    assert net.nodes[1].reads and not net.nodes[1].reads[0].confirmed
    net.recover()
    net.heartbeat(1)    # its heartbeats meet term 2: it steps down, refusing the read
    net.heartbeat(2)
    assert net.nodes[1].role == Role.FOLLOWER
    assert net.statuses("read", "stale") == [Status.NOT_LEADER]
    assert "stale" not in net.read_results
    net.read(4, "retry")
    net.stabilize()
    node, _, seen = net.read_results["retry"]
    assert node == 4 and b"new" in _datas(seen)


def test_a_leader_change_before_the_answer_refuses_the_read_and_the_late_answer_is_ignored():
    net = Network(3)
    net.elect(1)
    net.heartbeat(1)
    net.read(3, "r")
    net.deliver(lambda m: type(m) is ReadIndexReq)
    net.deliver(lambda m: type(m) is Heartbeat)
    net.deliver(lambda m: type(m).__name__ == "HeartbeatResp")
    late = net.take(lambda m: type(m) is ReadIndexResp)
    assert [m.index for m in late] == [net.nodes[1].commit]
    net.elect(2)      # node 3 moves to term 2 before 1's answer reaches it
    assert net.statuses("read", "r") == [Status.NOT_LEADER]
    assert net.nodes[3].fwd_reads == {}
    net.inject(*late)
    net.stabilize()
    assert "r" not in net.read_results and net.statuses("read", "r") == [Status.NOT_LEADER]


def test_a_read_holding_its_index_survives_a_leader_change_and_is_served():
    """Once the index is known it stays valid: it is a committed block confirmed after
    the read arrived; only the follower's own apply is awaited."""
    net = Network(3)
    net.elect(1)
    net.heartbeat(1)
    net.filters.append(lambda m: m.dst == 3 and type(m) in (AppendBlocks, Heartbeat))
    net.propose(1, b"w")
    net.stabilize()
    net.read(3, "r")
    net.stabilize()
    assert next(iter(net.nodes[3].fwd_reads.values())).index is not None
    net.recover()
    net.elect(2)
    net.stabilize()
    node, index, seen = net.read_results["r"]
    assert node == 3 and index.term == 1 and _datas(seen) == [b"w"]
    assert net.statuses("read", "r") == []


def test_a_new_leader_answers_a_followers_read_only_after_its_own_noop_commits():
    net = Network(3)
    net.elect(1)
    net.propose(1, b"a")
    net.stabilize()
    net.heartbeat(1)
    net.ignore(AppendBlocks)
    net.elect(2)
    net.heartbeat(2)
    assert net.nodes[2].commit.term == 1 and net.nodes[3].leader == 2
    net.read(3, "r")
    net.stabilize()
    assert net.nodes[2].deferred_reads == [(next(iter(net.nodes[3].fwd_reads)), 3)]
    assert of_type(net.sent, ReadIndexResp) == []
    net.recover()
    net.tick(2, 3)
    net.stabilize()
    assert net.nodes[2].commit.term == 2
    net.heartbeat(2)   # carries the commit to 3, which then serves the read
    node, index, _ = net.read_results["r"]
    assert node == 3 and index.term == 2


def test_duplicated_and_reordered_answers_serve_each_read_once():
    net = Network(3)
    net.elect(1)
    net.heartbeat(1)
    net.read(2, "r1")
    net.read(2, "r2")
    reqs = net.take(lambda m: type(m) is ReadIndexReq)
    net.inject(*reqs, *reqs)               # each request arrives twice
    net.deliver(lambda m: type(m) is ReadIndexReq)
    while not len(of_type(net.queue, ReadIndexResp)) == 4:
        net.deliver_one()
    answers = net.take(lambda m: type(m) is ReadIndexResp)
    net.inject(*reversed(answers), *answers)
    net.stabilize()
    assert sorted(rid for rid, _ in net.reads[2]) == ["r1", "r2"]
    assert net.nodes[2].follower_reads == 2 and net.statuses("read", "r1") == []


def test_an_answer_to_a_request_of_an_earlier_life_is_not_taken_for_a_new_one():
    net = Network(3)
    net.elect(1)
    net.heartbeat(1)
    net.read(2, "old")
    net.deliver(lambda m: type(m) is ReadIndexReq)
    net.crash(2)
    net.stabilize()
    stale = of_type(net.lost, ReadIndexResp)   # the answer found 2 down: hold it back
    assert [m.dst for m in stale] == [2]
    net.restart(2)
    net.heartbeat(1)
    net.read(2, "new")
    new_req = net.take(lambda m: type(m) is ReadIndexReq)
    assert [m.read_id for m in new_req] != [m.read_id for m in stale]
    net.inject(*stale)
    net.stabilize()
    assert "new" not in net.read_results
    net.inject(*new_req)
    net.stabilize()
    assert net.read_results["new"][0] == 2


def test_an_unanswered_follower_read_times_out_as_not_leader():
    net = Network(3, forward_timeout_ticks=5)
    net.elect(1)
    net.heartbeat(1)
    net.filters.append(lambda m: type(m) is ReadIndexReq)
    net.read(3, "r")
    net.stabilize()
    net.tick(3, 4)
    assert net.statuses("read", "r") == []
    net.tick(3, 1)
    assert net.statuses("read", "r") == [Status.NOT_LEADER]
    assert net.nodes[3].fwd_reads == {}


def test_a_node_that_is_not_leader_refuses_a_read_index_request():
    net = Network(3)
    net.elect(1)
    net.heartbeat(1)
    r = net.step(3, ReadIndexReq(src=2, dst=3, term=1, read_id=9))
    assert [(m.dst, m.read_id, m.index) for m in of_type(r.messages, ReadIndexResp)] == \
        [(2, 9, None)]


def test_follower_reads_off_keeps_the_old_refusal():
    net = Network(3, follower_reads=False)
    net.elect(1)
    net.heartbeat(1)
    r = net.read(3, "r")
    assert [(o.status, o.leader_hint) for o in r.outcomes] == [(Status.NOT_LEADER, 1)]


# ------------------------------------------------------------------------ forwarded writes
def test_a_follower_forwards_a_proposal_unchanged_and_forgets_it_once_applied():
    net = Network(3)
    net.elect(1)
    net.heartbeat(1)
    r = net.propose(2, b"via 2", client="cl", seq=7)
    assert r.outcomes == [] and r.blocks == []
    (fwd,) = of_type(r.messages, ForwardPropose)
    assert fwd.dst == 1 and fwd.term == 1
    assert net.nodes[2].fwd_keys == {("cl", 7): fwd.fwd_id}
    net.stabilize()
    net.heartbeat(1)
    for i in net.ids:
        assert net.sm[i] == [("cl", 7, b"via 2")]
    assert net.nodes[2].fwd_keys == {} and net.nodes[2].forwarded_writes == 1
    net.elect(3)   # a term change answers only what is still outstanding: nothing here
    assert net.outcomes[2] == [] and net.nodes[2].fwd_batches == {}


def test_the_leaders_refusal_is_relayed_and_a_repeat_answer_is_harmless():
    net = Network(3, overrides={1: {"max_uncommitted_bytes": 40}})
    net.elect(1)
    net.heartbeat(1)
    net.ignore(AppendBlocks)   # nothing commits: the second command overflows the budget
    net.propose(2, b"x" * 10, client="a", seq=1)
    net.stabilize()
    net.propose(2, b"y" * 30, client="b", seq=1)
    net.deliver(lambda m: type(m) is ForwardPropose)
    (resp,) = net.take(lambda m: type(m) is ForwardProposeResp)
    assert resp.refused == (("b", 1),) and resp.status == Status.BUSY
    net.inject(resp, resp)
    net.deliver_one()
    net.deliver_one()
    assert [(o.key, o.status, o.leader_hint) for o in net.outcomes[2]] == [(("b", 1), Status.BUSY, 1)]


def test_a_forward_to_a_node_that_no_longer_leads_is_refused_not_leader():
    net = Network(3)
    net.elect(1)
    net.heartbeat(1)
    net.step(1, __import__("josefine.messages", fromlist=["TransferLeadership"])
             .TransferLeadership(target=3))
    net.take(lambda m: True)   # the transfer does not go ahead
    net.propose(2, b"z", client="c", seq=3)
    net.deliver(lambda m: type(m) is ForwardPropose)
    net.stabilize()
    assert [(o.key, o.status, o.leader_hint) for o in net.outcomes[2]] == \
        [(("c", 3), Status.NOT_LEADER, 3)]


def test_a_term_change_leaves_forwarded_writes_unknown_and_a_timeout_does_too():
    net = Network(3, forward_timeout_ticks=5)
    net.elect(1)
    net.heartbeat(1)
    net.propose(3, b"lost", client="c", seq=1)
    held = net.take(lambda m: type(m) is ForwardPropose)
    net.elect(2)
    assert [(o.key, o.status) for o in net.outcomes[3]] == [(("c", 1), Status.UNKNOWN)]
    net.inject(*held)          # term 1: dropped by the new leader's intake
    net.stabilize()
    assert all(net.sm[i] == [] for i in net.ids)
    net.filters.append(lambda m: type(m) is ForwardPropose)
    net.propose(3, b"again", client="c", seq=2)
    net.stabilize()
    net.tick(3, 5)
    assert [(o.key, o.status) for o in net.outcomes[3]][1:] == [(("c", 2), Status.UNKNOWN)]


def test_a_retried_forward_carries_the_same_client_and_seq():
    """Exactly-once rests on the leader's sessions seeing the client's own (id, seq):
    a retry through another follower must be byte-for-byte the same command."""
    net = Network(3)
    net.elect(1)
    net.heartbeat(1)
    r2 = net.propose(2, b"once", client="k", seq=4)
    r3 = net.propose(3, b"once", client="k", seq=4)
    (f2,) = of_type(r2.messages, ForwardPropose)
    (f3,) = of_type(r3.messages, ForwardPropose)
    assert f2.commands == f3.commands == encode_commands([Command("k", 4, b"once")])


def test_a_follower_holding_the_index_block_takes_it_as_its_commit_and_serves_at_once():
    """The answer's index is committed; a follower that holds that block on its path
    need not wait for the leader's next heartbeat to learn so."""
    net = Network(3)
    net.elect(1)
    net.heartbeat(1)
    net.propose(1, b"w")
    net.deliver(lambda m: type(m) is AppendBlocks)       # 2 and 3 store the block ...
    net.deliver(lambda m: type(m).__name__ == "AppendResp")
    assert net.nodes[1].commit.height == 2
    net.take(lambda m: type(m) is AppendBlocks)        # ... but never hear it committed
    assert net.nodes[3].commit.height == 1 and net.nodes[3].head.height == 2
    net.read(3, "r")
    net.filters.append(lambda m: type(m) is Heartbeat and m.dst == 3)  # only the answer
    net.stabilize()
    node, index, seen = net.read_results["r"]
    assert node == 3 and index.height == 2 and _datas(seen) == [b"w"]
    assert net.nodes[3].commit == index


def test_a_leader_tells_a_forwarding_follower_of_the_commit_at_once():
    """A forwarded write is answered by the follower when it applies it: the leader sends
    that follower its commit as soon as the block commits, not at the next heartbeat."""
    net = Network(3)
    net.elect(1)
    net.heartbeat(1)
    net.propose(2, b"fwd", client="c", seq=1)
    net.stabilize()       # no tick: no periodic heartbeat anywhere
    assert net.sm[2] == [("c", 1, b"fwd")]
    assert net.nodes[2].commit == net.nodes[1].commit
    assert net.sm[3] == []   # node 3 forwarded nothing: it learns at the next heartbeat


def test_a_read_that_asks_for_the_leader_is_refused_by_a_follower_with_a_hint():
    from josefine.messages import ReadIndex
    net = Network(3)
    net.elect(1)
    net.heartbeat(1)
    r = net.step(3, ReadIndex(read_id="r", at_follower=False))
    assert [(o.status, o.leader_hint) for o in r.outcomes] == [(Status.NOT_LEADER, 1)]
    assert of_type(r.messages, ReadIndexReq) == []


def test_a_forwarding_follower_outside_the_quorum_is_told_the_commit_once_it_acks():
    net = Network(3)
    net.elect(1)
    net.heartbeat(1)
    net.propose(2, b"fwd", client="c", seq=1)
    net.deliver(lambda m: type(m) is ForwardPropose)
    held = net.take(lambda m: type(m) is AppendBlocks and m.dst == 2)
    net.stabilize()            # committed with node 3's ack; 2 has not even got the block
    assert net.nodes[1].commit.height == 2 and net.sm[2] == []
    net.inject(*held)
    net.stabilize()            # 2 acks; the leader answers that ack with the commit
    assert net.sm[2] == [("c", 1, b"fwd")]


def test_a_duplicate_forward_is_never_refused_after_its_first_copy_was_appended():
    """The first copy is appended; the leader then starts a transfer (it would refuse a
    new forward NOT_LEADER). The duplicate must not produce that refusal: the client
    would take it for "not applied" while the first copy commits."""
    from josefine.messages import TransferLeadership
    net = Network(3)
    net.elect(1)
    net.heartbeat(1)
    r = net.propose(2, b"once", client="c", seq=1)
    (fwd,) = of_type(r.messages, ForwardPropose)
    net.deliver(lambda m: type(m) is ForwardPropose)
    assert net.nodes[1].pending            # appended
    net.step(1, TransferLeadership(target=3))
    r = net.step(1, fwd)                   # the network delivers a second copy
    assert of_type(r.messages + r.eager, ForwardProposeResp) == []
    net.stabilize()
    assert net.statuses("propose", ("c", 1)) in ([], [Status.UNKNOWN])


def test_a_non_leader_refuses_not_leader_only_if_it_cannot_have_led_this_term():
    net = Network(3)
    net.elect(1)
    net.heartbeat(1)
    fwd = ForwardPropose(src=2, dst=3, term=1, fwd_id=1,
                         commands=encode_commands([Command("c", 1, b"x")]))
    r = net.step(3, fwd)     # 3 voted for 1 in term 1: it never led term 1
    assert [(m.status, m.leader_hint) for m in of_type(r.messages, ForwardProposeResp)] == \
        [(Status.NOT_LEADER, 1)]
    net.crash(1)
    net.restart(1)           # 1 led term 1, then lost its memory of what it appended
    r = net.step(1, ForwardPropose(src=2, dst=1, term=1, fwd_id=1,
                                   commands=encode_commands([Command("c", 1, b"x")])))
    assert [m.status for m in of_type(r.messages, ForwardProposeResp)] == [Status.UNKNOWN]
