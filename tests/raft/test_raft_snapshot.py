"""Snapshots, compaction and InstallSnapshot in the pure core (docs/protocol.md A.13, A.14;
scenarios C.54–C.56 after etcd's raft_snap_test.go and raft_test.go).

The harness carries a leader's snapshot to the follower's disk when its InstallSnapshot is
delivered (the runtime's chunk stream, in one piece), and checks B8/B15 on the way: what a
node applied since its last restore is exactly its committed path above the restored base.
"""
from __future__ import annotations

from harness import G, Network, of_type

from josefine.chain.block import BlockKind, base_header, decode_commands, make_block
from josefine.messages import (AppendBlocks, AppendResp, Heartbeat, HeartbeatResp,
                               InstallSnapshot,
                               InstallSnapshotResp, SnapshotStatus)
from josefine.raft.core import Role
from josefine.raft.progress import ProgressState
from josefine.types import BlockId


def _write(net: Network, leader: int, n: int, tag: bytes = b"v") -> None:
    for k in range(n):
        net.propose(leader, tag + b"%d" % k)
        net.stabilize()


def _heartbeats(net: Network, leader: int, n: int = 4) -> None:
    """A few rounds: an isolated follower's lost appends are noticed after two (progress.py)."""
    for _ in range(n):
        net.heartbeat(leader)


def _two_snapshots(net: Network, leader: int, n: int = 50) -> BlockId:
    """Write, snapshot, write, snapshot on every live node: the base passes the first one."""
    _write(net, leader, n, b"a")
    for i in net.live():
        net.snapshot(i)
    _write(net, leader, n, b"b")
    for i in net.live():
        last = net.snapshot(i)
    return last


def test_compaction_keeps_the_previous_snapshot_interval_then_cuts_at_it():
    net = Network(3)
    net.elect(1)
    _write(net, 1, 10)
    first = net.snapshot(1)
    core = net.nodes[1]
    assert core.tree.root.id.height == 0, "the first snapshot compacts nothing"
    assert core.snapshot is not None and core.snapshot[0] == first
    _write(net, 1, 10)
    second = net.snapshot(1)
    assert core.tree.root.id == first and core.snapshot[0] == second
    disk = net.disk[1]
    assert disk.base is not None and disk.base.id == first
    assert min(b.height for b in disk.blocks) == first.height + 1, "blocks at or below the base stay on disk"
    assert net.log[-1][2].base == base_header(first, net.registry[first].digest)
    # the path below the base is gone from memory; above it all is as before
    assert core.tree.path[0] == first and core.tree.path[-1] == core.head


def test_compaction_without_keeping_the_previous_cuts_at_the_new_snapshot():
    net = Network(3, keep_previous_snapshot=False)
    net.elect(1)
    _write(net, 1, 5)
    last = net.snapshot(1)
    assert net.nodes[1].tree.root.id == last
    assert net.disk[1].base is not None and net.disk[1].base.id == last


def test_a_snapshot_not_on_the_applied_path_is_not_used():
    net = Network(3)
    net.elect(1)
    _write(net, 1, 3)
    core = net.nodes[1]
    ahead = BlockId(core.term, core.applied.height + 5)
    from josefine.messages import SnapshotTaken
    r = net.step(1, SnapshotTaken(last=ahead, digest=bytes(32)))
    assert core.snapshot is None and r.base is None


def test_slow_follower_catches_up_by_install_snapshot_then_blocks():
    """C.54 [SlowNodeRestore, ProvideSnap, RestoreFromSnapMsg]."""
    net = Network(3)
    net.elect(1)
    _write(net, 1, 3)
    net.isolate(3)
    _two_snapshots(net, 1)
    base = net.nodes[1].tree.root.id
    assert base.height > net.nodes[3].head.height, "the leader compacted what node 3 needs"
    net.recover()
    mark = len(net.sent)
    _heartbeats(net, 1)
    _write(net, 1, 2, b"c")
    sent = net.sent[mark:]
    inst = of_type(sent, InstallSnapshot, dst=3)
    assert len(inst) == 1 and inst[0].last == net.nodes[1].snapshot[0]
    assert of_type(sent, InstallSnapshotResp)[0].success
    net.heartbeat(1)   # the last commit reaches followers with the next heartbeat
    f, lead = net.nodes[3], net.nodes[1]
    assert f.commit == lead.commit and f.head == lead.head
    assert net.sm[3][-1] == net.sm[1][-1] and len(net.sm[3]) == len(net.sm[1]), \
        "the follower's state machine holds every command"
    assert net.disk[3].base is not None and net.disk[3].base.id == inst[0].last
    assert any(e == (3, ("installed", f.term, inst[0].last)) for e in net.events)
    p = lead.prog[3]
    assert p.state == ProgressState.REPLICATE and p.match == lead.head


def test_replication_pauses_while_a_snapshot_is_pending():
    """C.56 [PendingSnapshotPauseReplication, SendingSnapshotSetPendingSnapshot]."""
    net = Network(3)
    net.elect(1)
    net.isolate(3)
    _two_snapshots(net, 1, 20)
    net.recover()
    net.ignore(InstallSnapshotResp)   # the install is never answered
    _heartbeats(net, 1)
    p = net.nodes[1].prog[3]
    assert p.state == ProgressState.SNAPSHOT and p.pending_snapshot == net.nodes[1].snapshot[0]
    mark = len(net.sent)
    _write(net, 1, 5, b"p")
    net.heartbeat(1)
    assert of_type(net.sent[mark:], AppendBlocks, dst=3) == [], "no blocks while pending"
    assert of_type(net.sent[mark:], Heartbeat, dst=3), "heartbeats go on"
    assert of_type(net.sent[mark:], AppendBlocks, dst=2), "the other follower gets blocks"


def test_snapshot_failure_returns_to_probe_and_a_heartbeat_answer_retries():
    """C.56 [SnapshotFailure]."""
    net = Network(3)
    net.elect(1)
    net.isolate(3)
    _two_snapshots(net, 1, 20)
    net.recover()
    net.ignore(InstallSnapshot)
    _heartbeats(net, 1)
    lead = net.nodes[1]
    p = lead.prog[3]
    assert p.state == ProgressState.SNAPSHOT
    net.step(1, SnapshotStatus(peer=3, last=p.pending_snapshot, ok=False))
    assert p.state == ProgressState.PROBE and p.paused(lead.cfg.max_inflight)
    net.recover()
    mark = len(net.sent)
    net.heartbeat(1)
    assert of_type(net.sent[mark:], InstallSnapshot, dst=3), "probing again sends it again"
    assert net.nodes[3].commit == lead.commit


def test_snapshot_unanswered_for_the_timeout_is_probed_again():
    net = Network(3, snapshot_timeout_ticks=30)
    net.elect(1)
    net.isolate(3)
    _two_snapshots(net, 1, 20)
    net.recover()
    net.ignore(InstallSnapshotResp)
    _heartbeats(net, 1)
    p = net.nodes[1].prog[3]
    assert p.state == ProgressState.SNAPSHOT
    for _ in range(29):
        net.tick(1)
        net.stabilize()
    assert p.state == ProgressState.SNAPSHOT
    net.ignore(HeartbeatResp)   # no answer can resend it: the timeout alone acts
    for _ in range(31):
        net.tick(1)
        net.stabilize()
    assert p.state == ProgressState.PROBE and p.paused(net.nodes[1].cfg.max_inflight)
    net.recover()
    for _ in range(4):
        net.heartbeat(1)
    assert net.nodes[3].commit == net.nodes[1].commit


def test_snapshot_at_or_below_the_followers_commit_is_acknowledged_and_ignored():
    """C.55 [RestoreIgnoreSnapshot]."""
    net = Network(3)
    net.elect(1)
    _write(net, 1, 6)
    net.heartbeat(1)
    last = net.snapshot(1)
    f = net.nodes[2]
    before = (f.head, f.commit, f.tree.root.id, list(net.sm[2]))
    assert last.height <= f.commit.height
    net.inject(InstallSnapshot(src=1, dst=2, term=f.term, last=last,
                               last_digest=net.registry[last].digest, voters=(1, 2, 3)))
    r = net.deliver(lambda m: isinstance(m, InstallSnapshot))
    assert r and (f.head, f.commit, f.tree.root.id, list(net.sm[2])) == before
    assert not any(e[0] == "installed" for i, e in net.events if i == 2)
    resp = of_type(net.queue, InstallSnapshotResp)
    assert resp and resp[-1].success and resp[-1].match == last
    net.stabilize()


def test_snapshot_whose_base_the_follower_holds_keeps_its_descendants():
    """C.55 [IgnoreProvidingSnap]: the follower holds blocks past the snapshot's base on the
    same branch (not yet known committed); installing keeps them and its head."""
    net = Network(3)
    net.elect(1)
    _write(net, 1, 4)
    net.heartbeat(1)
    # no acks reach the leader: node 2 stores three blocks that do not commit
    net.filters.append(lambda m: isinstance(m, AppendResp))
    _write(net, 1, 3, b"x")
    net.recover()
    f = net.nodes[2]
    last = f.tree.at(f.commit.height + 1)
    assert f.head.height == last.height + 2
    # the leader's snapshot of `last`: node 2's state plus the commands of `last`
    cmds = list(net.sm[2]) + [(c.client_id, c.seq, c.data)
                              for c in decode_commands(net.registry[last].payload)]
    net.disk[1].snaps[last] = (net.registry[last].digest, cmds)
    head = f.head
    net.inject(InstallSnapshot(src=1, dst=2, term=f.term, last=last,
                               last_digest=net.registry[last].digest, voters=(1, 2, 3)))
    net.deliver(lambda m: isinstance(m, InstallSnapshot))
    assert f.head == head, "the blocks above the base are kept, and the head with them"
    assert f.tree.root.id == last and f.commit == last and net.sm[2] == cmds
    assert net.deleted[2] == []
    _heartbeats(net, 1)
    assert f.commit == net.nodes[1].commit == head


def test_install_deletes_a_branch_that_does_not_extend_the_base():
    net = Network(3)
    net.elect(3)
    _write(net, 3, 2)
    net.isolate(3)
    net.propose(3, b"stray")   # a block only node 3 holds, on a branch that will die
    stray = net.nodes[3].head
    net.elect(1)
    _two_snapshots(net, 1, 10)
    net.recover()
    _heartbeats(net, 1)
    # below the new base: gone with everything else there, by the base write
    assert stray not in net.disk[3].blocks and not net.nodes[3].tree.has(stray)
    assert net.nodes[3].commit == net.nodes[1].commit


def test_restart_restores_the_snapshot_and_replays_only_the_tail():
    net = Network(3)
    net.elect(1)
    _two_snapshots(net, 1, 10)
    _write(net, 1, 3, b"t")
    before = list(net.sm[2])
    net.crash(2)
    core = net.restart(2)
    d = net.disk[2]
    assert d.base is not None and core.tree.root.id == d.base.id
    assert core.applied == net.nodes[2].commit
    assert len(net.applied[2]) < 10, "only the tail after the newest snapshot is replayed"
    assert net.sm[2] == before
    net.heartbeat(1)
    net.check()


def test_old_append_below_the_base_is_clipped_and_acknowledged_at_the_base():
    net = Network(3, keep_previous_snapshot=False)
    net.elect(1)
    _write(net, 1, 5)
    for i in net.ids:
        net.snapshot(i)
    f = net.nodes[2]
    root = f.tree.root
    below = net.registry[root.id]
    old = [net.registry[below.parent], below]
    net.inject(AppendBlocks(src=1, dst=2, term=f.term, prev=old[0].parent, blocks=tuple(old),
                            commit=old[0].id, seq=500))
    net.deliver(lambda m: isinstance(m, AppendBlocks) and m.seq == 500)
    resp = [m for m in net.queue if isinstance(m, AppendResp) and m.src == 2]
    assert resp and resp[-1].success and resp[-1].match == root.id
    assert f.refused_appends == 0
    net.stabilize()


def test_a_block_at_the_base_height_that_is_not_the_base_is_refused():
    net = Network(3, keep_previous_snapshot=False)
    net.elect(1)
    _write(net, 1, 5)
    net.snapshot(2)
    f = net.nodes[2]
    root = f.tree.root
    parent = net.registry[net.nodes[1].tree.at(root.id.height - 1)]
    forged = make_block(parent, f.term, BlockKind.NOOP, b"forged")
    head = f.head
    net.inject(AppendBlocks(src=1, dst=2, term=f.term, prev=parent.id, blocks=(forged,),
                            commit=parent.id, seq=501))
    net.deliver(lambda m: isinstance(m, AppendBlocks) and m.seq == 501)
    assert f.refused_appends == 1 and f.head == head
    net.stabilize()


def test_a_new_leader_sends_its_snapshot_to_a_follower_below_its_base():
    """The snapshot a follower installed is its own to serve when it leads."""
    net = Network(3)
    net.elect(1)
    net.isolate(3)
    _two_snapshots(net, 1, 10)
    net.recover()
    _heartbeats(net, 1)
    assert net.nodes[3].snapshot is not None
    net.isolate(2)
    _write(net, 1, 3, b"n")
    net.recover()
    net.heartbeat(1)
    net.crash(1)
    net.elect(3)
    assert net.nodes[3].role == Role.LEADER
    _write(net, 3, 2, b"m")
    net.heartbeat(3)
    assert net.nodes[2].commit == net.nodes[3].commit


def test_an_append_on_the_base_with_an_older_commit_is_accepted():
    """A new leader's commit may lag ours, down below our base: it says nothing new, and
    the tripwire must not take it for a branch that lacks our commit."""
    net = Network(3, keep_previous_snapshot=False)
    net.elect(1)
    _write(net, 1, 4)
    net.heartbeat(1)
    net.snapshot(2)
    f = net.nodes[2]
    root = f.tree.root
    child = make_block(net.registry[root.id], f.term, BlockKind.NOOP, b"")
    net.registry[child.id] = child
    net.inject(AppendBlocks(src=1, dst=2, term=f.term, prev=root.id, blocks=(child,),
                            commit=G.id, seq=777))
    net.deliver(lambda m: isinstance(m, AppendBlocks) and m.seq == 777)
    assert f.refused_appends == 0
    resp = [m for m in net.queue if isinstance(m, AppendResp) and m.src == 2 and m.seq == 777]
    assert resp and resp[0].success
