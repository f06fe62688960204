"""Leadership transfer: docs/protocol.md §C items 51–53 (etcd-io/raft raft_test.go; thesis §3.10)."""
import pytest

from harness import ET, Network, new_core, of_type, out
from josefine.messages import AppendResp, Heartbeat, Status, TimeoutNow, VoteReq
from josefine.raft.core import Role

pytestmark = pytest.mark.timeout(60)


def led(n: int = 3, **cfg) -> Network:
    net = Network(n, **cfg)
    net.elect(1)
    net.heartbeat(1)
    return net


# ------------------------------------------------------------------------------ C.51
@pytest.mark.parametrize("check_quorum", [False, True])
def test_transfer_to_up_to_date_follower_makes_it_leader_of_the_next_term(check_quorum):
    """docs/protocol.md C.51, A.11; etcd TestLeaderTransferToUpToDateNode,
    TestLeaderTransferWithCheckQuorum; thesis §3.10.

    The target is caught up, so TimeoutNow leaves at once; its VoteReq is marked as a
    transfer and passes the followers' lease."""
    net = led(check_quorum=check_quorum)
    r = net.transfer(1, 2)
    assert [type(m) for m in out(r)] == [TimeoutNow] and r.eager[0].dst == 2
    net.stabilize()
    reqs = [m for m in of_type(net.sent, VoteReq) if m.src == 2]
    assert reqs and all(m.transfer for m in reqs)
    assert (net.nodes[2].role, net.nodes[2].term) == (Role.LEADER, 2)
    assert (net.nodes[1].role, net.nodes[1].leader) == (Role.FOLLOWER, 2)
    assert net.statuses("transfer", 2) == [Status.OK]
    net.heartbeat(2)
    assert len(set(net.heads().values())) == 1


def test_transfer_requested_at_a_follower_is_refused_with_the_leader_hint():
    """docs/protocol.md C.51, A.11; etcd TestLeaderTransferToUpToDateNodeFromFollower."""
    net = led()
    r = net.transfer(3, 2)
    assert [(o.kind, o.key, o.status, o.leader_hint) for o in r.outcomes] == \
        [("transfer", 2, Status.NOT_LEADER, 1)]
    assert out(r) == [] and net.nodes[1].role == Role.LEADER


# ------------------------------------------------------------------------------ C.52
def test_transfer_to_slow_follower_catches_it_up_before_timeout_now():
    """docs/protocol.md C.52, A.11; etcd TestLeaderTransferToSlowFollower; thesis §3.10."""
    net = led()
    net.isolate(3)
    for k in range(4):
        net.propose(1, b"%d" % k)
    net.stabilize()
    net.recover()
    head = net.nodes[1].head
    r = net.transfer(1, 3)
    assert of_type(out(r), TimeoutNow) == []
    for _ in range(ET):
        net.stabilize()
        if net.nodes[3].role == Role.LEADER:
            break
        net.tick(1)
    assert (net.nodes[3].role, net.nodes[3].term) == (Role.LEADER, 2)
    tn = [k for k, m in enumerate(net.sent) if isinstance(m, TimeoutNow)]
    assert len(tn) == 1
    caught_up = [k for k, m in enumerate(net.sent) if isinstance(m, AppendResp)
                 and m.src == 3 and m.success and m.match == head]
    assert caught_up and caught_up[0] < tn[0]
    assert net.nodes[3].tree.is_ancestor(head, net.nodes[3].head)


# ------------------------------------------------------------------------------ C.53
def test_transfer_to_self_is_a_noop_and_to_a_stranger_is_rejected():
    """docs/protocol.md C.53, A.11; etcd TestLeaderTransferToSelf,
    TestLeaderTransferToNonExistingNode."""
    net = led()
    r = net.transfer(1, 1)
    assert [(o.key, o.status) for o in r.outcomes] == [(1, Status.OK)] and out(r) == []
    r = net.transfer(1, 9)
    assert [(o.key, o.status) for o in r.outcomes] == [(9, Status.REJECTED)] and out(r) == []
    n1 = net.nodes[1]
    assert n1.role == Role.LEADER and n1.transfer is None
    r = net.propose(1, b"still leading")
    assert r.outcomes == [] and len(r.blocks) == 1


def test_pending_transfer_refuses_proposals_and_aborts_after_an_election_timeout():
    """docs/protocol.md C.53, A.11; etcd TestLeaderTransferTimeout,
    TestLeaderTransferIgnoreProposal; thesis §3.10."""
    net = led()
    net.isolate(3)
    net.transfer(1, 3)
    r = net.propose(1, b"refused", seq=1)
    assert [(o.status, o.leader_hint) for o in r.outcomes] == [(Status.NOT_LEADER, 3)]
    assert r.blocks == []
    net.tick(1, ET - 1)
    assert net.nodes[1].transfer == 3 and net.statuses("transfer", 3) == []
    net.tick(1)
    assert net.nodes[1].transfer is None
    assert net.statuses("transfer", 3) == [Status.ABORTED]
    assert net.nodes[1].role == Role.LEADER
    r = net.propose(1, b"accepted", seq=2)
    assert r.outcomes == [] and len(r.blocks) == 1


def test_repeating_a_pending_transfer_does_not_extend_its_deadline():
    """docs/protocol.md C.53, A.11; etcd TestLeaderTransferSecondTransferToSameNode."""
    net = led()
    net.isolate(3)
    net.transfer(1, 3)
    net.tick(1, ET // 2)
    r = net.transfer(1, 3)
    assert r.outcomes == []
    net.tick(1, ET - ET // 2)
    assert net.nodes[1].transfer is None
    assert net.statuses("transfer", 3) == [Status.ABORTED]


def test_transfer_to_another_node_replaces_the_pending_one():
    """docs/protocol.md C.53, A.11; etcd TestLeaderTransferSecondTransferToAnotherNode."""
    net = led()
    net.isolate(3)
    net.transfer(1, 3)
    net.recover()
    net.isolate(3)          # keep 3 away; 2 is reachable
    r = net.transfer(1, 2)
    assert [(o.key, o.status) for o in r.outcomes] == [(3, Status.ABORTED)]
    assert [m.dst for m in of_type(r.eager, TimeoutNow)] == [2]
    net.stabilize()
    assert net.nodes[2].role == Role.LEADER and net.nodes[2].term == 2


def test_transfer_back_to_self_cancels_the_pending_transfer():
    """docs/protocol.md C.53, A.11; etcd TestLeaderTransferBack; thesis §3.10."""
    net = led()
    net.isolate(3)
    net.transfer(1, 3)
    net.transfer(1, 1)
    assert net.nodes[1].role == Role.LEADER
    r = net.propose(1, b"after transfer back")
    assert r.outcomes == [] and len(r.blocks) == 1
    assert net.nodes[1].transfer is None


def test_pending_transfer_ends_when_a_higher_term_vote_deposes_the_leader():
    """docs/protocol.md C.53, A.5, A.11; etcd TestLeaderTransferReceiveHigherTermVote."""
    net = led()
    net.isolate(3)
    net.transfer(1, 3)
    net.elect(2)
    n1 = net.nodes[1]
    assert (n1.role, n1.term, n1.transfer) == (Role.FOLLOWER, 2, None)
    assert len(net.statuses("transfer", 3)) == 1
    assert (net.nodes[3].role, net.nodes[3].term) == (Role.FOLLOWER, 1)
    assert not of_type(net.delivered, TimeoutNow)


def test_timeout_now_is_ignored_by_non_members_and_from_non_leaders():
    """docs/protocol.md C.53, A.11 (on_timeout_now); etcd TestTransferNonMember."""
    c = new_core(4, voters={1, 2, 3})
    c.step(Heartbeat(src=1, dst=4, term=1, commit=None, seq=1))
    assert c.leader == 1
    r = c.step(TimeoutNow(src=1, dst=4, term=1))
    assert (c.role, c.term) == (Role.FOLLOWER, 1) and r.hard_state is None
    assert of_type(out(r), VoteReq) == []
    c = new_core(2)
    c.step(Heartbeat(src=1, dst=2, term=1, commit=None, seq=1))
    r = c.step(TimeoutNow(src=3, dst=2, term=1))
    assert (c.role, c.term) == (Role.FOLLOWER, 1) and out(r) == []
    r = c.step(TimeoutNow(src=1, dst=2, term=1))
    assert (c.role, c.term) == (Role.CANDIDATE, 2)
    assert all(m.transfer for m in of_type(r.messages, VoteReq))
