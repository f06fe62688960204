"""The ChainStore contract, run against MemoryStore and LevelDBStore alike."""
import pytest
from chain_store_factories import FACTORIES

from josefine.chain.block import BlockKind, genesis, make_block
from josefine.chain.store import ChainStore, HardState, StoredState
from josefine.types import GENESIS_ID, BlockId, SafetyViolation

pytestmark = pytest.mark.timeout(60)

CLUSTER = "test-cluster"
G = genesis(CLUSTER)


@pytest.fixture(params=["memory", "leveldb"])
def factory(request, tmp_path):
    f = FACTORIES[request.param](tmp_path, CLUSTER)
    yield f


@pytest.fixture
def store(factory):
    s = factory.open()
    yield s
    s.close()


def check_before_and_after_reopen(factory, store, check):
    """Run `check` on the open store, then on a reopened one; return the reopened store."""
    check(store)
    store = factory.reopen(store)
    check(store)
    return store


def chain(n, parent=G, term=1, kind=BlockKind.NOOP, tag=b""):
    out = []
    for _ in range(n):
        parent = make_block(parent, term, kind, tag)
        out.append(parent)
    return out


def test_fresh_store_holds_only_genesis(store):
    assert isinstance(store, ChainStore)
    st = store.load()
    assert isinstance(st, StoredState)
    assert st.blocks == {GENESIS_ID: G}
    assert st.head == GENESIS_ID and st.commit == GENESIS_ID
    assert st.hard_state == HardState(0, None)
    assert len(store) == 1
    assert store.get_block(GENESIS_ID) == G
    assert store.stats()["blocks"] == 1


def test_write_then_load_and_reopen(factory):
    s = factory.open()
    a, b, c = chain(3)
    s.write(hard_state=HardState(1, 2), blocks=[a, b], head=b.id)
    s.write(blocks=[c], head=c.id, commit=b.id, sync=False)

    def check(store):
        st = store.load()
        assert st.hard_state == HardState(1, 2)
        assert st.blocks == {GENESIS_ID: G, a.id: a, b.id: b, c.id: c}
        assert st.head == c.id and st.commit == b.id
        assert store.get_block(b.id) == b
        assert store.get_block(BlockId(9, 9)) is None
        assert len(store) == 4
        stats = store.stats()
        assert (stats["blocks"], stats["term"], stats["head"], stats["commit"]) == (4, 1, c.id, b.id)

    check_before_and_after_reopen(factory, s, check).close()


def test_load_returns_independent_copies(store):
    a, b = chain(2)
    store.write(blocks=[a], head=a.id)
    st1 = store.load()
    st1.blocks.clear()
    st1.head = b.id
    st2 = store.load()
    assert set(st2.blocks) == {GENESIS_ID, a.id} and st2.head == a.id
    store.write(blocks=[b], head=b.id)
    assert b.id not in st2.blocks and st2.head == a.id


def test_same_block_again_is_a_noop(store):
    a, = chain(1)
    store.write(blocks=[a], head=a.id)
    store.write(blocks=[a, a], head=a.id)
    store.write(blocks=[G])  # genesis re-sent by a peer: same digest, nothing happens
    assert len(store) == 2 and store.get_block(a.id) == a


def test_conflicting_digest_raises_and_writes_nothing(factory):
    s = factory.open()
    a, = chain(1, tag=b"one")
    s.write(hard_state=HardState(1, None), blocks=[a], head=a.id)
    impostor, = chain(1, tag=b"two")
    assert impostor.id == a.id and impostor.digest != a.digest
    child, = chain(1, parent=a, term=2)
    with pytest.raises(SafetyViolation):
        s.write(hard_state=HardState(2, 3), blocks=[child, impostor], head=child.id,
                commit=a.id)

    def check(store):
        st = store.load()
        assert st.blocks == {GENESIS_ID: G, a.id: a}
        assert st.hard_state == HardState(1, None)
        assert st.head == a.id and st.commit == GENESIS_ID
        assert len(store) == 2

    check_before_and_after_reopen(factory, s, check).close()


def test_conflict_inside_one_batch(store):
    a, = chain(1, tag=b"one")
    b, = chain(1, tag=b"two")
    with pytest.raises(SafetyViolation):
        store.write(blocks=[a, b])
    assert len(store) == 1


def test_conflicting_genesis_raises(store):
    other = genesis("another-cluster")
    with pytest.raises(SafetyViolation):
        store.write(blocks=[other])


def test_delete(factory):
    s = factory.open()
    a, b = chain(2)
    x, y = chain(2, term=2, tag=b"branch")  # a sibling branch of a
    s.write(blocks=[a, b, x, y], head=b.id)
    assert len(s) == 5
    s.write(delete=[x.id, y.id], commit=a.id)
    s.write(delete=[x.id])  # already gone: no-op

    def check(store):
        st = store.load()
        assert set(st.blocks) == {GENESIS_ID, a.id, b.id}
        assert store.get_block(x.id) is None and len(store) == 3

    s = check_before_and_after_reopen(factory, s, check)
    # a deleted id may be stored again later (only the digest tripwire needs the block)
    s.write(blocks=[x])
    assert s.get_block(x.id) == x
    s.close()


def test_delete_rules(store):
    a, b = chain(2)
    store.write(blocks=[a, b], head=b.id, commit=a.id)
    with pytest.raises(ValueError):
        store.write(delete=[GENESIS_ID])
    with pytest.raises(ValueError):
        store.write(delete=[b.id])  # the head
    with pytest.raises(ValueError):
        store.write(delete=[a.id], head=GENESIS_ID)  # the commit
    c, = chain(1, parent=b)
    with pytest.raises(ValueError):
        store.write(blocks=[c], delete=[c.id])
    with pytest.raises(ValueError):
        store.write(head=c.id)  # not stored
    with pytest.raises(ValueError):
        store.write(blocks=[c], delete=[a.id], commit=a.id)
    st = store.load()
    assert set(st.blocks) == {GENESIS_ID, a.id, b.id} and st.head == b.id and st.commit == a.id
    store.write(blocks=[c], head=c.id)  # head may name a block of the same batch
    assert store.load().head == c.id


def test_hard_state(factory):
    s = factory.open()
    s.write(hard_state=HardState(3, None))
    s.write(hard_state=HardState(3, 1))   # vote in term 3
    s.write(hard_state=HardState(3, 1))   # same again: fine
    with pytest.raises(SafetyViolation):
        s.write(hard_state=HardState(3, 2))  # a second vote in term 3
    with pytest.raises(SafetyViolation):
        s.write(hard_state=HardState(3, None))  # forgetting the vote
    with pytest.raises(SafetyViolation):
        s.write(hard_state=HardState(2, None))  # term going back
    s.write(hard_state=HardState(5, None))

    def check(store):
        assert store.load().hard_state == HardState(5, None)

    check_before_and_after_reopen(factory, s, check).close()


def test_foreign_hard_state_type_is_accepted(store):
    from dataclasses import dataclass

    @dataclass(frozen=True)
    class OtherHardState:
        term: int
        voted_for: int | None

    store.write(hard_state=OtherHardState(4, 2))
    hs = store.load().hard_state
    assert hs == HardState(4, 2) and type(hs) is HardState


def test_many_writes_stay_consistent(factory):
    s = factory.open()
    blocks = chain(300)
    for i, b in enumerate(blocks):
        s.write(hard_state=HardState(1, 1), blocks=[b], head=b.id,
                commit=blocks[i // 2].id, sync=(i % 7 == 0))
    s = factory.reopen(s)
    st = s.load()
    assert len(st.blocks) == 301 and st.head == blocks[-1].id
    assert st.commit == blocks[299 // 2].id
    s.close()
