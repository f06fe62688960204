"""The follower tripwire (issue 13; docs/protocol.md "Follower tripwire"): a follower never
moves its head to a branch without its commit, nor its commit off its path, whoever sends
the message. A legitimate leader never trips it (Leader Completeness, Raft §5.4.1)."""
import pytest

from harness import G, Network, chain, of_type
from josefine.messages import AppendBlocks, AppendResp, Heartbeat
from josefine.raft.core import Role
from josefine.types import BlockId

pytestmark = pytest.mark.timeout(60)

HUGE = 10**6


def committed_cluster(writes: int = 5) -> Network:
    net = Network(3)
    net.elect(1)
    for i in range(writes):
        net.propose(1, b"w%d" % i)
        net.stabilize()
    net.heartbeat(1)
    net.stabilize()
    assert set(net.commits().values()) == {BlockId(1, writes + 1)}
    return net


def forged_append(net: Network, dst: int, blocks, prev=G.id, term: int = HUGE,
                  commit=None) -> AppendBlocks:
    return AppendBlocks(src=2, dst=dst, term=term, prev=prev, blocks=tuple(blocks),
                        commit=commit if commit is not None else blocks[-1].id, seq=1)


def test_a_forged_branch_from_genesis_moves_neither_head_nor_commit():
    """The attack of issue 13, on the core alone: a fresh, well-formed branch from genesis at
    a huge term whose tip claims to be committed."""
    net = committed_cluster()
    f = net.nodes[3]
    head, commit = f.head, f.commit
    forged = chain(G, [HUGE] * 40, tag=b"FORGED")
    r = net.step(3, forged_append(net, 3, forged))
    assert (f.head, f.commit) == (head, commit)
    assert not any(f.tree.has(b.id) for b in forged)          # nothing stored
    assert r.blocks == [] and r.head is None and r.commit is None and r.apply == []
    assert not of_type(r.messages, AppendResp)                # and no answer at all
    assert f.refused_appends == 1
    assert f.status()["tripwire"] == {"refused_appends": 1, "refused_commits": 0}
    assert f.role == Role.FOLLOWER


def test_the_cluster_recovers_after_a_forged_term_and_keeps_its_history():
    net = committed_cluster()
    commit = net.nodes[3].commit
    net.step(3, forged_append(net, 3, chain(G, [HUGE] * 10, tag=b"F")))
    net.stabilize()
    # Node 3 has adopted the huge term (authentication keeps forgers out, not the core);
    # it times out, and an election above that term restores a leader with all history.
    for _ in range(60):
        if net.leader() is not None and net.nodes[net.leader()].term > HUGE:
            break
        for i in net.live():
            net.tick(i)
        net.stabilize()
    leader = net.leader()
    assert leader is not None and net.nodes[leader].term > HUGE
    net.propose(leader, b"after")
    net.stabilize()
    net.heartbeat(leader)
    net.stabilize()
    for i in net.ids:
        core = net.nodes[i]
        assert core.tree.on_path(commit) and core.commit.height > commit.height
        assert core.refused_appends <= 1


def test_a_forged_branch_forking_below_the_commit_is_refused():
    net = committed_cluster(writes=6)
    f = net.nodes[2]
    fork = f.tree.get(f.tree.at(2))                     # below the commit (height 7)
    forged = chain(fork, [HUGE] * 8, tag=b"F")
    r = net.step(2, forged_append(net, 2, forged, prev=fork.id))
    assert f.refused_appends == 1 and not of_type(r.messages, AppendResp)
    assert f.head == BlockId(1, 7) and f.commit == BlockId(1, 7)
    # ... also as a stale-looking message whose tail is below the commit
    r = net.step(2, forged_append(net, 2, forged[:2], prev=fork.id))
    assert f.refused_appends == 2 and f.head == BlockId(1, 7)


def test_a_same_term_forger_neither_replaces_the_leader_nor_resets_the_timer():
    net = committed_cluster()
    f = net.nodes[3]
    net.tick(3, 3)
    elapsed, term = f.elapsed, f.term
    # Same ids as the real chain up to the commit and beyond, other contents: the digests
    # give it away.
    forged = chain(G, [term] * 10, tag=b"F")
    assert forged[f.commit.height - 1].id == f.commit
    net.step(3, forged_append(net, 3, forged, term=term))
    assert (f.leader, f.elapsed, f.term, f.refused_appends) == (1, elapsed, term, 1)
    assert f.tree.get(f.commit).digest != forged[f.commit.height - 1].digest
    # ... and a forged run below the commit reusing our ids
    net.step(3, forged_append(net, 3, forged[:3], term=term, commit=forged[2].id))
    assert f.refused_appends == 2


def test_an_append_announcing_a_commit_off_its_own_branch_is_refused_whole():
    net = committed_cluster()
    f = net.nodes[3]
    head = f.head
    nxt = chain(f.tree.get(head), [1], tag=b"n")          # a valid next block of the leader
    r = net.step(3, AppendBlocks(src=1, dst=3, term=1, prev=head, blocks=tuple(nxt),
                                 commit=BlockId(9, 2), seq=50))
    assert f.refused_appends == 1 and f.head == head and not f.tree.has(nxt[0].id)
    assert not of_type(r.messages, AppendResp)


def test_a_commit_on_another_branch_is_counted_not_taken_and_not_answered():
    net = committed_cluster()
    f = net.nodes[3]
    commit = f.commit
    other = BlockId(7, commit.height)                    # our height, not our block
    r = net.step(3, Heartbeat(src=1, dst=3, term=net.nodes[1].term, commit=other, seq=99))
    assert f.commit == commit and f.refused_commits == 1 and r.messages == []
    # A commit above our head is merely not known yet: neither taken nor counted.
    net.step(3, Heartbeat(src=1, dst=3, term=net.nodes[1].term,
                          commit=BlockId(1, commit.height + 5), seq=100))
    assert f.commit == commit and f.refused_commits == 1


def test_a_new_leader_replacing_an_uncommitted_tail_does_not_trip():
    """Legitimate: the old leader (node 1) holds uncommitted blocks nobody else has; node 2
    wins term 2 without them, and its branch (which holds the commit) replaces node 1's
    tail when node 1 rejoins as a follower."""
    net = committed_cluster(writes=2)
    commit = net.nodes[1].commit
    net.isolate(1)
    net.propose(1, b"lost-1")
    net.propose(1, b"lost-2")
    net.stabilize()
    assert net.nodes[1].head.height == commit.height + 2
    net.elect(2)
    net.propose(2, b"new")
    net.stabilize()
    net.recover()
    net.heartbeat(2)
    net.stabilize()
    net.propose(2, b"newer")
    net.stabilize()
    f = net.nodes[1]
    assert f.role == Role.FOLLOWER and f.head == net.nodes[2].head
    assert f.tree.on_path(commit) and f.head.term == net.nodes[2].term
    assert (f.refused_appends, f.refused_commits) == (0, 0)


def test_stale_and_duplicate_appends_below_the_commit_do_not_trip():
    net = committed_cluster(writes=4)
    f = net.nodes[2]
    old = [m for m in net.sent if isinstance(m, AppendBlocks) and m.dst == 2 and m.blocks]
    assert old
    for m in old:                                        # replay all of them, late
        net.step(2, m)
    assert (f.refused_appends, f.refused_commits) == (0, 0)
    assert f.commit == net.nodes[1].commit and f.head == net.nodes[1].head
