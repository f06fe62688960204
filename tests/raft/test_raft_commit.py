"""The commit rule and fork GC: docs/protocol.md §C items 37–41 and 57 (etcd-io/raft
raft_test.go; Raft §5.4.2 and Figure 8)."""
import pytest

from harness import G, Disk, Network, chain, ids, make_leader, new_core
from josefine.messages import AppendBlocks, AppendResp, Persisted, Status
from josefine.raft.core import Role
from josefine.types import GENESIS_ID, BlockId

pytestmark = pytest.mark.timeout(60)


# ------------------------------------------------------------------------------ C.37
def test_leader_only_commits_blocks_of_its_own_term():
    """docs/protocol.md C.37, A.8; etcd TestLeaderOnlyCommitsLogFromCurrentTerm; Raft §5.4.2.

    A term-3 leader whose older blocks (1,1), (2,2) are on every node commits nothing until
    its own no-op (3,3) is durable on a majority — itself included."""
    c = new_core(1, disk=Disk.of(chain(G, [1, 2]), term=2))
    make_leader(c)
    assert (c.term, c.head) == (3, BlockId(3, 3))
    for src in (2, 3):
        r = c.step(AppendResp(src=src, dst=1, term=3, success=True, match=BlockId(2, 2)))
        assert r.commit is None and c.commit == GENESIS_ID
    r = c.step(AppendResp(src=2, dst=1, term=3, success=True, match=BlockId(3, 3)))
    assert c.commit == GENESIS_ID, "counted its own un-synced no-op"
    r = c.step(Persisted(head=BlockId(3, 3)))
    assert c.commit == BlockId(3, 3)
    assert ids(r.apply) == [BlockId(1, 1), BlockId(2, 2), BlockId(3, 3)]
    assert ("commit", int(Role.LEADER), 3, BlockId(3, 3)) in r.events


# ------------------------------------------------------------------------------ C.38
def _figure8() -> Network:
    """S1 holds (2,2) over (1,1); S5 holds (3,2) over (1,1); everyone else (1,1); all at
    term 3 with (1,1) committed. S1 ships one block per message."""
    base = chain(G, [1])
    two = chain(base[0], [2])
    three = chain(base[0], [3], tag=b"s5")
    disks = {1: Disk.of(base + two, term=3, commit=base[0].id),
             5: Disk.of(base + three, term=3, commit=base[0].id)}
    for i in (2, 3, 4):
        disks[i] = Disk.of(base, term=3, commit=base[0].id)
    net = Network(5, disks=disks, overrides={1: {"max_batch_blocks": 1}})
    # Figure 8 (b)-(c): S1 leads term 4 with S2 and S3 and copies (2,2) to them, but its
    # own (4,3) never reaches anyone (the first probe does, and bounces: no (2,2) there).
    net.cut(1, 4)
    net.cut(1, 5)
    net.filters.append(lambda m: isinstance(m, AppendBlocks)
                       and BlockId(4, 3) in ids(m.blocks)
                       and net.nodes[m.dst].tree.has(BlockId(2, 2)))
    net.elect(1)
    assert net.nodes[1].term == 4 and net.nodes[1].head == BlockId(4, 3)
    for i in (2, 3):
        assert net.nodes[i].head == BlockId(2, 2)
    return net


def test_figure8_old_term_block_on_a_majority_is_not_committed_and_can_be_replaced():
    """docs/protocol.md C.38, A.8, A.15; Raft Figure 8, §5.4.2.

    (2,2) is stored on S1–S3 (a majority) while S1 leads term 4: S1 must not commit it.
    S1 crashes before (4,3) spreads; S5 wins term 5 (its (3,2) beats (2,2)); (2,2)
    becomes a dead branch, is collected everywhere, and no node ever commits it."""
    net = _figure8()
    assert net.nodes[1].commit == BlockId(1, 1)
    assert BlockId(2, 2) not in net.ever_committed
    net.crash(1)
    net.recover()
    net.campaign(5)          # term 4: S2 and S3 already voted for S1 in term 4
    net.stabilize()
    assert net.nodes[5].role == Role.CANDIDATE
    net.elect(5)
    assert net.nodes[5].term == 5 and net.nodes[5].head == BlockId(5, 3)
    net.heartbeat(5)
    net.restart(1)
    net.heartbeat(5)
    net.heartbeat(5)
    assert set(net.heads().values()) == {BlockId(5, 3)}
    assert set(net.commits().values()) == {BlockId(5, 3)}
    assert BlockId(2, 2) not in net.ever_committed
    for i in (1, 2, 3):
        assert BlockId(2, 2) in net.deleted[i]
        assert BlockId(2, 2) not in net.disk[i].blocks
    assert BlockId(4, 3) in net.deleted[1]
    assert all(b.id != BlockId(2, 2) for i in net.ids for b in net.applied[i])


def test_figure8_old_term_block_commits_with_the_leaders_own_block():
    """docs/protocol.md C.38, A.8; Raft Figure 8 (e), §5.4.2.

    Once S1's (4,3) is on a majority, (2,2) commits with it, and S5 can no longer win."""
    net = _figure8()
    net.filters.clear()
    for _ in range(4):   # the dropped append is resent once two heartbeat rounds pass
        net.heartbeat(1)
    assert net.nodes[1].commit == BlockId(4, 3)
    assert BlockId(2, 2) in net.ever_committed
    net.recover()
    net.cut(1, 5)
    net.campaign(5)
    net.stabilize()
    assert net.nodes[5].role != Role.LEADER
    assert net.nodes[2].head == net.nodes[3].head == BlockId(4, 3)
    assert BlockId(3, 2) not in net.ever_committed


# ------------------------------------------------------------------------------ C.39
def _old_blocks_on_two_of_five() -> Network:
    net = Network(5)
    net.elect(1)
    net.heartbeat(1)
    for j in (3, 4, 5):
        net.cut(1, j)
    net.propose(1, b"a")
    net.propose(1, b"b")
    net.stabilize()
    assert net.nodes[1].commit == BlockId(1, 1)
    assert net.nodes[2].head == BlockId(1, 3)
    net.recover()
    return net


def test_old_term_blocks_stay_uncommitted_until_a_new_term_block_has_a_majority():
    """docs/protocol.md C.39, A.8; etcd TestCannotCommitWithoutNewTermEntry; Raft §5.4.2."""
    net = _old_blocks_on_two_of_five()
    net.ignore(AppendBlocks)
    net.elect(2)
    n2 = net.nodes[2]
    assert n2.term == 2 and n2.head == BlockId(2, 4)
    assert n2.commit == BlockId(1, 1)
    net.recover()
    net.heartbeat(2)
    net.propose(2, b"c")
    net.stabilize()
    net.heartbeat(2)
    assert n2.commit == n2.head == BlockId(2, 5)
    assert set(net.commits().values()) == {BlockId(2, 5)}
    assert [d for _, _, d in net.sm[3]] == [b"a", b"b", b"c"]


def test_new_leader_noop_commits_old_term_blocks():
    """docs/protocol.md C.40, A.6; etcd TestCommitWithoutNewTermEntry; Raft §5.4.2, §8."""
    net = _old_blocks_on_two_of_five()
    net.elect(2)
    n2 = net.nodes[2]
    assert n2.commit == n2.head == BlockId(2, 4)
    net.heartbeat(2)
    assert set(net.commits().values()) == {BlockId(2, 4)}
    assert [d for _, _, d in net.sm[5]] == [b"a", b"b"]


# ------------------------------------------------------------------------------ C.41
@pytest.mark.parametrize("size,pre,durable,peers,want", [
    (1, [1], 2, [], 2),
    (1, [1], 1, [], 0),
    (3, [1, 1], 3, [3, -1], 3),
    (3, [1, 1], 3, [2, 2], 0),
    (3, [1, 1], 2, [3, 2], 0),
    (3, [1, 1], 2, [3, 3], 3),
    (4, [1], 2, [2, 1, -1], 0),
    (4, [1], 2, [2, 2, 0], 2),
    (4, [1], 2, [2, -1, -1], 0),
    (5, [1, 1], 3, [3, 2, 2, 2], 0),
    (5, [1, 1], 3, [3, 3, -1, -1], 3),
    (5, [1, 1], 2, [3, 3, -1, -1], 0),
    (5, [1, 1], 2, [3, 3, 3, -1], 3),
])
def test_commit_is_the_quorum_match_only_when_that_block_is_of_the_leaders_term(
        size, pre, durable, peers, want):
    """docs/protocol.md C.41, A.8 (leader_advance_commit); etcd TestCommit; Raft §5.3, §5.4.2.

    `pre` are the blocks (by term) the leader held before winning term 2; its no-op (2, h)
    follows. `durable` is the leader's own synced height, `peers` each follower's
    acknowledged height (-1: none yet). `want` is the expected commit height."""
    c = new_core(1, size, disk=Disk.of(chain(G, pre), term=1))
    make_leader(c)
    assert c.term == 2 and c.head == BlockId(2, len(pre) + 1)
    if durable > c.durable_head.height:
        c.step(Persisted(head=c.tree.at(durable)))
    for src, h in zip(range(2, size + 1), peers):
        if h >= 0:
            c.step(AppendResp(src=src, dst=1, term=2, success=True, match=c.tree.at(h)))
    assert c.commit.height == want
    assert c.commit == c.tree.at(want)


# ------------------------------------------------------------------------------ C.57
def test_commit_passing_a_fork_deletes_dead_branches_and_aborts_their_proposals():
    """docs/protocol.md C.57, A.14 (gc_after_commit), A.8 (ABORTED); thesis ch. 6 (definite
    answers).

    n1 (old leader) and n3 hold two uncommitted term-1 blocks when the majority side elects
    n2 and commits past the fork. After healing, both delete the dead branch (listed in
    Ready.delete and gone from disk); n1's pending proposals first become UNKNOWN (it
    stepped down) and then ABORTED (the committed path holds another block there)."""
    net = Network(5)
    net.elect(1)
    net.heartbeat(1)
    net.partition({1, 3}, {2, 4, 5})
    net.propose(1, b"lost-1", seq=1)
    net.propose(1, b"lost-2", seq=2)
    net.stabilize()
    dead = [BlockId(1, 2), BlockId(1, 3)]
    assert net.nodes[3].head == dead[-1] and net.nodes[1].commit == BlockId(1, 1)
    net.elect(2)
    net.propose(2, b"kept", seq=3)
    net.stabilize()
    assert net.nodes[2].commit == BlockId(2, 3)
    net.recover()
    net.heartbeat(2)
    net.heartbeat(2)
    assert set(net.heads().values()) == {BlockId(2, 3)}
    assert set(net.commits().values()) == {BlockId(2, 3)}
    assert len({tuple(net.path(i)) for i in net.ids}) == 1
    for i in (1, 3):
        assert sorted(net.deleted[i]) == dead
        assert not any(net.nodes[i].tree.has(x) for x in dead)
        assert not any(x in net.disk[i].blocks for x in dead)
    for i in (2, 4, 5):
        assert net.deleted[i] == []
    for seq, bid in ((1, dead[0]), (2, dead[1])):
        outs = [o for o in net.outcomes[1] if o.key == ("c", seq)]
        assert [o.status for o in outs] == [Status.UNKNOWN, Status.ABORTED]
        assert outs[-1].block == bid
    assert [d for _, _, d in net.sm[1]] == [b"kept"]


# ------------------------------------------------------------------------------ A.3
def test_leader_counts_itself_toward_commit_only_after_its_own_fsync():
    """docs/protocol.md A.3 (durable self-ack), C.17, C.22; thesis §10.2.1 (leader may write
    its log in parallel with replication, but counts itself only once durable)."""
    net = Network(3)
    net.elect(1)
    net.heartbeat(1)
    net.drop(1, 3)
    net.pause_disk(1)
    r = net.propose(1, b"a")
    assert [m.dst for m in r.eager if isinstance(m, AppendBlocks)] == [2, 3]
    net.stabilize()
    assert net.nodes[2].head == BlockId(1, 2)
    assert net.nodes[1].commit == BlockId(1, 1), "committed on {n2} + an unsynced leader"
    net.flush(1)
    assert net.nodes[1].commit == BlockId(1, 2)
    net.check()


def test_leader_hands_its_own_commands_to_the_applier():
    """Ready.decoded carries, for each applied block this leader proposed, exactly the
    commands its payload encodes (the leader's FSM skips decoding them again)."""
    from josefine.chain.block import Command, decode_commands
    from josefine.messages import Propose
    c = new_core(1)
    r = make_leader(c)
    c.step(Persisted(head=c.head))
    for m in r.eager:
        if isinstance(m, AppendBlocks):
            c.step(AppendResp(src=m.dst, dst=1, term=c.term, success=True, seq=m.seq,
                              match=m.blocks[-1].id))
    cmds = (Command("a", 1, b"x"), Command("b", 7, b"yy"))
    r = c.step(Propose(commands=cmds))
    block = r.blocks[0]
    c.step(Persisted(head=block.id))
    r = c.step(AppendResp(src=2, dst=1, term=c.term, success=True, seq=r.eager[0].seq,
                          match=block.id))
    assert ids(r.apply) == [block.id]
    assert r.decoded == {block.id: cmds}
    assert list(r.decoded[block.id]) == decode_commands(block.payload)
