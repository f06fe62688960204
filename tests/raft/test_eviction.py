"""Old committed blocks leave memory when the core has a loader, and come back on demand.

Memory must stay flat under a long write stream; a follower that fell far behind must
still be caught up with blocks that were evicted (read back through the loader)."""
from __future__ import annotations

import pytest

from josefine.chain.block import Command, genesis
from josefine.chain.memory import MemoryStore
from josefine.messages import Persisted, Propose, Tick, VoteResp
from josefine.raft.core import CoreConfig, RaftCore, Role

pytestmark = pytest.mark.timeout(60)

CID = "evict"


class Node:
    def __init__(self, nid: int, keep: int) -> None:
        self.store = MemoryStore(CID)
        self.core = RaftCore(CoreConfig(node_id=nid, voters=frozenset({1, 2, 3}),
                                        pre_vote=False, check_quorum=False, keep_blocks=keep,
                                        keep_bytes=64, max_batch_blocks=8),
                             genesis(CID), loader=self.store.get_block)

    def run(self, inp, net: list) -> None:  # noqa: ANN001
        r = self.core.step(inp)
        self.store.write(hard_state=r.hard_state, blocks=r.blocks, head=r.head,
                         commit=r.commit, delete=r.delete)
        net.extend(r.eager)
        net.extend(r.messages)
        if r.head is not None:
            self.run(Persisted(head=r.head), net)


def test_memory_stays_bounded_and_a_far_behind_follower_still_catches_up():
    """docs/protocol.md A.7 catch-up; the ChainView reads evicted blocks back from the store."""
    keep = 16
    nodes = {i: Node(i, keep) for i in (1, 2, 3)}
    net: list = []
    n1 = nodes[1]
    while n1.core.role != Role.CANDIDATE:
        n1.run(Tick(), net)
    net.clear()
    n1.run(VoteResp(src=2, dst=1, term=n1.core.term, granted=True), net)
    assert n1.core.role == Role.LEADER

    def pump(down: set[int]) -> None:
        while net:
            m = net.pop(0)
            if m.dst in down or m.src in down:
                continue
            nodes[m.dst].run(m, net)

    pump({3})
    for seq in range(1, 301):   # node 3 is down: 300 blocks it will need later
        n1.run(Propose(commands=(Command("c", seq, b"v%d" % seq),)), net)
        pump({3})
    assert n1.core.commit.height == 301
    assert len(n1.core.tree.blocks) < 3 * keep, len(n1.core.tree.blocks)
    assert len(nodes[2].core.tree.blocks) < 3 * keep
    assert n1.core.tree.evicted_below > 200
    # the path's ids are held as a list only near the head (it used to grow by one id per
    # block forever); older ids still answer `at` and `on_path`, from the term ranges
    for n in (n1, nodes[2]):
        t = n.core.tree
        assert len(t._recent) < 3 * keep, len(t._recent)
        full = t.path
        assert len(full) == 302 and full[0].height == 0 and full[-1] == t.head
        assert all(t.at(h) == full[h] and t.on_path(full[h]) for h in range(302))
        assert not t.on_path(type(full[5])(full[5].term + 7, 5))
    # node 3 comes back: the leader finds the fork point and resends evicted blocks
    for _ in range(6):
        n1.run(Tick(), net)
        pump(set())
    assert nodes[3].core.head == n1.core.head
    assert nodes[3].core.commit.height >= 300
    assert len(nodes[3].store) == len(n1.store)
    # reading an evicted block back yields the same block as the leader's store holds
    bid = n1.core.tree.at(5)
    assert bid not in n1.core.tree.blocks
    assert n1.core.tree.get(bid) == nodes[3].store.get_block(bid)
