"""BlockTree: the core's view of every stored block and of the head path (docs/protocol.md A.3,
A.7 set_head / term_summary, A.14 delete_subtree)."""
import dataclasses

import pytest

from harness import G, chain, ids
from josefine.raft.tree import BlockTree
from josefine.types import GENESIS_ID, BlockId, SafetyViolation

pytestmark = pytest.mark.timeout(60)

ONE = chain(G, [1, 1, 1])                 # (1,1) (1,2) (1,3)
TWO = chain(ONE[0], [2, 2, 2])            # (2,2) (2,3) (2,4) over (1,1)


def tree() -> BlockTree:
    t = BlockTree(G)
    for b in ONE + TWO:
        assert t.add(b)
    return t


def test_fresh_tree_holds_only_genesis_as_head():
    """docs/protocol.md A.2 (GENESIS), A.3 (path, term_range)."""
    t = BlockTree(G)
    assert t.head == GENESIS_ID and t.path == [GENESIS_ID]
    assert t.term_range == {0: [0, 0]} and t.has(GENESIS_ID) and t.on_path(GENESIS_ID)


def test_set_head_moves_across_branches_up_and_down_keeping_term_ranges():
    """A.7 set_head: the path follows the new head, term_range follows the path."""
    t = tree()
    assert t.head == GENESIS_ID          # adding blocks does not move the head
    t.set_head(BlockId(1, 3))
    assert t.path == [GENESIS_ID] + ids(ONE)
    assert t.term_range == {0: [0, 0], 1: [1, 3]}
    t.set_head(BlockId(2, 4))            # switch branch, higher
    assert t.path == [GENESIS_ID, BlockId(1, 1)] + ids(TWO)
    assert t.term_range == {0: [0, 0], 1: [1, 1], 2: [2, 4]}
    assert not t.on_path(BlockId(1, 2)) and t.on_path(BlockId(2, 3))
    assert t.at(2) == BlockId(2, 2)
    t.set_head(BlockId(1, 2))            # switch back, lower
    assert t.path == [GENESIS_ID, BlockId(1, 1), BlockId(1, 2)]
    assert t.term_range == {0: [0, 0], 1: [1, 2]}
    t.set_head(BlockId(1, 1))            # an ancestor: plain truncation
    assert t.head == BlockId(1, 1) and t.term_range == {0: [0, 0], 1: [1, 1]}
    t.append_head(chain(ONE[0], [3])[0])
    assert t.head == BlockId(3, 2) and t.term_range[3] == [2, 2]


def test_term_summary_lists_terms_above_a_height_newest_first_and_truncated():
    """A.7 term_summary: (term, highest height of that term) strictly above `above`."""
    t = tree()
    t.set_head(BlockId(2, 4))
    assert t.term_summary(0) == ((2, 4), (1, 1))
    assert t.term_summary(1) == ((2, 4),)
    assert t.term_summary(4) == ()
    assert t.term_summary(0, limit=1) == ((2, 4),)
    long = BlockTree(G)
    for b in chain(G, range(1, 21)):
        long.append_head(b)
    s = long.term_summary(0)
    assert len(s) == 16 and s[0] == (20, 20) and s[-1] == (5, 5)


def test_delete_subtree_removes_a_branch_and_its_child_links():
    """A.14: GC deletes a dead branch root and every descendant, nothing else."""
    t = tree()
    t.set_head(BlockId(1, 3))
    gone = t.delete_subtree(BlockId(2, 2))
    assert sorted(gone) == sorted(ids(TWO))
    assert not any(t.has(x) for x in ids(TWO))
    assert t.children[BlockId(1, 1)] == [BlockId(1, 2)]
    assert all(t.has(b.id) for b in ONE) and t.head == BlockId(1, 3)
    assert t.delete_subtree(BlockId(2, 2)) == []


def test_is_ancestor_follows_parents_across_branches():
    """docs/protocol.md A.2 (a ⪯ b), used by the B-invariants and GC."""
    t = tree()
    assert t.is_ancestor(BlockId(1, 1), BlockId(2, 4))
    assert t.is_ancestor(GENESIS_ID, BlockId(1, 3))
    assert t.is_ancestor(BlockId(2, 3), BlockId(2, 3))
    assert not t.is_ancestor(BlockId(1, 2), BlockId(2, 4))
    assert not t.is_ancestor(BlockId(2, 4), BlockId(2, 2))


def test_add_is_idempotent_and_refuses_a_second_block_with_the_same_id():
    """A.2: a known id with another digest is a SafetyViolation, never a merge."""
    t = tree()
    assert t.add(ONE[1]) is False
    with pytest.raises(SafetyViolation):
        t.add(dataclasses.replace(ONE[1], payload=b"other", digest=bytes(32)))


def test_evicted_path_prefix_is_answered_from_term_ranges_and_survives_set_head():
    """Eviction drops the old part of the id list; `at`, `on_path`, `path` and `set_head`
    (even onto a branch that forks below the list, which a correct core never does) keep
    answering exactly as with the whole list."""
    main = chain(G, [1, 1, 2, 2, 2, 3, 3])        # heights 1..7
    side = chain(main[1], [4, 4, 4, 4], tag=b"s")  # forks at (1,2): heights 3..6
    store = {b.id: b for b in main + side}
    t = BlockTree(G, loader=store.get)
    for b in main + side:
        t.add(b)
    t.set_head(main[-1].id)
    before = t.path
    t.evict_below(6)
    assert len(t._recent) <= 3 and t.path == before
    assert [t.at(h) for h in range(8)] == before
    assert all(t.on_path(b) for b in before) and not t.on_path(side[0].id)
    t.set_head(side[-1].id)
    assert t.path == before[:3] + ids(side)
    assert t.term_range == {0: [0, 0], 1: [1, 2], 4: [3, 6]}
    assert t.at(2) == main[1].id and t.head == side[-1].id
