"""Membership changes in the pure core (docs/protocol.md A.12; scenarios C.58–C.63 after
etcd's raft_test.go and the confchange testdata): one server at a time, a configuration
effective once its block is on a node's path, learners that receive blocks but never vote
or count, a leader that removes itself stepping down once that commits.

Nodes 4 and 5 of these networks start outside the configuration (bootstrap voters 1-3):
they know the cluster, not themselves, so they never campaign until a CONFIG block makes
them voters."""
from __future__ import annotations

from harness import Network

from josefine.messages import AppendResp, ChangeConfig, Heartbeat
from josefine.raft.core import Role
from josefine.raft.membership import (ChangeOp, Config, ConfigChange, ConfigChangeError,
                                      MemberRole, decode_config_block, encode_config_block)
from josefine.raft.ready import OutcomeKind
from josefine.messages import Status

import pytest

ADDR = {i: f"tcp://10.0.0.{i}:7000" for i in range(1, 8)}


def _net(n: int = 4, voters: tuple[int, ...] = (1, 2, 3), **kw) -> Network:
    return Network(n, voters=voters, overrides={i: {"initial": Config.of(voters, ADDR)}
                                                for i in range(1, n + 1)}, **kw)


def _change(net: Network, leader: int, op: ChangeOp, node: int) -> None:
    net.step(leader, ChangeConfig(op=int(op), node=node, address=ADDR[node]))


def _answers(net: Network, leader: int, node: int) -> list:
    return [(o.status, o.detail) for o in net.outcomes[leader]
            if o.kind == OutcomeKind.CONFIG and o.key[1] == node]


def _write(net: Network, leader: int, n: int = 1) -> None:
    for k in range(n):
        net.propose(leader, b"w%d" % k)
        net.stabilize()


def test_config_block_round_trips_and_refuses_bad_changes():
    c = Config.of([1, 2, 3], ADDR)
    c4 = c.apply(ConfigChange(ChangeOp.ADD_LEARNER, 4, ADDR[4]))
    assert c4.learners == {4} and c4.voters == {1, 2, 3}
    payload = encode_config_block(ConfigChange(ChangeOp.ADD_LEARNER, 4, ADDR[4]), c4)
    change, back = decode_config_block(payload)
    assert back == c4 and change.op == ChangeOp.ADD_LEARNER and change.node == 4
    with pytest.raises(ValueError):
        decode_config_block(payload + b"x")
    for bad, why in [(ConfigChange(ChangeOp.ADD_LEARNER, 2, "tcp://x:1"), "already a member"),
                     (ConfigChange(ChangeOp.ADD_LEARNER, 9, ADDR[1]), "already node 1's"),
                     (ConfigChange(ChangeOp.PROMOTE, 2), "already a voter"),
                     (ConfigChange(ChangeOp.PROMOTE, 9), "not a member"),
                     (ConfigChange(ChangeOp.REMOVE, 9), "not a member")]:
        with pytest.raises(ConfigChangeError, match=why):
            c.apply(bad)
    with pytest.raises(ConfigChangeError, match="last voter"):
        Config.of([1], ADDR).apply(ConfigChange(ChangeOp.REMOVE, 1))


def test_a_learner_receives_blocks_but_never_votes_or_counts():
    """C.58 [AddLearner]."""
    net = _net()
    net.elect(1)
    _write(net, 1)
    _change(net, 1, ChangeOp.ADD_LEARNER, 4)
    lead = net.nodes[1]
    assert lead.config.learners == {4}, "effective at once on the leader"
    net.stabilize()
    net.heartbeat(1)
    assert (Status.OK, "") in _answers(net, 1, 4)
    learner = net.nodes[4]
    assert learner.head == lead.head and learner.config.learners == {4}
    # learners never count: with 2 and 3 cut off nothing commits, although 4 acks
    net.isolate(2)
    net.isolate(3)
    before = lead.commit
    net.propose(1, b"needs-a-voter")
    net.stabilize()
    assert lead.commit == before and net.nodes[4].head == lead.head
    # and never campaign
    net.recover()
    net.isolate(4)
    net.tick(4, 10 * net.cfgs[4].election_ticks)
    assert net.nodes[4].role == Role.FOLLOWER and net.nodes[4].term == lead.term
    net.recover()
    net.heartbeat(1)


def test_promoting_a_caught_up_learner_makes_it_count():
    """C.58 [AddNode]: 4 voters, quorum 3."""
    net = _net()
    net.elect(1)
    _change(net, 1, ChangeOp.ADD_LEARNER, 4)
    net.stabilize()
    net.heartbeat(1)
    _change(net, 1, ChangeOp.PROMOTE, 4)
    net.stabilize()
    net.heartbeat(1)
    lead = net.nodes[1]
    assert lead.config.voters == {1, 2, 3, 4} and lead.quorum == 3
    assert all(net.nodes[i].config.voters == {1, 2, 3, 4} for i in net.ids)
    # 1 + 4 + one of 2/3 commit; 1 + 4 alone do not
    net.isolate(3)
    net.propose(1, b"three-of-four")
    net.stabilize()
    assert lead.commit == lead.head
    net.isolate(2)
    before = lead.commit
    net.propose(1, b"two-of-four")
    net.stabilize()
    assert lead.commit == before
    net.recover()
    net.heartbeat(1)


def test_promoting_a_lagging_learner_is_refused():
    net = _net(max_batch_blocks=4)
    net.elect(1)
    _change(net, 1, ChangeOp.ADD_LEARNER, 4)
    net.stabilize()
    net.isolate(4)
    _write(net, 1, 10)
    _change(net, 1, ChangeOp.PROMOTE, 4)
    (status, why), = [a for a in _answers(net, 1, 4) if a[0] != Status.OK]
    assert status == Status.REJECTED and "not caught up" in why
    assert net.nodes[1].config.learners == {4}
    net.recover()
    net.heartbeat(1)


def test_removing_a_voter_shrinks_the_quorum():
    """C.58 [RemoveNode]."""
    net = _net(3)
    net.elect(1)
    _change(net, 1, ChangeOp.REMOVE, 3)
    net.stabilize()
    net.heartbeat(1)
    lead = net.nodes[1]
    assert lead.config.voters == {1, 2} and 3 not in lead.prog
    assert (Status.OK, "") in _answers(net, 1, 3)
    net.crash(3)
    net.propose(1, b"two-voters")
    net.stabilize()
    assert lead.commit == lead.head


def test_a_second_change_while_one_is_uncommitted_is_refused():
    """C.59 [StepConfig, StepIgnoreConfig]."""
    net = _net()
    net.elect(1)
    net.isolate(2)
    net.isolate(3)
    _change(net, 1, ChangeOp.ADD_LEARNER, 4)   # cannot commit: 2 and 3 are cut off
    _change(net, 1, ChangeOp.REMOVE, 3)
    (status, why), = _answers(net, 1, 3)
    assert status == Status.REJECTED and "not committed yet" in why
    assert net.nodes[1].config.voters == {1, 2, 3}
    net.recover()
    net.heartbeat(1)


def test_a_new_leader_holds_an_uncommitted_config_block_in_force_and_waits():
    """C.59 [NewLeaderPendingConfig]: the block is on the new leader's path, so it is in
    force there; no new change is taken until this leader has committed in its term,
    which (chained) commits the CONFIG block beneath too."""
    net = _net()
    net.elect(1)
    _write(net, 1)
    net.ignore(AppendResp)          # nothing commits from here
    net.ignore(Heartbeat)
    _change(net, 1, ChangeOp.ADD_LEARNER, 4)
    net.stabilize()
    assert net.nodes[2].config.learners == {4}
    net.crash(1)
    net.elect(2)
    lead = net.nodes[2]
    assert lead.config.learners == {4} and lead.commit.term != lead.term
    _change(net, 2, ChangeOp.REMOVE, 3)
    assert [s for s, _ in _answers(net, 2, 3)] == [Status.REJECTED]
    net.recover()
    for _ in range(4):   # the lost appends are noticed after two rounds (progress.py)
        net.heartbeat(2)
    assert lead.commit.term == lead.term
    _change(net, 2, ChangeOp.REMOVE, 1)      # the crashed old leader
    net.stabilize()
    net.heartbeat(2)
    assert (Status.OK, "") in _answers(net, 2, 1) and lead.config.voters == {2, 3}


def test_two_voter_cluster_removing_a_node_commits_under_the_new_quorum():
    """C.60 [CommitAfterRemoveNode]."""
    net = _net(2, voters=(1, 2))
    net.elect(1)
    _write(net, 1)
    net.isolate(2)
    _change(net, 1, ChangeOp.REMOVE, 2)
    lead = net.nodes[1]
    assert lead.config.voters == {1} and lead.quorum == 1
    net.stabilize()
    assert lead.commit == lead.head, "the leader alone is the quorum of the new config"
    assert (Status.OK, "") in _answers(net, 1, 2)


def test_a_change_before_the_new_leaders_first_commit_is_refused():
    """C.61 (the single-server change bug from the raft-dev list)."""
    net = _net()
    net.ignore(AppendResp)
    net.campaign(1)
    net.stabilize()
    lead = net.nodes[1]
    assert lead.role == Role.LEADER and lead.commit.term != lead.term
    _change(net, 1, ChangeOp.ADD_LEARNER, 4)
    (status, why), = _answers(net, 1, 4)
    assert status == Status.REJECTED and "own term" in why
    net.recover()
    net.heartbeat(1)


def test_the_follower_config_follows_its_path_back_and_forth():
    """C.62 with an election the old leader loses: the uncommitted CONFIG block dies."""
    net = _net()
    net.elect(1)
    _write(net, 1)
    net.isolate(1)
    _change(net, 1, ChangeOp.REMOVE, 3)          # only node 1 has it
    assert net.nodes[1].config.voters == {1, 2}
    net.elect(2)
    _write(net, 2, 2)
    net.recover()
    net.heartbeat(2)
    old = net.nodes[1]
    assert old.role == Role.FOLLOWER and old.config.voters == {1, 2, 3}, \
        "its head left the dead branch and the configuration went with it"
    assert any(o.kind == OutcomeKind.CONFIG and o.status == Status.UNKNOWN
               for o in net.outcomes[1])


def test_a_leader_that_removes_itself_steps_down_once_it_commits():
    """C.63 [confchange_v1_remove_leader(_stepdown)]."""
    net = _net(3, check_quorum=True)
    net.elect(1)
    _write(net, 1)
    _change(net, 1, ChangeOp.REMOVE, 1)
    lead = net.nodes[1]
    assert lead.role == Role.LEADER and 1 not in lead.config.voters
    net.stabilize()
    net.heartbeat(1)
    assert lead.role == Role.FOLLOWER, "stepped down once the change committed"
    assert (Status.OK, "") in _answers(net, 1, 1)
    net.tick(1, 10 * net.cfgs[1].election_ticks)
    assert lead.role == Role.FOLLOWER, "a removed node does not campaign"
    for _ in range(20):   # 2 and 3 elect one of them (1 no longer takes part)
        for i in (2, 3):
            net.tick(i, net.cfgs[i].election_ticks)
            net.stabilize()
        if net.leader() in (2, 3):
            break
    assert net.leader() in (2, 3) and lead.role == Role.FOLLOWER
    _write(net, net.leader())
    net.heartbeat(net.leader())
    assert net.nodes[2].commit == net.nodes[3].commit


def test_a_snapshot_carries_the_configuration():
    """A node that installs a snapshot taken after a CONFIG block learns the configuration
    from the snapshot, not from blocks it never sees."""
    net = _net(4, keep_previous_snapshot=False)
    net.elect(1)
    net.isolate(3)
    _change(net, 1, ChangeOp.ADD_LEARNER, 4)
    net.stabilize()
    net.heartbeat(1)
    _write(net, 1, 3)
    for i in (1, 2, 4):
        net.snapshot(i)
    net.recover()
    for _ in range(4):
        net.heartbeat(1)
    f = net.nodes[3]
    assert f.tree.root.id.height > 1 and f.config.learners == {4}
    assert f.config.member(4).role == MemberRole.LEARNER and \
        f.config.member(4).address == ADDR[4]


def test_a_leader_whose_own_removal_is_uncommitted_still_stands_for_election():
    """Found by the simulation: the old leader appended its own removal, lost leadership
    before it committed, and holds the newest chain, so it refuses the others' votes. Its
    committed configuration still has it as a voter, so it campaigns, wins with the votes
    of its new configuration, commits the removal, and steps down."""
    net = _net(3, check_quorum=True)
    net.elect(1)
    _change(net, 1, ChangeOp.REMOVE, 2)
    net.stabilize()
    net.heartbeat(1)
    assert net.nodes[1].config.voters == {1, 3}
    net.isolate(1)
    _write(net, 1)                   # 1's head moves ahead of 3's
    _change(net, 1, ChangeOp.REMOVE, 1)
    lead = net.nodes[1]
    assert lead.config.voters == {3} and lead.commit.height < lead.head.height
    net.tick(1, 2 * net.cfgs[1].election_ticks)   # check-quorum: it steps down
    assert lead.role == Role.FOLLOWER
    net.recover()
    for _ in range(20):
        for i in (1, 3):
            net.tick(i, net.cfgs[i].election_ticks)
            net.stabilize()
        if net.nodes[3].role == Role.LEADER and net.nodes[3].commit.term == net.nodes[3].term:
            break
    assert net.nodes[3].role == Role.LEADER, "3 leads alone once 1's removal committed"
    assert net.nodes[3].config.voters == {3} and lead.role == Role.FOLLOWER
