"""Replication, branches and catch-up: docs/protocol.md §C items 21–36 (etcd-io/raft
raft_paper_test.go, raft_test.go, raft_flow_control_test.go)."""
import dataclasses

import pytest

from harness import G, Disk, Network, chain, ids, make_leader, new_core, of_type, out
from josefine.chain.block import Command
from josefine.messages import (AppendBlocks, AppendResp, Heartbeat, HeartbeatResp, Persisted,
                               Propose, Status, VoteReq, VoteResp)
from josefine.raft.core import Role
from josefine.raft.progress import ProgressState
from josefine.types import GENESIS_ID, BlockId

pytestmark = pytest.mark.timeout(60)


def replicating(n: int = 3, **cfg) -> Network:
    """n nodes, node 1 leads term 1, its no-op committed everywhere, followers REPLICATE."""
    net = Network(n, **cfg)
    net.elect(1)
    net.heartbeat(1)
    assert set(net.commits().values()) == {BlockId(1, 1)}
    return net


# ------------------------------------------------------------------------------ C.21
def test_proposal_appends_child_of_head_and_ships_it_before_the_leader_fsync():
    """docs/protocol.md C.21, A.3, A.7; etcd TestLeaderStartReplication; Raft §5.3."""
    net = replicating()
    r = net.propose(1, b"a")
    [b] = r.blocks
    assert b.id == BlockId(1, 2) and b.parent == BlockId(1, 1) and r.head == b.id
    assert r.hard_state is None and r.messages == []
    apps = of_type(r.eager, AppendBlocks)
    assert sorted(m.dst for m in apps) == [2, 3]
    for m in apps:
        assert (m.term, m.prev, ids(m.blocks), m.commit) == \
            (1, BlockId(1, 1), [BlockId(1, 2)], BlockId(1, 1))


# ------------------------------------------------------------------------------ C.22
@pytest.mark.parametrize("size,acceptors,committed", [
    (1, set(), True), (3, set(), False), (3, {2}, True), (3, {2, 3}, True),
    (5, set(), False), (5, {2}, False), (5, {2, 3}, True), (5, {2, 3, 4}, True),
    (5, {2, 3, 4, 5}, True),
])
def test_block_commits_iff_a_majority_stores_it_and_commit_is_then_announced(
        size, acceptors, committed):
    """docs/protocol.md C.22, A.8; etcd TestLeaderCommitEntry, TestLeaderAcknowledgeCommit;
    Raft §5.3."""
    net = Network(size)
    net.elect(1)
    net.heartbeat(1)
    for j in net.ids[1:]:
        if j not in acceptors:
            net.drop(1, j)
    net.propose(1, b"v")
    net.stabilize()
    want = BlockId(1, 2) if committed else BlockId(1, 1)
    assert net.nodes[1].commit == want
    assert (("c", 1, b"v") in net.sm[1]) is committed
    if committed and acceptors:
        hbs = of_type(net.tick(1), Heartbeat)
        assert {m.commit for m in hbs if m.dst in acceptors} == {BlockId(1, 2)}
        net.stabilize()
        for j in acceptors:
            assert net.nodes[j].commit == BlockId(1, 2)
            assert net.sm[j] == [("c", 1, b"v")]


# ------------------------------------------------------------------------------ C.23
@pytest.mark.parametrize("follower_terms", [[], [1], [1, 1]])
def test_new_leader_noop_commits_all_older_term_ancestors_in_height_order(follower_terms):
    """docs/protocol.md C.23, A.6, A.8; etcd TestLeaderCommitPrecedingEntries; Raft §5.3, §5.4.2."""
    mine = chain(G, [1, 1])
    disks = {1: Disk.of(mine, term=1), 2: Disk.of(mine[:len(follower_terms)], term=1),
             3: Disk.of(mine[:len(follower_terms)], term=1)}
    net = Network(3, disks=disks)
    net.elect(1)
    assert net.nodes[1].commit == BlockId(2, 3)
    assert ids(net.applied[1]) == [BlockId(1, 1), BlockId(1, 2), BlockId(2, 3)]
    net.heartbeat(1)
    for j in (2, 3):
        assert ids(net.applied[j]) == [BlockId(1, 1), BlockId(1, 2), BlockId(2, 3)]


# ------------------------------------------------------------------------------ C.24
def test_follower_applies_exactly_its_path_up_to_a_known_commit_and_never_goes_back():
    """docs/protocol.md C.24, A.8 (advance_commit_to); etcd TestFollowerCommitEntry,
    TestHandleHeartbeat; Raft §5.3."""
    main = chain(G, [1, 2, 2])               # (1,1) (2,2) (2,3)
    dead = chain(main[0], [1])               # (1,2): a dead sibling of (2,2)
    c = new_core(2, disk=Disk.of(main + dead, term=2, head=main[-1].id))
    assert c.head == BlockId(2, 3)

    def hb(commit):
        return c.step(Heartbeat(src=1, dst=2, term=2, commit=commit, seq=1))

    r = hb(BlockId(1, 1))
    assert c.commit == BlockId(1, 1) and ids(r.apply) == [BlockId(1, 1)]
    r = hb(BlockId(1, 2))            # stored but off the path: ignored
    assert c.commit == BlockId(1, 1) and r.apply == [] and r.commit is None
    r = hb(BlockId(2, 9))            # unknown: ignored
    assert c.commit == BlockId(1, 1) and r.apply == []
    r = c.step(AppendBlocks(src=1, dst=2, term=2, prev=BlockId(2, 3), blocks=(),
                            commit=BlockId(2, 3), seq=2))
    assert c.commit == BlockId(2, 3) and ids(r.apply) == [BlockId(2, 2), BlockId(2, 3)]
    assert r.delete == [BlockId(1, 2)]
    r = hb(BlockId(2, 2))            # older: commit never decreases
    assert c.commit == BlockId(2, 3) and r.apply == [] and r.commit is None
    assert of_type(r.messages, HeartbeatResp)[0].seq == 1


# ------------------------------------------------------------------------------ C.25
@pytest.mark.parametrize("prev,ok", [
    (GENESIS_ID, True), (BlockId(1, 1), True), (BlockId(2, 2), True),
    (BlockId(2, 3), False), (BlockId(3, 3), False), (BlockId(1, 2), False),
])
def test_follower_accepts_iff_prev_is_stored_else_rejects_with_term_summary(prev, ok):
    """docs/protocol.md C.25, A.7 (on_append, term_summary); etcd TestFollowerCheckMsgApp;
    Raft §5.3."""
    c = new_core(2, disk=Disk.of(chain(G, [1, 2]), term=2))
    r = c.step(AppendBlocks(src=1, dst=2, term=2, prev=prev, blocks=(), commit=GENESIS_ID,
                            seq=5))
    [resp] = of_type(r.messages, AppendResp)
    assert resp.success is ok and resp.seq == 5 and resp.term == 2
    if ok:
        assert resp.match == prev
    else:
        assert resp.rejected_prev == prev
        assert resp.hint == ((2, 2), (1, 1))
        assert resp.commit == GENESIS_ID and resp.match is None
    assert c.head == BlockId(2, 2) and r.blocks == []


# ------------------------------------------------------------------------------ C.26
@pytest.mark.parametrize("commit", [GENESIS_ID, BlockId(1, 2)])
def test_follower_moves_from_dead_branch_to_leader_branch_keeping_both(commit):
    """docs/protocol.md C.26, A.7 (head rule); etcd TestFollowerAppendEntries (as chains);
    Raft §5.3.

    The follower's head (3,4) is on a dead term-3 branch; the term-5 leader's blocks
    extend (1,2). Both branches stay stored, the head becomes the message's tail (lower
    than before), nothing is deleted and the commit does not pass the fork."""
    base = chain(G, [1, 1])
    dead = chain(base[-1], [3, 3])
    live = chain(base[-1], [5, 5])
    c = new_core(2, disk=Disk.of(base + dead, term=4, commit=commit))
    assert c.head == BlockId(3, 4)
    r = c.step(AppendBlocks(src=1, dst=2, term=5, prev=BlockId(1, 2), blocks=tuple(live),
                            commit=commit, seq=1))
    assert of_type(r.messages, AppendResp)[0].success
    assert c.head == BlockId(5, 4) and r.head == BlockId(5, 4)
    assert ids(r.blocks) == ids(live)
    assert all(c.tree.has(b.id) for b in base + dead + live)
    assert r.delete == [] and c.commit == commit


# ------------------------------------------------------------------------------ C.27
def test_partial_batch_leaves_follower_with_old_term_head_so_it_cannot_win():
    """docs/protocol.md C.27, A.2 (why every block carries its term), A.6; blog "Simplifying
    Raft with Chaining" last-appended-term trap.

    X(4) is committed on {n1, n2, n3}. L5 (n5) leads term 5 with chain A(1) B(2) X(4) C(5)
    but, batching 2 blocks at a time, ships only [A, B] to F (n4) before it crashes. F's
    head is B = (2,2) (not "term 5"), so n1–n3 refuse its term-6 VoteReq; F never leads
    without X, and the next leader keeps X committed."""
    a, b, x = chain(G, [1, 2, 4])
    full = [a, b, x]
    disks = {i: Disk.of(full, term=4, commit=x.id if i == 1 else b.id) for i in (1, 2, 3, 5)}
    disks[4] = Disk(term=4)
    net = Network(5, disks=disks, overrides={5: {"max_batch_blocks": 2}})
    net.campaign(5)
    net.deliver(lambda m: isinstance(m, VoteReq) and m.dst in (1, 2))
    net.deliver(lambda m: isinstance(m, VoteResp))
    lead = net.nodes[5]
    assert lead.role == Role.LEADER and lead.term == 5 and lead.head == BlockId(5, 4)
    # only F hears from L5, and only the first batch
    net.filters.append(lambda m: m.src == 5 and m.dst != 4)
    net.deliver(lambda m: m.dst == 4)            # probe of C: F lacks X -> reject
    net.deliver(lambda m: m.dst == 5)            # L5 backs off to height 1
    sent = net.deliver(lambda m: isinstance(m, AppendBlocks) and m.dst == 4)
    assert [ids(m.blocks) for m in sent] == [[a.id, b.id]]
    net.crash(5)
    net.queue.clear()
    f = net.nodes[4]
    assert f.head == BlockId(2, 2) and f.term == 5
    net.campaign(4)
    reqs = of_type(net.sent[-4:], VoteReq)
    assert {m.head for m in reqs} == {BlockId(2, 2)} and {m.term for m in reqs} == {6}
    net.stabilize()
    assert f.role != Role.LEADER
    assert all(not m.granted for m in of_type(net.delivered, VoteResp) if m.dst == 4)
    net.elect(2)
    net.heartbeat(2)
    for i in net.live():
        assert net.nodes[i].tree.is_ancestor(x.id, net.nodes[i].commit)


# ------------------------------------------------------------------------------ C.28
def test_orphan_block_is_rejected_and_leader_resends_from_the_hinted_fork_point():
    """docs/protocol.md C.28, A.7 ("Parent missing: reject; store nothing"); etcd
    TestFollowerCheckMsgApp / TestLeaderSyncFollowerLog; Raft §5.3."""
    net = replicating()
    net.isolate(3)
    for k in range(3):
        net.propose(1, b"%d" % k)
    net.stabilize()
    net.recover()
    mark = len(net.log)
    net.propose(1, b"last")
    net.stabilize()
    steps3 = [(inp, r) for (i, inp, r) in net.log[mark:] if i == 3
              and isinstance(inp, AppendBlocks)]
    (m1, r1), (m2, r2) = steps3[:2]
    assert m1.prev == BlockId(1, 4) and ids(m1.blocks) == [BlockId(1, 5)]
    assert r1.blocks == [] and r1.head is None
    [rej] = of_type(r1.messages, AppendResp)
    assert not rej.success and rej.rejected_prev == BlockId(1, 4)
    assert m2.prev == BlockId(1, 1)
    assert ids(m2.blocks) == [BlockId(1, h) for h in range(2, 6)]
    assert of_type(r2.messages, AppendResp)[0].success
    assert net.nodes[3].head == BlockId(1, 5)


# ------------------------------------------------------------------------------ C.29
def test_reordered_and_duplicated_appends_never_move_head_back():
    """docs/protocol.md C.29, A.7 (head rule, outdated rejection); etcd
    TestLogReplicationWithReorderedMessage; Raft §5.3."""
    net = replicating()
    net.propose(1, b"a")
    net.propose(1, b"b")
    m1, m2 = net.take(lambda m: isinstance(m, AppendBlocks) and m.dst == 2)
    assert ids(m1.blocks) == [BlockId(1, 2)] and ids(m2.blocks) == [BlockId(1, 3)]
    n2 = net.nodes[2]
    heads = []
    for m in (m2, m1, m1, m2, m1):
        net.step(2, m)
        heads.append(n2.head)
    assert heads == [BlockId(1, 1), BlockId(1, 2), BlockId(1, 2), BlockId(1, 3), BlockId(1, 3)]
    resps = net.take(lambda m: isinstance(m, AppendResp) and m.src == 2)
    assert [r.success for r in resps] == [False, True, True, True, True]
    rej, ack1 = resps[0], resps[1]
    p = net.nodes[1].prog[2]
    net.step(1, ack1)
    assert p.match == BlockId(1, 2)
    before = (p.state, p.next)
    r = net.step(1, rej)                          # late rejection of m2: ignored
    assert (p.state, p.next) == before and out(r) == []
    assert p.next >= p.match.height + 1
    net.inject(*resps[2:])
    net.stabilize()
    assert p.match == BlockId(1, 3) and p.next == 4
    assert set(net.heads().values()) == {BlockId(1, 3)}


# ------------------------------------------------------------------------------ C.30
LEADER_TERMS = [1, 1, 1, 4, 4, 5, 5, 6, 6, 6]
L = chain(G, LEADER_TERMS)


def _fig7(shape):
    if shape == "a_missing_tail":
        return L[:9]
    if shape == "b_short":
        return L[:4]
    if shape == "c_extra_term6":
        return L + chain(L[-1], [6])
    if shape == "d_extra_term7":
        return L + chain(L[-1], [7, 7])
    if shape == "e_divergent_term4":
        return L[:5] + chain(L[4], [4, 4])
    if shape == "f_divergent_term2_3":
        return L[:3] + chain(L[2], [2, 2, 2, 3, 3, 3, 3, 3])
    raise ValueError(shape)


@pytest.mark.parametrize("shape", ["a_missing_tail", "b_short", "c_extra_term6",
                                   "d_extra_term7", "e_divergent_term4",
                                   "f_divergent_term2_3"])
def test_term8_leader_brings_every_figure7_follower_onto_its_chain(shape):
    """docs/protocol.md C.30, A.7; etcd TestLeaderSyncFollowerLog; Raft Figure 7, §5.3.

    The leader holds 1 1 1 4 4 5 5 6 6 6; after its term-8 no-op every follower shape
    ends with the leader's head, the same commit path and — the commit having passed
    every fork — exactly the leader's blocks."""
    fol = _fig7(shape)
    disks = {1: Disk.of(L, term=7), 2: Disk.of(fol, term=7), 3: Disk(term=7)}
    net = Network(3, disks=disks)
    net.elect(1)
    lead = net.nodes[1]
    assert lead.term == 8 and lead.head == BlockId(8, 11)
    net.heartbeat(1)
    net.heartbeat(1)
    n2 = net.nodes[2]
    assert n2.head == lead.head and n2.commit == lead.commit == BlockId(8, 11)
    assert net.path(2) == net.path(1)
    assert set(n2.tree.blocks) == set(lead.tree.blocks)
    assert set(net.disk[2].blocks) | {G.id} == set(lead.tree.blocks)


# ------------------------------------------------------------------------------ C.31
@pytest.mark.parametrize("fol_terms,lead_terms,fork", [
    ([1, 1, 3, 3, 3, 3, 3, 3, 3, 3], [1, 1, 2, 2, 4, 4], 2),   # long dead term-3 branch
    ([1, 1, 1, 1, 1, 1, 1, 1], [1, 1, 4, 4], 2),               # long run of a shared term
    ([2, 2, 2, 2, 2, 2], [1, 1, 4], 0),                        # nothing shared but genesis
])
def test_fork_point_is_found_in_one_round_trip_from_the_hint(fol_terms, lead_terms, fork):
    """docs/protocol.md C.31, A.7 (fork_point); etcd TestFastLogRejection; Raft §5.3 (optimised
    back-off).

    One rejection suffices: the second AppendBlocks starts right above the fork point and
    carries every missing block exactly once."""
    shared = [b for b in chain(G, lead_terms)][:fork]
    fol = shared + chain(shared[-1] if shared else G, fol_terms[fork:], tag=b"f")
    lead = chain(G, lead_terms)
    disks = {1: Disk.of(lead, term=4), 2: Disk.of(fol, term=4), 3: Disk.of(lead, term=4)}
    net = Network(3, disks=disks)
    net.elect(1)
    to2 = of_type([m for m in net.delivered if m.dst == 2], AppendBlocks)
    rej = [m for m in of_type(net.delivered, AppendResp) if m.src == 2 and not m.success]
    assert len(rej) == 1
    assert len(to2) == 2
    probe, resend = to2
    assert resend.prev == (shared[-1].id if shared else GENESIS_ID)
    want = ids(lead[fork:]) + [net.nodes[1].head]
    assert ids(resend.blocks) == want
    assert not set(ids(probe.blocks)) & set(ids(lead))
    assert net.nodes[2].head == net.nodes[1].head


# ------------------------------------------------------------------------------ C.32
B3 = chain(G, [1, 1, 1])       # follower: (1,1) (1,2) (1,3), term 1


def _bad_digest(b):
    return dataclasses.replace(b, digest=bytes(32))


@pytest.mark.parametrize("name,prev,blocks,commit,ok,head,new_commit,deleted", [
    ("heartbeat-like", BlockId(1, 3), [], BlockId(1, 1), True, BlockId(1, 3), BlockId(1, 1), []),
    ("extend", BlockId(1, 3), chain(B3[2], [2]), BlockId(2, 4), True, BlockId(2, 4),
     BlockId(2, 4), []),
    ("fork+commit", BlockId(1, 1), chain(B3[0], [2]), BlockId(2, 2), True, BlockId(2, 2),
     BlockId(2, 2), [BlockId(1, 2), BlockId(1, 3)]),
    ("fork, no commit", BlockId(1, 1), chain(B3[0], [2]), BlockId(1, 1), True, BlockId(2, 2),
     BlockId(1, 1), []),
    ("duplicate", BlockId(1, 1), B3[1:2], BlockId(1, 2), True, BlockId(1, 3), BlockId(1, 2),
     []),
    ("missing prev", BlockId(2, 4), chain(B3[2], [2, 2])[1:], BlockId(2, 4), False,
     BlockId(1, 3), GENESIS_ID, []),
    ("prev mismatch", BlockId(1, 1), chain(B3[1], [2]), BlockId(1, 1), False, BlockId(1, 3),
     GENESIS_ID, []),
    ("term above message", BlockId(1, 3), chain(B3[2], [5]), BlockId(1, 1), False,
     BlockId(1, 3), GENESIS_ID, []),
    ("bad digest", BlockId(1, 3), [_bad_digest(chain(B3[2], [2])[0])], BlockId(1, 1), False,
     BlockId(1, 3), GENESIS_ID, []),
])
def test_append_handling_table(name, prev, blocks, commit, ok, head, new_commit, deleted):
    """docs/protocol.md C.32, A.7 (on_append, well_formed), A.14 (GC); etcd TestHandleMsgApp;
    Raft §5.3."""
    c = new_core(2, disk=Disk.of(B3, term=1))
    r = c.step(AppendBlocks(src=1, dst=2, term=2, prev=prev, blocks=tuple(blocks),
                            commit=commit, seq=1))
    [resp] = of_type(r.messages, AppendResp)
    assert resp.success is ok, name
    assert c.head == head and c.commit == new_commit
    assert sorted(r.delete) == deleted
    if not ok:
        assert r.blocks == [] and resp.rejected_prev == prev
        assert all(not c.tree.has(b.id) or b in B3 for b in blocks)


# ------------------------------------------------------------------------------ C.33
def _leader_with_chain():
    c = new_core(1, disk=Disk.of(chain(G, [1, 1, 1]), term=1))
    make_leader(c)
    assert c.head == BlockId(2, 4)
    return c


def test_leader_handles_stale_rejection_fresh_rejection_and_success():
    """docs/protocol.md C.33, A.7 (on_append_resp); etcd TestLeaderAppResp; Raft §5.3."""
    c = _leader_with_chain()
    p = c.prog[2]
    assert (p.state, p.next) == (ProgressState.PROBE, 4)
    # stale: answers an older probe (its prev is not the current probe's)
    r = c.step(AppendResp(src=2, dst=1, term=2, success=False, rejected_prev=BlockId(1, 2),
                          hint=((1, 1),), commit=GENESIS_ID))
    assert out(r) == [] and p.next == 4
    # fresh: next comes from the hint, and one probe goes out
    r = c.step(AppendResp(src=2, dst=1, term=2, success=False, rejected_prev=BlockId(1, 3),
                          hint=((1, 1),), commit=GENESIS_ID))
    [probe] = of_type(out(r), AppendBlocks)
    assert probe.prev == BlockId(1, 1)
    assert ids(probe.blocks) == [BlockId(1, 2), BlockId(1, 3), BlockId(2, 4)]
    assert p.state == ProgressState.PROBE and p.next == 2
    # success: match/next advance, REPLICATE; commit waits for the leader's own fsync
    r = c.step(AppendResp(src=2, dst=1, term=2, success=True, match=BlockId(2, 4)))
    assert p.match == BlockId(2, 4) and p.next == 5 and p.state == ProgressState.REPLICATE
    assert c.commit == GENESIS_ID
    r = c.step(Persisted(head=BlockId(2, 4)))
    assert c.commit == BlockId(2, 4)
    assert ids(r.apply) == [BlockId(1, 1), BlockId(1, 2), BlockId(1, 3), BlockId(2, 4)]
    # an old rejection below the match is ignored
    r = c.step(AppendResp(src=2, dst=1, term=2, success=False, rejected_prev=BlockId(1, 3),
                          hint=(), commit=GENESIS_ID))
    assert out(r) == [] and p.match == BlockId(2, 4) and p.state == ProgressState.REPLICATE
    # and the new commit is announced with the next block
    r = c.step(Propose(commands=(Command("c", 1, b"x"),)))
    [app] = of_type(r.eager, AppendBlocks, dst=2)
    assert app.commit == BlockId(2, 4) and app.prev == BlockId(2, 4)


# ------------------------------------------------------------------------------ C.34
def test_replicate_pipelines_up_to_max_inflight_and_probe_keeps_one_in_flight():
    """docs/protocol.md C.34, A.7 (flow control); etcd TestProgressFlowControl,
    TestMsgAppFlowControlFull, TestMsgAppFlowControlMoveForward, TestProgressPaused;
    Raft §5.3."""
    c = new_core(1, max_inflight=3, max_batch_blocks=1)
    make_leader(c)
    c.step(Persisted(head=c.head))
    c.step(AppendResp(src=2, dst=1, term=1, success=True, match=BlockId(1, 1)))
    assert c.prog[2].state == ProgressState.REPLICATE
    assert c.prog[3].state == ProgressState.PROBE and c.prog[3].probe_sent
    sent = {2: [], 3: []}
    for k in range(5):
        r = c.step(Propose(commands=(Command("c", k + 1, b"d"),)))
        for m in of_type(r.eager, AppendBlocks):
            sent[m.dst].append(m)
    assert [ids(m.blocks) for m in sent[2]] == [[BlockId(1, h)] for h in (2, 3, 4)]
    assert sent[3] == [], "a PROBE follower got a second message in flight"
    # an ack frees exactly the acknowledged slot
    r = c.step(AppendResp(src=2, dst=1, term=1, success=True, match=BlockId(1, 2)))
    assert [ids(m.blocks) for m in of_type(r.eager, AppendBlocks)] == [[BlockId(1, 5)]]
    r = c.step(AppendResp(src=2, dst=1, term=1, success=True, match=BlockId(1, 5)))
    assert [ids(m.blocks) for m in of_type(r.eager, AppendBlocks)] == [[BlockId(1, 6)]]
    # PROBE: a heartbeat response releases one more probe
    r = c.step(HeartbeatResp(src=3, dst=1, term=1, seq=0))
    assert len(of_type(r.eager, AppendBlocks, dst=3)) == 1
    r = c.step(Propose(commands=(Command("c", 9, b"d"),)))
    assert of_type(r.eager, AppendBlocks, dst=3) == []


def test_lagging_follower_heartbeat_response_triggers_resend_of_missing_blocks():
    """docs/protocol.md C.34, A.9 (on_heartbeat_resp); etcd TestProgressResumeByHeartbeatResp,
    TestHandleHeartbeatResp; Raft §5.3."""
    net = replicating()
    net.drop(1, 2)
    for k in range(3):
        net.propose(1, b"%d" % k)
    net.stabilize()
    assert net.nodes[2].head == BlockId(1, 1)
    net.recover()
    # The lost append counts as lost once heartbeats two rounds newer have come back
    # (acks wait for the follower's fsync; heartbeat responses do not).
    for _ in range(4):
        net.tick(1)
        net.deliver(lambda m: isinstance(m, Heartbeat) and m.dst == 2)
        net.deliver(lambda m: isinstance(m, HeartbeatResp) and m.src == 2)
        resend = [m for m in net.queue if isinstance(m, AppendBlocks) and m.dst == 2]
        if resend:
            break
    assert len(resend) == 1
    assert resend[0].prev == BlockId(1, 1)
    assert ids(resend[0].blocks) == [BlockId(1, 2), BlockId(1, 3), BlockId(1, 4)]
    net.stabilize()
    assert net.nodes[2].head == BlockId(1, 4)


# ------------------------------------------------------------------------------ C.35
def test_proposals_over_the_uncommitted_limit_get_busy_until_commit():
    """docs/protocol.md C.35, A.8 (on_propose); etcd TestUncommittedEntryLimit."""
    net = replicating(max_uncommitted_bytes=120)
    net.isolate(1)
    data = b"x" * 30        # 45 bytes accounted per command, 49 per block
    net.propose(1, data, seq=1)
    net.propose(1, data, seq=2)
    r = net.propose(1, data, seq=3)
    assert r.blocks == []
    assert [(o.key, o.status) for o in r.outcomes] == [(("c", 3), Status.BUSY)]
    r = net.step(1, Propose(commands=(Command("c", 4, b""), Command("c", 5, data))))
    assert [o.key for o in r.outcomes if o.status == Status.BUSY] == [("c", 5)]
    net.stabilize()
    net.recover()
    for _ in range(4):   # lost appends are resent after two heartbeat rounds
        net.heartbeat(1)
    assert net.nodes[1].commit == net.nodes[1].head
    r = net.propose(1, data, seq=6)
    assert len(r.blocks) == 1 and r.outcomes == []
    net.stabilize()
    assert [s for _, s, _ in net.sm[1]] == [1, 2, 4, 6]


# ------------------------------------------------------------------------------ C.36
def test_proposal_commits_at_leader_and_is_refused_with_hint_elsewhere():
    """docs/protocol.md C.36, A.8 (on_propose); etcd TestProposal, TestProposalByProxy;
    Raft §8. With forwarding off (forwarding itself: test_raft_follower_reads.py)."""
    net = Network(3, forward_proposals=False)
    r = net.propose(2, b"early")
    assert [(o.status, o.leader_hint) for o in r.outcomes] == [(Status.NOT_LEADER, None)]
    assert r.blocks == []
    net.elect(1)
    net.heartbeat(1)
    r = net.propose(2, b"at follower", seq=10)
    assert [(o.kind, o.key, o.status, o.leader_hint) for o in r.outcomes] == \
        [("propose", ("c", 10), Status.NOT_LEADER, 1)]
    r = net.propose(1, b"at leader", seq=11)
    assert r.outcomes == []
    net.stabilize()
    net.heartbeat(1)
    for i in net.ids:
        assert net.sm[i] == [("c", 11, b"at leader")]


# ------------------------------------------------------------------------------ A.2
def test_known_block_id_arriving_with_another_digest_is_a_safety_violation():
    """docs/protocol.md A.2 (the digest is a tripwire: raise SafetyViolation, never merge),
    D.2."""
    from josefine.chain.block import BlockKind, make_block
    from josefine.types import SafetyViolation
    mine = chain(G, [1, 1])
    c = new_core(2, disk=Disk.of(mine, term=1))
    impostor = make_block(mine[0], 1, BlockKind.NORMAL, b"another payload")
    assert impostor.id == mine[1].id and impostor.digest != mine[1].digest
    with pytest.raises(SafetyViolation):
        c.step(AppendBlocks(src=1, dst=2, term=1, prev=BlockId(1, 1), blocks=(impostor,),
                            commit=GENESIS_ID, seq=1))
