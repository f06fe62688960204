"""Check-quorum, pre-vote and the follower lease: docs/protocol.md §C items 42–46 (etcd-io/raft
raft_test.go; thesis §6.2, §9.6; "Raft does not Guarantee Liveness in the face of Network
Faults")."""
import pytest

from harness import ET, Network, of_type
from josefine.messages import AppendResp, PreVoteReq, VoteReq
from josefine.raft.core import Role

pytestmark = pytest.mark.timeout(60)


def cq_net(pre_vote: bool = False) -> Network:
    net = Network(3, check_quorum=True, pre_vote=pre_vote)
    net.elect(1)
    net.heartbeat(1)
    return net


# ------------------------------------------------------------------------------ C.42
def test_leader_without_responsive_quorum_steps_down_within_two_check_periods():
    """docs/protocol.md C.42, A.9 (check_quorum); etcd TestLeaderStepdownWhenQuorumLost;
    thesis §6.2."""
    net = cq_net()
    net.isolate(1)
    net.tick(1, ET - 1)
    assert net.nodes[1].role == Role.LEADER
    net.tick(1, ET + 1)
    n1 = net.nodes[1]
    assert (n1.role, n1.term, n1.leader) == (Role.FOLLOWER, 1, None)


def test_leader_with_responsive_quorum_keeps_leading():
    """docs/protocol.md C.42, A.9; etcd TestLeaderStepdownWhenQuorumActive; thesis §6.2."""
    net = cq_net()
    net.isolate(3)                      # one follower lost: a quorum {1, 2} remains
    for _ in range(5 * ET):
        net.tick(1)
        net.stabilize()
    assert net.nodes[1].role == Role.LEADER and net.nodes[1].term == 1


# ------------------------------------------------------------------------------ C.43
def test_follower_in_lease_ignores_higher_term_vote_until_the_lease_expires():
    """docs/protocol.md C.43, A.5 (in_lease); etcd TestLeaderSupersedingWithCheckQuorum,
    TestLeaderElectionWithCheckQuorum; thesis §4.2.3, §6.2."""
    net = cq_net()
    mark = len(net.sent)
    net.campaign(3)
    net.stabilize()
    assert (net.nodes[3].role, net.nodes[3].term) == (Role.CANDIDATE, 2)
    assert (net.nodes[1].role, net.nodes[1].term) == (Role.LEADER, 1)
    assert (net.nodes[2].term, net.nodes[2].voted_for) == (1, 1)
    assert [m.src for m in net.sent[mark:]] == [3, 3], "a node in the lease answered"
    n2 = net.nodes[2]
    n2.rand_et = 2 * ET - 1            # let the lease lapse without n2 campaigning itself
    net.tick(2, ET)
    assert n2.role == Role.FOLLOWER
    net.elect(3)
    assert net.nodes[3].term == 3 and n2.voted_for == 3
    net.heartbeat(3)
    assert (net.nodes[1].role, net.nodes[1].term, net.nodes[1].leader) == \
        (Role.FOLLOWER, 3, 3)


# ------------------------------------------------------------------------------ C.44
def test_stuck_higher_term_candidate_deposes_leader_via_reply_and_election_completes():
    """docs/protocol.md C.44, A.5 (stale leader messages answered with the higher term);
    etcd TestFreeStuckCandidateWithCheckQuorum."""
    net = cq_net()
    net.isolate(3)
    net.campaign(3)
    net.campaign(3)
    net.stabilize()
    assert (net.nodes[3].role, net.nodes[3].term) == (Role.CANDIDATE, 3)
    assert net.nodes[1].role == Role.LEADER and net.nodes[1].term == 1
    net.recover()
    net.heartbeat(1)
    rej = [m for m in net.delivered if isinstance(m, AppendResp) and m.src == 3]
    assert rej and rej[-1].term == 3 and not rej[-1].success
    assert (net.nodes[1].role, net.nodes[1].term) == (Role.FOLLOWER, 3)
    net.elect(1)
    assert net.nodes[1].term == 4
    net.heartbeat(1)
    assert [net.nodes[i].term for i in net.ids] == [4, 4, 4]
    assert len(set(net.heads().values())) == 1


# ------------------------------------------------------------------------------ C.45
@pytest.mark.parametrize("pre_vote", [False, True])
def test_disruptive_follower_deposes_leader_only_without_prevote(pre_vote):
    """docs/protocol.md C.45; etcd TestDisruptiveFollower, TestDisruptiveFollowerPreVote;
    thesis §9.6.

    n3's timer fires because a heartbeat is late. Without pre-vote it bumps its term and
    the leader, answered with that term, is deposed; with pre-vote nobody's term moves and
    the same leader carries on."""
    net = cq_net(pre_vote=pre_vote)
    net.campaign(3)
    net.stabilize()
    n1, n3 = net.nodes[1], net.nodes[3]
    if pre_vote:
        assert (n3.role, n3.term) == (Role.PRECANDIDATE, 1)
    else:
        assert (n3.role, n3.term) == (Role.CANDIDATE, 2)
    net.heartbeat(1)
    if pre_vote:
        assert (n1.role, n1.term) == (Role.LEADER, 1)
        assert (n3.role, n3.term, n3.leader) == (Role.FOLLOWER, 1, 1)
        assert [net.nodes[i].term for i in net.ids] == [1, 1, 1]
    else:
        assert (n1.role, n1.term) == (Role.FOLLOWER, 2)


# ------------------------------------------------------------------------------ C.46
def test_node_with_smaller_term_but_newer_chain_completes_election_with_prevote():
    """docs/protocol.md C.46; etcd TestNodeWithSmallerTermCanCompleteElection; thesis §9.6."""
    net = Network(3, pre_vote=True)
    net.elect(1)
    net.heartbeat(1)
    net.isolate(3)
    net.elect(2)
    net.propose(2, b"x")
    net.stabilize()
    assert net.nodes[1].head == net.nodes[2].head and net.nodes[2].term == 2
    net.recover()
    net.isolate(2)
    net.campaign(3)
    net.stabilize()
    assert net.nodes[3].role == Role.FOLLOWER and net.nodes[3].term <= 2
    net.elect(1)
    assert net.nodes[1].term == 3
    net.heartbeat(1)
    assert net.nodes[3].head == net.nodes[1].head


def test_split_prevote_round_still_ends_with_a_leader():
    """docs/protocol.md C.46; etcd TestPreVoteWithSplitVote; thesis §9.6."""
    net = Network(3, pre_vote=True)
    net.elect(1)
    net.heartbeat(1)
    net.isolate(1)
    net.campaign(2)
    net.campaign(3)
    net.stabilize()
    assert [(net.nodes[i].role, net.nodes[i].term) for i in (2, 3)] == \
        [(Role.CANDIDATE, 2)] * 2
    net.elect(2)
    assert net.nodes[2].term == 3 and net.nodes[3].leader == 2
    net.heartbeat(2)
    assert net.nodes[3].head == net.nodes[2].head


def test_prevote_with_check_quorum_elects_once_the_lease_has_lapsed():
    """docs/protocol.md C.46, A.5; etcd TestPreVoteWithCheckQuorum; thesis §9.6."""
    net = cq_net(pre_vote=True)
    net.isolate(1)
    net.campaign(2)
    net.stabilize()
    assert net.nodes[2].role == Role.PRECANDIDATE   # n3's lease from n1 still holds
    assert not [m for m in net.delivered if m.src == 3 and m.dst == 2]
    net.nodes[3].rand_et = 2 * ET - 1
    net.tick(3, ET)
    net.elect(2)
    assert net.nodes[2].term == 2 and net.nodes[3].leader == 2
    assert {m.term for m in of_type(net.sent, PreVoteReq) if m.src == 2} == {2}
    assert [m.term for m in of_type(net.sent, VoteReq)][-2:] == [2, 2]
