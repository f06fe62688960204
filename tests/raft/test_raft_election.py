"""Elections and terms: docs/protocol.md §C items 1–20 (etcd-io/raft raft_paper_test.go, raft_test.go)."""
import pytest

from harness import (ET, G, Disk, Network, chain, make_leader, new_core, of_type, out,
                     tick_until_campaign)
from josefine.messages import (AppendBlocks, AppendResp, Heartbeat, HeartbeatResp, PreVoteReq,
                               PreVoteResp, Propose, Persisted, Tick, VoteReq, VoteResp)
from josefine.chain.block import Command
from josefine.raft.core import Role
from josefine.raft.ready import HardState
from josefine.types import GENESIS_ID, BlockId

pytestmark = pytest.mark.timeout(60)


def core_in_role(role: str, term: int = 1):
    """A node of a 3-node cluster in `role` at `term`."""
    if role == "follower":
        return new_core(1, disk=Disk(term=term))
    if role == "precandidate":
        c = new_core(1, disk=Disk(term=term), pre_vote=True)
        tick_until_campaign(c)
        assert c.role == Role.PRECANDIDATE and c.term == term
        return c
    if role == "candidate":
        c = new_core(1, disk=Disk(term=term - 1))
        tick_until_campaign(c)
        assert c.role == Role.CANDIDATE and c.term == term
        return c
    if role == "leader":
        c = new_core(1, disk=Disk(term=term - 1))
        make_leader(c)
        assert c.term == term
        return c
    raise ValueError(role)


ROLES = ["follower", "precandidate", "candidate", "leader"]


# ------------------------------------------------------------------------------ C.1
@pytest.mark.parametrize("role", ROLES)
@pytest.mark.parametrize("kind", ["append", "heartbeat", "append_resp", "heartbeat_resp",
                                  "vote_resp"])
def test_higher_term_message_makes_any_role_a_follower_of_that_term(role, kind):
    """docs/protocol.md C.1, A.5; etcd TestFollowerUpdateTermFromMessage,
    TestCandidateUpdateTermFromMessage, TestLeaderUpdateTermFromMessage; Raft §5.1.

    A term-2 message makes a term-1 node a follower at term 2 with voted_for None, written
    in the same Ready; the leader is known only when the message came from a leader."""
    c = core_in_role(role, 1)
    msg = {
        "append": AppendBlocks(src=2, dst=1, term=2, prev=GENESIS_ID, blocks=(),
                               commit=GENESIS_ID, seq=1),
        "heartbeat": Heartbeat(src=2, dst=1, term=2, commit=None, seq=1),
        "append_resp": AppendResp(src=2, dst=1, term=2, success=False),
        "heartbeat_resp": HeartbeatResp(src=2, dst=1, term=2, seq=1),
        "vote_resp": VoteResp(src=2, dst=1, term=2, granted=False),
    }[kind]
    r = c.step(msg)
    assert c.role == Role.FOLLOWER
    assert (c.term, c.voted_for) == (2, None)
    assert r.hard_state == HardState(2, None)
    assert c.leader == (2 if kind in ("append", "heartbeat") else None)


# ------------------------------------------------------------------------------ C.2
def test_stale_term_append_is_rejected_with_the_higher_term_and_stores_nothing():
    """docs/protocol.md C.2, A.5; etcd TestRejectStaleTermMessage, TestOldMessages,
    TestStepIgnoreOldTermMsg; Raft §5.1.

    A term-2 follower receiving an old (term-1) leader's AppendBlocks or Heartbeat stores
    nothing, changes nothing and answers with its own term; an old VoteReq gets no answer."""
    blocks = tuple(chain(G, [1, 1]))
    c = new_core(1, disk=Disk(term=2, voted_for=3))
    r = c.step(AppendBlocks(src=2, dst=1, term=1, prev=GENESIS_ID, blocks=blocks,
                            commit=blocks[-1].id, seq=7))
    assert r.blocks == [] and r.head is None and r.hard_state is None and r.commit is None
    assert not c.tree.has(blocks[0].id) and c.head == GENESIS_ID and c.commit == GENESIS_ID
    [resp] = out(r)
    assert isinstance(resp, AppendResp) and (resp.term, resp.success, resp.dst) == (2, False, 2)
    assert c.leader is None and (c.term, c.voted_for) == (2, 3)

    r = c.step(Heartbeat(src=2, dst=1, term=1, commit=blocks[0].id, seq=3))
    [resp] = out(r)
    assert isinstance(resp, AppendResp) and resp.term == 2 and not resp.success
    assert c.commit == GENESIS_ID and c.leader is None

    r = c.step(VoteReq(src=2, dst=1, term=1, head=BlockId(1, 9)))
    assert out(r) == [] and c.voted_for == 3


def test_stale_leader_is_deposed_by_the_reply_and_its_blocks_never_spread():
    """docs/protocol.md C.2; etcd TestOldMessages; Raft §5.1.

    n1 leads term 1, is isolated while n2 wins term 2; after healing, n1's new term-1 block
    is refused by both and n1 learns term 2 from the rejection."""
    net = Network(3)
    net.elect(1)
    net.isolate(1)
    net.elect(2)
    net.recover()
    net.propose(1, b"stale")
    stale = net.nodes[1].head
    assert stale.term == 1
    net.stabilize()
    assert net.nodes[1].role == Role.FOLLOWER and net.nodes[1].term == 2
    assert not net.nodes[2].tree.has(stale) and not net.nodes[3].tree.has(stale)
    net.heartbeat(2)
    assert net.heads()[1] == net.heads()[2] == net.heads()[3]
    assert stale not in net.ever_committed


# ------------------------------------------------------------------------------ C.3
def test_fresh_node_starts_as_follower_at_term_zero_on_genesis():
    """docs/protocol.md C.3; etcd TestStartAsFollower; Raft §5.2."""
    c = new_core(1)
    assert c.role == Role.FOLLOWER
    assert (c.term, c.voted_for, c.leader) == (0, None, None)
    assert c.head == c.commit == c.applied == GENESIS_ID


# ------------------------------------------------------------------------------ C.4
def test_leader_heartbeat_goes_to_every_peer_with_commit_capped_at_its_match():
    """docs/protocol.md C.4, A.9; etcd TestLeaderBcastBeat, TestBcastBeat; Raft §5.2.

    Each HB ticks the leader broadcasts one Heartbeat per peer and no blocks; the commit it
    carries is capped at the peer's match (None while the match is unknown)."""
    c = new_core(1)
    make_leader(c)
    r = c.step(Tick())
    assert [type(m) for m in out(r)] == [Heartbeat, Heartbeat]
    assert sorted(m.dst for m in r.eager) == [2, 3]
    assert all(m.commit is None and m.term == 1 for m in r.eager)

    net = Network(3)
    net.elect(1)
    net.heartbeat(1)
    net.drop(1, 3)
    net.propose(1, b"a")
    net.stabilize()
    lead = net.nodes[1]
    assert lead.commit == BlockId(1, 2)
    sent = net.tick(1)
    hbs = of_type(sent, Heartbeat)
    assert len(hbs) == 2 and not of_type(sent, AppendBlocks)
    by_dst = {m.dst: m.commit for m in hbs}
    assert by_dst == {2: BlockId(1, 2), 3: BlockId(1, 1)}
    assert len({m.seq for m in hbs}) == 1


# ------------------------------------------------------------------------------ C.5
def test_follower_timeout_makes_durable_self_vote_before_vote_requests():
    """docs/protocol.md C.5, A.3, A.6; etcd TestFollowerStartElection, TestVoteRequest;
    Raft §5.2, thesis §3.8.

    After rand_et ticks without a leader the follower campaigns: term+1 and the self-vote are
    in the Ready's hard_state, and the VoteReqs (carrying the head) are in `messages`, which
    the runtime sends only after that write."""
    blocks = chain(G, [1, 2])
    c = new_core(1, disk=Disk.of(blocks, term=2))
    assert ET <= c.rand_et < 2 * ET
    for _ in range(c.rand_et - 1):
        r = c.step(Tick())
        assert c.role == Role.FOLLOWER and out(r) == []
    r = c.step(Tick())
    assert c.role == Role.CANDIDATE and c.term == 3
    assert r.hard_state == HardState(3, 1)
    assert r.eager == []
    reqs = of_type(r.messages, VoteReq)
    assert sorted(m.dst for m in reqs) == [2, 3]
    assert all(m.term == 3 and m.head == BlockId(2, 2) and not m.transfer for m in reqs)


def test_candidate_timeout_starts_a_new_election_at_the_next_term():
    """docs/protocol.md C.5; etcd TestCandidateStartNewElection; Raft §5.2."""
    c = new_core(1)
    tick_until_campaign(c)
    assert (c.role, c.term) == (Role.CANDIDATE, 1)
    r = tick_until_campaign_again(c)
    assert (c.role, c.term, c.voted_for) == (Role.CANDIDATE, 2, 1)
    assert r.hard_state == HardState(2, 1)
    assert sorted(m.dst for m in of_type(r.messages, VoteReq)) == [2, 3]


def tick_until_campaign_again(c):
    t = c.term
    for _ in range(2 * ET):
        r = c.step(Tick())
        if c.term != t:
            return r
    raise AssertionError("candidate never retried")


def test_election_timeouts_are_randomized_in_range_and_rarely_collide():
    """docs/protocol.md C.5, A.1; etcd TestFollowerElectionTimeoutRandomized,
    TestFollowerElectionTimeoutNonconflict; Raft §5.2.

    Every drawn timeout lies in [ET, 2ET); the draw is deterministic per (seed, node); and
    across 5 nodes the earliest timeout is shared in at most 30% of rounds."""
    seen = set()
    c = new_core(1)
    for _ in range(300):
        c._reset_timer()
        assert ET <= c.rand_et < 2 * ET
        seen.add(c.rand_et)
    assert seen == set(range(ET, 2 * ET))
    assert [new_core(i, 5, seed=7).rand_et for i in range(1, 6)] == \
        [new_core(i, 5, seed=7).rand_et for i in range(1, 6)]
    cores = [new_core(i, 5, seed=3) for i in range(1, 6)]
    rounds, ties = 200, 0
    for _ in range(rounds):
        for x in cores:
            x._reset_timer()
        ets = [x.rand_et for x in cores]
        ties += ets.count(min(ets)) > 1
    assert ties / rounds <= 0.3


# ------------------------------------------------------------------------------ C.6
@pytest.mark.parametrize("size,votes,expected", [
    (1, {}, Role.LEADER),
    (3, {2: True, 3: True}, Role.LEADER),
    (3, {2: True}, Role.LEADER),
    (5, {2: True, 3: True, 4: True, 5: True}, Role.LEADER),
    (5, {2: True, 3: True, 4: True}, Role.LEADER),
    (5, {2: True, 3: True}, Role.LEADER),
    (3, {2: False, 3: False}, Role.FOLLOWER),
    (5, {2: False, 3: False, 4: False, 5: False}, Role.FOLLOWER),
    (5, {2: True, 3: False, 4: False, 5: False}, Role.FOLLOWER),
    (3, {}, Role.CANDIDATE),
    (5, {2: True}, Role.CANDIDATE),
    (5, {2: False, 3: False}, Role.CANDIDATE),
    (5, {}, Role.CANDIDATE),
])
def test_candidate_wins_on_quorum_grants_and_loses_on_quorum_rejections(size, votes, expected):
    """docs/protocol.md C.6, A.6; etcd TestLeaderElectionInOneRoundRPC; Raft §5.2."""
    c = new_core(1, size)
    tick_until_campaign(c)
    for src, granted in votes.items():
        c.step(VoteResp(src=src, dst=1, term=1, granted=granted))
    assert c.role == expected
    assert c.term == 1


# ------------------------------------------------------------------------------ C.7
@pytest.mark.parametrize("voted,cand,granted", [
    (None, 2, True), (None, 3, True), (2, 2, True), (3, 3, True), (2, 3, False), (3, 2, False),
])
def test_follower_grants_at_most_one_candidate_per_term(voted, cand, granted):
    """docs/protocol.md C.7, A.6; etcd TestFollowerVote; Raft §5.2."""
    c = new_core(1, disk=Disk(term=1, voted_for=voted))
    r = c.step(VoteReq(src=cand, dst=1, term=1, head=GENESIS_ID))
    [resp] = of_type(r.messages, VoteResp)
    assert (resp.dst, resp.term, resp.granted) == (cand, 1, granted)
    assert c.voted_for == (cand if granted else voted)


def test_first_candidate_of_a_term_wins_the_vote_and_may_ask_again():
    """docs/protocol.md C.7; etcd TestFollowerVote; Raft §5.2."""
    c = new_core(1)
    r1 = c.step(VoteReq(src=2, dst=1, term=1, head=GENESIS_ID))
    r2 = c.step(VoteReq(src=3, dst=1, term=1, head=BlockId(1, 5)))
    r3 = c.step(VoteReq(src=2, dst=1, term=1, head=GENESIS_ID))
    assert [of_type(r.messages, VoteResp)[0].granted for r in (r1, r2, r3)] == [True, False, True]
    assert r1.hard_state == HardState(1, 2)
    assert c.voted_for == 2


# ------------------------------------------------------------------------------ C.8
@pytest.mark.parametrize("term", [1, 2])
def test_candidate_falls_back_to_follower_on_append_from_current_or_newer_leader(term):
    """docs/protocol.md C.8, A.7; etcd TestCandidateFallback; Raft §5.2."""
    c = new_core(1)
    tick_until_campaign(c)
    assert (c.role, c.term) == (Role.CANDIDATE, 1)
    r = c.step(AppendBlocks(src=2, dst=1, term=term, prev=GENESIS_ID, blocks=(),
                            commit=GENESIS_ID, seq=1))
    assert (c.role, c.term, c.leader) == (Role.FOLLOWER, term, 2)
    [ack] = of_type(r.messages, AppendResp)
    assert ack.success and ack.match == GENESIS_ID and ack.term == term


# ------------------------------------------------------------------------------ C.9
@pytest.mark.parametrize("cand_head,granted", [
    (BlockId(2, 2), False),    # same term, lower height
    (BlockId(2, 3), True),     # same term, same height
    (BlockId(2, 4), True),     # same term, higher height
    (BlockId(3, 1), True),     # higher term wins whatever the height
    (BlockId(1, 9), False),    # lower term loses whatever the height
    (GENESIS_ID, False),
])
def test_vote_granted_iff_candidate_head_term_height_is_at_least_the_voters(cand_head, granted):
    """docs/protocol.md C.9, A.6 (up_to_date); etcd TestVoter; Raft §5.4.1.

    Voter head (2,3): grant iff (cand.term, cand.height) >= (2, 3) lexicographically."""
    c = new_core(1, disk=Disk.of(chain(G, [1, 2, 2]), term=2))
    assert c.head == BlockId(2, 3)
    r = c.step(VoteReq(src=2, dst=1, term=3, head=cand_head))
    [resp] = of_type(r.messages, VoteResp)
    assert resp.granted is granted and resp.term == 3
    assert c.voted_for == (2 if granted else None)


# ------------------------------------------------------------------------------ C.10
@pytest.mark.parametrize("pre_vote", [False, True])
@pytest.mark.parametrize("size,down,wins", [
    (3, set(), True), (3, {3}, True), (3, {2, 3}, False), (4, {2, 3}, False),
    (4, {4}, True), (5, {4, 5}, True), (5, {3, 4, 5}, False),
])
def test_leader_is_elected_iff_a_quorum_is_alive(pre_vote, size, down, wins):
    """docs/protocol.md C.10; etcd TestLeaderElection, TestLeaderElectionPreVote; Raft §5.2."""
    net = Network(size, pre_vote=pre_vote)
    for i in down:
        net.crash(i)
    net.campaign(1)
    net.stabilize()
    role = net.nodes[1].role
    if wins:
        assert role == Role.LEADER and net.nodes[1].term == 1
    else:
        assert role == (Role.PRECANDIDATE if pre_vote else Role.CANDIDATE)
        assert net.nodes[1].term == (0 if pre_vote else 1)


# ------------------------------------------------------------------------------ C.11
@pytest.mark.parametrize("pre_vote", [False, True])
def test_each_node_in_turn_can_win_and_heads_agree_after_every_round(pre_vote):
    """docs/protocol.md C.11; etcd TestLeaderCycle, TestLeaderCyclePreVote; Raft §5.2."""
    net = Network(3, pre_vote=pre_vote)
    for rnd in range(2):
        for i in net.ids:
            net.elect(i)
            net.heartbeat(i)
            for j in net.ids:
                assert net.nodes[j].role == (Role.LEADER if j == i else Role.FOLLOWER)
            assert len(set(net.heads().values())) == 1
            assert net.nodes[i].head.term == net.nodes[i].term
    assert net.nodes[3].term == 6


# ------------------------------------------------------------------------------ C.12
def test_election_overwrites_a_newer_term_head_that_was_never_committed():
    """docs/protocol.md C.12; etcd TestLeaderElectionOverwriteNewerLogs(PreVote); Raft §5.4.1.

    n1, n2 hold (1,1); n3 holds (2,1); n4, n5 voted for n3 in term 2 and hold genesis.
    n1 loses term 2, wins term 3, and every head becomes (3,2) whose parent is (1,1); n3's
    (2,1) never commits and is collected once the commit passes the fork."""
    a = chain(G, [1])
    b = chain(G, [2])
    disks = {1: Disk.of(a, term=1), 2: Disk.of(a, term=1), 3: Disk.of(b, term=2, voted_for=3),
             4: Disk(term=2, voted_for=3), 5: Disk(term=2, voted_for=3)}
    net = Network(5, disks=disks)
    net.campaign(1)
    net.stabilize()
    assert (net.nodes[1].role, net.nodes[1].term) == (Role.FOLLOWER, 2)
    net.elect(1)
    assert net.nodes[1].term == 3
    net.heartbeat(1)
    assert set(net.heads().values()) == {BlockId(3, 2)}
    assert net.nodes[3].tree.get(BlockId(3, 2)).parent == BlockId(1, 1)
    assert set(net.commits().values()) == {BlockId(3, 2)}
    assert BlockId(2, 1) not in net.ever_committed
    assert BlockId(2, 1) in net.deleted[3]
    assert not net.nodes[3].tree.has(BlockId(2, 1))


# ------------------------------------------------------------------------------ C.13
@pytest.mark.parametrize("role", ROLES)
def test_any_role_grants_an_up_to_date_higher_term_vote_and_follows(role):
    """docs/protocol.md C.13, A.5; etcd TestVoteFromAnyState; Raft §5.1, §5.2."""
    c = core_in_role(role, 1)
    r = c.step(VoteReq(src=2, dst=1, term=2, head=BlockId(1, 5)))
    [resp] = of_type(r.messages, VoteResp)
    assert resp.granted and resp.term == 2
    assert (c.role, c.term, c.voted_for, c.leader) == (Role.FOLLOWER, 2, 2, None)
    assert r.hard_state == HardState(2, 2)


@pytest.mark.parametrize("role", ROLES)
def test_any_role_grants_an_up_to_date_prevote_without_changing_state(role):
    """docs/protocol.md C.13, A.6 (on_prevote_req); etcd TestPreVoteFromAnyState; thesis §9.6."""
    c = core_in_role(role, 1)
    before = (c.role, c.term, c.voted_for, c.leader)
    r = c.step(PreVoteReq(src=2, dst=1, term=2, head=BlockId(1, 5)))
    [resp] = of_type(out(r), PreVoteResp)
    assert resp.granted and resp.term == 2
    assert (c.role, c.term, c.voted_for, c.leader) == before
    assert r.hard_state is None


# ------------------------------------------------------------------------------ C.14
def test_dueling_candidates_second_loses_then_all_agree_on_its_term():
    """docs/protocol.md C.14; etcd TestDuelingCandidates; Raft §5.2, §5.4.1."""
    net = Network(3)
    net.cut(1, 3)
    net.campaign(1)
    net.campaign(3)
    net.stabilize()
    assert net.nodes[1].role == Role.LEADER and net.nodes[1].term == 1
    assert net.nodes[3].role == Role.CANDIDATE and net.nodes[3].term == 1
    net.recover()
    net.campaign(3)   # term 2, but its head (genesis) is behind n1's and n2's
    net.stabilize()
    assert [(net.nodes[i].role, net.nodes[i].term) for i in (1, 2, 3)] == \
        [(Role.FOLLOWER, 2)] * 3
    assert net.nodes[3].head == GENESIS_ID
    assert net.nodes[1].head == net.nodes[2].head == BlockId(1, 1)
    net.elect(1)
    net.heartbeat(1)
    assert net.nodes[3].head == net.nodes[1].head == BlockId(3, 2)
    assert net.nodes[3].commit == BlockId(3, 2)


# ------------------------------------------------------------------------------ C.15
def test_dueling_precandidates_stale_one_changes_no_term_and_leader_stays():
    """docs/protocol.md C.15; etcd TestDuelingPreCandidates; thesis §9.6."""
    net = Network(3, pre_vote=True)
    net.cut(1, 3)
    net.elect(1)
    net.campaign(3)
    net.stabilize()
    assert (net.nodes[1].role, net.nodes[1].term) == (Role.LEADER, 1)
    assert (net.nodes[2].role, net.nodes[2].term, net.nodes[2].leader) == \
        (Role.FOLLOWER, 1, 1)
    assert net.nodes[3].role == Role.FOLLOWER and net.nodes[3].term <= 1
    net.recover()
    net.campaign(3)
    net.stabilize()
    assert (net.nodes[1].role, net.nodes[1].term) == (Role.LEADER, 1)
    assert net.nodes[2].term == 1 and net.nodes[3].term == 1
    assert not [m for m in of_type(net.sent, VoteReq) if m.src == 3]
    net.heartbeat(1)
    assert net.nodes[3].head == net.nodes[1].head


# ------------------------------------------------------------------------------ C.16
def test_isolated_candidate_concedes_to_the_leader_and_converges():
    """docs/protocol.md C.16; etcd TestCandidateConcede; Raft §5.2."""
    net = Network(3)
    net.isolate(1)
    net.campaign(1)
    net.stabilize()
    assert (net.nodes[1].role, net.nodes[1].term) == (Role.CANDIDATE, 1)
    net.elect(3)
    assert net.nodes[3].term == 1
    net.propose(3, b"force follower")
    net.stabilize()
    net.recover()
    net.heartbeat(3)
    assert (net.nodes[1].role, net.nodes[1].leader, net.nodes[1].term) == \
        (Role.FOLLOWER, 3, 1)
    net.heartbeat(3)
    assert len(set(net.heads().values())) == 1
    assert len(set(net.commits().values())) == 1
    assert net.sm[1] == net.sm[3] == [("c", 1, b"force follower")]


# ------------------------------------------------------------------------------ C.17
@pytest.mark.parametrize("pre_vote", [False, True])
def test_single_node_leads_at_first_timeout_and_commits_once_durable(pre_vote):
    """docs/protocol.md C.17, A.3; etcd TestSingleNodeCandidate, TestSingleNodePreCandidate,
    TestSingleNodeCommit; Raft §5.2.

    A one-voter cluster elects itself at its first timeout. Its blocks commit only after
    the runtime reports them durable (Persisted) — never from the append alone."""
    c = new_core(1, 1, pre_vote=pre_vote)
    tick_until_campaign(c)
    assert (c.role, c.term, c.head) == (Role.LEADER, 1, BlockId(1, 1))
    assert c.commit == GENESIS_ID
    r = c.step(Persisted(head=BlockId(1, 1)))
    assert c.commit == BlockId(1, 1) and [b.id for b in r.apply] == [BlockId(1, 1)]
    r = c.step(Propose(commands=(Command("c", 1, b"a"),)))
    assert r.head == BlockId(1, 2) and r.commit is None and c.commit == BlockId(1, 1)
    r = c.step(Propose(commands=(Command("c", 2, b"b"),)))
    r = c.step(Persisted(head=BlockId(1, 3)))
    assert c.commit == BlockId(1, 3)
    assert [b.id for b in r.apply] == [BlockId(1, 2), BlockId(1, 3)]

    net = Network(1, pre_vote=pre_vote)
    net.campaign(1)
    for k in range(3):
        net.propose(1, b"%d" % k)
    net.stabilize()
    assert net.nodes[1].commit == BlockId(1, 4)
    assert [d for _, _, d in net.sm[1]] == [b"0", b"1", b"2"]


# ------------------------------------------------------------------------------ C.18
@pytest.mark.parametrize("role", ["follower", "candidate", "leader"])
@pytest.mark.parametrize("kind", ["vote", "append"])
def test_every_role_steps_down_to_follower_on_higher_term_vote_or_append(role, kind):
    """docs/protocol.md C.18, A.5; etcd TestAllServerStepdown; Raft §5.1."""
    c = core_in_role(role, 2)
    if kind == "vote":
        m = VoteReq(src=2, dst=1, term=3, head=BlockId(3, 9))
    else:
        m = AppendBlocks(src=2, dst=1, term=3, prev=GENESIS_ID, blocks=(), commit=GENESIS_ID,
                         seq=1)
    c.step(m)
    assert (c.role, c.term) == (Role.FOLLOWER, 3)
    assert c.leader == (2 if kind == "append" else None)
    assert c.voted_for == (2 if kind == "vote" else None)
    assert c.prog == {} and c.pending == {}


# ------------------------------------------------------------------------------ C.19
def test_late_votes_from_an_earlier_round_are_never_counted():
    """docs/protocol.md C.19, A.6; etcd TestCandidateSelfVoteAfterLostElection,
    TestCandidateDeliversPreCandidateSelfVoteAfterBecomingCandidate; Raft §5.2.

    (a) grants for term 1 arriving while campaigning in term 2 are dropped;
    (b) a grant arriving after the election was lost does not make a follower leader;
    (c) a pre-vote grant arriving once the node is a candidate is not a vote."""
    c = new_core(1, 5)
    tick_until_campaign(c)
    tick_until_campaign_again(c)
    assert c.term == 2
    for src in (2, 3, 4):
        c.step(VoteResp(src=src, dst=1, term=1, granted=True))
    assert c.role == Role.CANDIDATE
    c.step(VoteResp(src=2, dst=1, term=2, granted=True))
    assert c.role == Role.CANDIDATE   # 2 of 5
    c.step(VoteResp(src=3, dst=1, term=2, granted=True))
    assert c.role == Role.LEADER

    c = new_core(1, 3)
    tick_until_campaign(c)
    c.step(VoteResp(src=2, dst=1, term=1, granted=False))
    c.step(VoteResp(src=3, dst=1, term=1, granted=False))
    assert c.role == Role.FOLLOWER
    c.step(VoteResp(src=2, dst=1, term=1, granted=True))
    assert c.role == Role.FOLLOWER and c.term == 1

    c = new_core(1, 3, pre_vote=True)
    tick_until_campaign(c)
    assert c.role == Role.PRECANDIDATE
    c.step(PreVoteResp(src=2, dst=1, term=1, granted=True))
    assert (c.role, c.term) == (Role.CANDIDATE, 1)
    c.step(PreVoteResp(src=3, dst=1, term=1, granted=True))
    assert c.role == Role.CANDIDATE, "a pre-vote grant was counted as a vote"
    c.step(VoteResp(src=3, dst=1, term=1, granted=True))
    assert c.role == Role.LEADER


# ------------------------------------------------------------------------------ C.20
def test_vote_synced_before_a_crash_is_kept_after_restart():
    """docs/protocol.md C.20, B2–B4, A.3; thesis §3.8 (persist before responding).

    n2 grants n1 in term 1 and the grant is synced; n2 crashes and restarts: it is still at
    term 1, refuses n3 in term 1 and re-grants n1."""
    net = Network(3)
    net.campaign(1)
    net.deliver(lambda m: isinstance(m, VoteReq) and m.dst == 2)
    assert any(isinstance(m, VoteResp) and m.src == 2 and m.granted for m in net.sent)
    net.crash(2)
    net.restart(2)
    n2 = net.nodes[2]
    assert (n2.term, n2.voted_for) == (1, 1)
    r = net.step(2, VoteReq(src=3, dst=2, term=1, head=GENESIS_ID))
    assert not of_type(r.messages, VoteResp)[0].granted
    r = net.step(2, VoteReq(src=1, dst=2, term=1, head=GENESIS_ID))
    assert of_type(r.messages, VoteResp)[0].granted
    net.check()


def test_vote_lost_before_fsync_was_never_sent_and_term_never_regresses():
    """docs/protocol.md C.20, B4, A.3; thesis §3.8.

    n2's disk stalls while it handles n1's term-1 VoteReq: its grant is held back with the
    unsynced hard state, the crash loses both, and what it ever put on the wire stays
    covered by its durable term after the restart."""
    net = Network(3)
    net.cut(1, 3)
    net.pause_disk(2)
    net.campaign(1)
    net.deliver(lambda m: isinstance(m, VoteReq) and m.dst == 2)
    assert net.nodes[2].voted_for == 1
    assert not [m for m in net.sent if m.src == 2], "a vote left before its fsync"
    net.crash(2)
    net.restart(2)
    assert (net.nodes[2].term, net.nodes[2].voted_for) == (0, None)
    assert net.nodes[2].term >= net.wire_term[2]
    # the lost grant never counted: n1 is still a candidate
    net.stabilize()
    assert net.nodes[1].role == Role.CANDIDATE
    # and once n2 grants a durable vote, it keeps it
    net.campaign(3)
    net.stabilize()
    assert net.nodes[3].role == Role.LEADER
    net.crash(2)
    net.restart(2)
    assert net.nodes[2].term == net.nodes[3].term


def test_leader_crash_before_its_own_fsync_never_reuses_a_block_id():
    """docs/protocol.md C.20, A.2 (why ids cannot collide), A.3 (eager send), B4, B6.

    n1 ships (1,2) before its own fsync and crashes: the block survives on n2 and n3, n1
    restarts without it as a term-1 follower, never leads term 1 again, and later
    receives exactly the same block (same digest) from the next leader."""
    net = Network(3)
    net.elect(1)
    net.heartbeat(1)
    net.pause_disk(1)
    r = net.propose(1, b"eager")
    b = r.blocks[0]
    net.stabilize()
    assert net.nodes[2].head == net.nodes[3].head == b.id
    net.crash(1)
    net.restart(1)
    n1 = net.nodes[1]
    assert (n1.head, n1.term, n1.voted_for, n1.role) == (BlockId(1, 1), 1, 1, Role.FOLLOWER)
    net.elect(2)
    net.heartbeat(2)
    assert n1.tree.get(b.id) == b
    assert net.leaders_by_term() == {1: {1}, 2: {2}}
    assert b.id in net.ever_committed
