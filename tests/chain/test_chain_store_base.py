"""The store's base (docs/snapshots.md "The store's base"), for MemoryStore and LevelDBStore.

A compaction keeps the base as a header and deletes every block record at or below it, in
the same atomic batch as the rest of the write; a restart finds the base, the tail above it,
head and commit. The LevelDB-only part (raw records, background compaction, disk usage)
is at the end.
"""
from __future__ import annotations

import logging
import os
import threading

import plyvel
import pytest
from chain_store_factories import FACTORIES

from josefine.chain.block import BlockKind, base_header, genesis, make_block, verify_digest
from josefine.chain.leveldb import LevelDBStore, block_key
from josefine.chain.memory import MemoryStore
from josefine.chain.store import CorruptStoreError, HardState
from josefine.codec import packb, unpackb
from josefine.types import GENESIS_ID, BlockId, SafetyViolation

pytestmark = pytest.mark.timeout(120)

CLUSTER = "base-cluster"
G = genesis(CLUSTER)


def chain(n, parent=G, term=1, tag=b""):
    out = []
    for _ in range(n):
        parent = make_block(parent, term, BlockKind.NORMAL, tag)
        out.append(parent)
    return out


# a1..a10 on term 1; a sibling branch x3..x6 of term 2 forks off a2
A = chain(10)
X = chain(4, parent=A[1], term=2, tag=b"x")
a = {b.height: b for b in A}
x = {b.height: b for b in X}


@pytest.fixture(params=["memory", "leveldb"])
def factory(request, tmp_path):
    return FACTORIES[request.param](tmp_path, CLUSTER)


@pytest.fixture
def store(factory):
    s = factory.open()
    yield s
    s.close()


def fill(store, commit=None):
    """The main chain and the sibling branch, head a10, commit a3 unless told."""
    store.write(hard_state=HardState(2, 1), blocks=A + X, head=a[10].id,
                commit=(commit or a[3]).id)


def everything(store):
    """What a caller can see of a store, to check that a refused batch changed nothing."""
    st = store.load()
    stats = store.stats()
    return (st.hard_state, st.blocks, st.head, st.commit, st.base, len(store),
            stats["base"], stats["blocks"], stats["head"], stats["commit"])


def stored_ids(store):
    return {b.id for b in store.iter_blocks()}


# ------------------------------------------------------------------------------ compaction


def test_base_header_stands_in_for_the_block():
    h = base_header(a[5].id, a[5].digest)
    assert (h.id, h.parent, h.payload, h.digest) == (a[5].id, None, b"", a[5].digest)
    assert verify_digest(a[6], h.digest)          # all a child's check needs
    assert base_header(G.id, G.digest) == G       # genesis is its own header


def test_fresh_store_has_genesis_as_base(store):
    st = store.load()
    assert st.base == G and GENESIS_ID in st.blocks
    assert store.stats()["base"] == GENESIS_ID and store.stats()["orphans"] == 0


def test_compaction_deletes_exactly_the_records_at_or_below_the_base(store):
    fill(store)
    assert len(store) == 1 + 10 + 4
    store.write(base=a[5])
    # a6..a10 and the branch blocks above height 5 (x6) stay; genesis, a1..a5, x3..x5 go
    assert stored_ids(store) == {a[h].id for h in range(6, 11)} | {x[6].id}
    assert len(store) == 6 and store.stats()["blocks"] == 6
    assert store.get_block(a[5].id) is None and store.get_block(GENESIS_ID) is None
    assert store.get_block(a[6].id) == a[6]
    st = store.load()
    assert st.base == base_header(a[5].id, a[5].digest)
    assert st.blocks == {a[h].id: a[h] for h in range(6, 11)}   # x6 is an orphan now
    assert st.head == a[10].id and st.commit == a[5].id          # commit a3 lifted to the base
    assert store.stats()["base"] == a[5].id


def test_compaction_can_move_up_again_and_accepts_a_header(store):
    fill(store)
    store.write(base=a[3], commit=a[3].id)
    store.write(base=base_header(a[8].id, a[8].digest), commit=a[9].id)
    assert stored_ids(store) == {a[9].id, a[10].id}
    st = store.load()
    assert st.base.id == a[8].id and st.commit == a[9].id
    assert set(st.blocks) == {a[9].id, a[10].id}


def test_reopen_returns_the_base_the_tail_head_and_commit(factory):
    s = factory.open()
    fill(s)
    s.write(base=a[5], commit=a[7].id, sync=True)
    s = factory.reopen(s)
    st = s.load()
    assert st.base == base_header(a[5].id, a[5].digest)
    assert st.blocks == {a[h].id: a[h] for h in range(6, 11)}
    assert GENESIS_ID not in st.blocks and a[5].id not in st.blocks
    assert st.head == a[10].id and st.commit == a[7].id
    assert st.hard_state == HardState(2, 1)
    assert verify_digest(st.blocks[a[6].id], st.base.digest)
    assert len(s) == 6 and s.stats()["base"] == a[5].id and s.stats()["orphans"] == 1
    # and the store goes on from there: a child of the tail, markers on the base
    a11 = make_block(a[10], 3, BlockKind.NOOP, b"")
    s.write(blocks=[a11], head=a11.id, commit=a11.id)
    s.write(commit=a[5].id)                       # the base is a valid marker
    s = factory.reopen(s)
    st = s.load()
    assert a11.id in st.blocks and st.head == a11.id and st.commit == a[5].id
    s.close()


def test_head_and_commit_may_name_the_base(store):
    fill(store)
    store.write(base=a[10], head=a[10].id, commit=a[10].id)
    st = store.load()
    assert st.blocks == {} and st.head == st.commit == a[10].id and len(store) == 0


def test_install_style_batch_base_with_the_blocks_after_it(store):
    """A follower installing a snapshot writes base, head, commit and the next blocks at
    once; blocks at or below the base in that batch are covered by the snapshot."""
    store.write(hard_state=HardState(3, None), blocks=A[3:8], base=a[6], head=a[8].id,
                commit=a[6].id)
    st = store.load()
    assert st.base.id == a[6].id and st.blocks == {a[7].id: a[7], a[8].id: a[8]}
    assert stored_ids(store) == {a[7].id, a[8].id}


def test_commit_written_below_the_base_is_lifted_to_it(store):
    fill(store)
    store.write(base=a[5], commit=a[8].id)
    store.write(commit=a[2].id)          # a lagging lazy marker
    assert store.load().commit == a[5].id
    assert store.stats()["commit"] == a[5].id


def test_deleting_below_the_base_is_a_noop(store):
    fill(store)
    store.write(base=a[5])
    store.write(delete=[a[3].id, GENESIS_ID, a[5].id, x[6].id])
    assert stored_ids(store) == {a[h].id for h in range(6, 11)}


def test_blocks_at_or_below_the_base_are_not_stored_again(store):
    fill(store)
    store.write(base=a[5])
    store.write(blocks=[G, a[2], a[5], x[4]])    # re-sent by a peer: nothing to keep
    assert len(store) == 6 and store.get_block(a[2].id) is None


# -------------------------------------------------------------------------- refused batches


@pytest.mark.parametrize("case", ["back", "same-height", "head-below", "head-explicit-below",
                                  "head-on-deleted-branch", "base-digest", "bad-child"])
def test_refused_base_batch_changes_nothing(factory, case):
    s = factory.open()
    fill(s)
    s.write(base=a[5], commit=a[6].id)
    y6 = make_block(a[5], 3, BlockKind.NOOP, b"")
    y7 = make_block(y6, 3, BlockKind.NOOP, b"")
    batch = {"hard_state": HardState(9, 9), "blocks": [make_block(a[10], 9, BlockKind.NOOP,
                                                                  b"")]}
    error: type[Exception] = ValueError
    if case == "back":
        batch["base"] = a[3]
    elif case == "same-height":
        batch["base"] = x[5]
    elif case == "head-below":              # a base above the head, head not moved
        s.write(head=a[7].id)
        batch = {"base": a[8]}
    elif case == "head-explicit-below":
        batch["base"] = a[8]
        batch["head"] = a[7].id
    elif case == "head-on-deleted-branch":   # head on a sibling of the new base
        s.write(blocks=[y6], head=y6.id)
        batch = {"base": a[6]}               # height 6 is compacted: y6 would go too
    elif case == "base-digest":             # the base id recorded with another digest
        batch["base"] = base_header(a[5].id, b"\x00" * 32)
        error = SafetyViolation
    else:                                    # a stored child that the new base contradicts
        s.write(blocks=[y6, y7])
        s.write(delete=[y6.id])
        batch["base"] = base_header(y6.id, b"\x01" * 32)
        error = SafetyViolation
    before = everything(s)
    raw = _raw_records(s)
    with pytest.raises(error):
        s.write(**batch)
    assert everything(s) == before
    assert _raw_records(s) == raw
    s = factory.reopen(s)
    assert everything(s) == before
    s.close()


def _raw_records(store):
    """Every record as LevelDB holds it (None for the memory store: `everything` covers it)."""
    if not isinstance(store, LevelDBStore):
        return None
    with store._db.iterator() as it:
        return dict(it)


def test_a_child_in_the_batch_must_verify_against_the_base(store):
    fill(store)
    store.write(base=a[5])
    forged = type(a[6])(BlockId(4, 6), a[5].id, BlockKind.NORMAL, b"", b"\x02" * 32)
    with pytest.raises(SafetyViolation):
        store.write(blocks=[forged], head=forged.id)
    assert store.get_block(forged.id) is None


# -------------------------------------------------------------------------------- orphans


def test_orphans_are_skipped_counted_and_logged(factory, caplog):
    s = factory.open()
    x7 = make_block(x[6], 2, BlockKind.NORMAL, b"x7")
    fill(s)
    s.write(blocks=[x7])
    s.write(base=a[5])     # x5 is compacted: x6 and its child x7 no longer reach the base
    assert len(s) == 7     # records: a6..a10, x6, x7

    def check(store):
        st = store.load()
        assert st.blocks == {a[h].id: a[h] for h in range(6, 11)}
        assert store.stats()["orphans"] == 2 and len(store) == 7
        assert any("2 orphan" in r.getMessage() for r in caplog.records)

    with caplog.at_level(logging.WARNING):
        check(s)
        caplog.clear()
        s = factory.reopen(s)     # LevelDB loads (and warns) while it opens
        check(s)
    s.close()


# --------------------------------------------------------------- MemoryStore crash rollback


def test_memory_snapshot_restore_round_trips_the_base():
    s = MemoryStore(CLUSTER)
    fill(s)
    before = s.snapshot()
    s.write(base=a[5], sync=False)
    after = s.snapshot()
    s.write(blocks=[make_block(a[10], 2, BlockKind.NOOP, b"")])
    s.restore(before)          # the compaction was not synced: a crash takes it back
    st = s.load()
    assert st.base == G and s.stats()["base"] == GENESIS_ID
    assert len(st.blocks) == 15 and st.commit == a[3].id
    s.restore(after)
    st = s.load()
    assert st.base.id == a[5].id and set(st.blocks) == {a[h].id for h in range(6, 11)}
    assert st.commit == a[5].id


# ---------------------------------------------------------------------------- LevelDB only


def _raw(path):
    return plyvel.DB(str(path), create_if_missing=False)


def test_leveldb_base_record_and_block_keys_on_disk(tmp_path):
    s = LevelDBStore(tmp_path / "db", CLUSTER)
    fill(s)
    s.write(base=a[5])
    s.close()
    db = _raw(tmp_path / "db")
    try:
        assert unpackb(db.get(b"h/base")) == [1, 5, a[5].digest]
        assert {k for k, _ in db.iterator(prefix=b"b/")} == \
            {block_key(a[h].id) for h in range(6, 11)} | {block_key(x[6].id)}
        assert unpackb(db.get(b"h/commit")) == [1, 5]
    finally:
        db.close()


def _compacted(path):
    s = LevelDBStore(path, CLUSTER)
    fill(s)
    s.write(base=a[5], commit=a[6].id)
    s.close()


def _put(path, key, value):
    db = _raw(path)
    try:
        if value is None:
            db.delete(key)
        else:
            db.put(key, value)
    finally:
        db.close()


def test_leveldb_commit_marker_below_the_base_loads_as_the_base(tmp_path):
    path = tmp_path / "db"
    _compacted(path)
    _put(path, b"h/commit", packb([1, 2]))    # e.g. written before a crash lost the rest
    with LevelDBStore(path, CLUSTER) as s:
        assert s.load().commit == a[5].id


@pytest.mark.parametrize("case", ["garbage", "shape", "short-digest", "child-mismatch",
                                  "head-gone", "commit-above-gone", "foreign-genesis"])
def test_leveldb_corrupt_base_names_the_key(tmp_path, case):
    path = tmp_path / "db"
    _compacted(path)
    key, value = b"h/base", None
    if case == "garbage":
        value = b"\xc1"
    elif case == "shape":
        value = packb([1, 5])
    elif case == "short-digest":
        value = packb([1, 5, b"\x00" * 5])
    elif case == "child-mismatch":     # decodes, but a6 does not chain onto it
        _put(path, b"h/base", packb([1, 5, b"\x00" * 32]))
        key = block_key(a[6].id)
    elif case == "head-gone":
        key, value = b"h/head", packb([1, 4])
    elif case == "commit-above-gone":
        key, value = b"h/commit", packb([7, 7])
    else:
        value = packb([0, 0, genesis("other").digest])
    if value is not None:
        _put(path, key, value)
    with pytest.raises(CorruptStoreError) as exc:
        LevelDBStore(path, CLUSTER)
    assert exc.value.key == key and repr(key) in str(exc.value)


def test_leveldb_genesis_is_not_required_once_compacted(tmp_path):
    path = tmp_path / "db"
    _compacted(path)
    db = _raw(path)
    try:
        assert db.get(block_key(GENESIS_ID)) is None
    finally:
        db.close()
    with LevelDBStore(path, CLUSTER) as s:
        assert s.load().base.id == a[5].id


def _dir_bytes(path):
    return sum(os.path.getsize(os.path.join(path, f)) for f in os.listdir(path))


def test_leveldb_compaction_gives_the_disk_space_back(tmp_path):
    path = tmp_path / "db"
    s = LevelDBStore(path, CLUSTER)
    try:
        blocks, parent = [], G
        for _ in range(5000):
            parent = make_block(parent, 1, BlockKind.NORMAL, os.urandom(1024))
            blocks.append(parent)
        for i in range(0, 5000, 100):
            s.write(blocks=blocks[i:i + 100], head=blocks[i + 99].id, sync=False)
        s.write(commit=blocks[-1].id)
        full = _dir_bytes(path)
        assert full > 5000 * 1024
        s.write(base=blocks[-11])
        assert len(s) == 10
        assert s.wait_compacted(60)
        assert s.stats()["compactions"] >= 1
        assert _dir_bytes(path) < full / 2
    finally:
        s.close()
    with LevelDBStore(path, CLUSTER) as s2:
        assert set(s2.load().blocks) == {b.id for b in blocks[-10:]}


class _GatedDB:
    """A plyvel DB whose compact_range waits for the test to let it run."""

    def __init__(self, real):
        self.real = real
        self.started = threading.Semaphore(0)
        self.release = threading.Event()
        self.calls = 0

    def compact_range(self, **kw):
        self.calls += 1
        self.started.release()
        assert self.release.wait(30)
        self.real.compact_range(**kw)   # raises if the DB was closed under it


def test_leveldb_one_compaction_at_a_time_and_requests_meanwhile_run_it_once_more(tmp_path):
    s = LevelDBStore(tmp_path / "db", CLUSTER)
    gate = s._compactor._db = _GatedDB(s._db)
    try:
        fill(s)
        s.write(base=a[3])
        assert gate.started.acquire(timeout=10)
        s.write(base=a[4])             # while the first one runs: both coalesce into one rerun
        s.write(base=a[5])
        assert not s.wait_compacted(0)
        gate.release.set()
        assert s.wait_compacted(30)
        assert s.stats()["compactions"] == 2
        assert gate.calls == 2 * 2      # each run makes two passes (see _Compactor._run)
    finally:
        gate.release.set()
        s.close()


def test_leveldb_close_waits_for_a_running_compaction(tmp_path):
    s = LevelDBStore(tmp_path / "db", CLUSTER)
    gate = s._compactor._db = _GatedDB(s._db)
    fill(s)
    s.write(base=a[5])
    assert gate.started.acquire(timeout=10)
    errors = []

    def close():
        try:
            s.close()
        except Exception as exc:   # pragma: no cover - only if close() misbehaves
            errors.append(exc)

    closer = threading.Thread(target=close)
    closer.start()
    closer.join(0.2)
    assert closer.is_alive()       # it cannot finish while the compaction is held
    gate.release.set()
    closer.join(30)
    assert not closer.is_alive() and not errors
    assert s.stats()["compactions"] == 1   # the held compaction ran on an open DB
    with LevelDBStore(tmp_path / "db", CLUSTER) as s2:
        assert s2.load().base.id == a[5].id


# ------------------------------------------------------------ both stores, random batches


def _pool():
    m = chain(5)
    b3 = make_block(m[1], 2, BlockKind.NOOP, b"")
    b4 = make_block(b3, 2, BlockKind.NORMAL, b"b4")
    twin = make_block(m[3], 1, BlockKind.NORMAL, b"twin")     # same id as m[4], the tip
    return [G, *m, b3, b4, twin]


POOL = _pool()
POOL_IDS = sorted({b.id for b in POOL})
BASES = [G, POOL[2], POOL[3], POOL[4], POOL[6], base_header(POOL[3].id, b"\x03" * 32)]


def _batches():
    from hypothesis import strategies as st
    return st.fixed_dictionaries({
        "blocks": st.lists(st.sampled_from(POOL), max_size=4),
        "head": st.none() | st.sampled_from(POOL_IDS),
        "commit": st.none() | st.sampled_from(POOL_IDS),
        "delete": st.lists(st.sampled_from(POOL_IDS), max_size=2),
        "base": st.none() | st.sampled_from(BASES),
    })


def _outcome(store, batch):
    try:
        store.write(**batch)
        return "ok"
    except SafetyViolation:
        return "safety"
    except ValueError:
        return "value"


def _state(store):
    """What load() gives; a store the random batches made unloadable must say so in both.

    (The random batches do what no correct caller does: store a block without its parent,
    delete a parent and keep its child. Compacting past such a gap leaves the head or the
    commit on an orphan, which load() refuses rather than guess.)
    """
    try:
        st = store.load()
    except CorruptStoreError:
        return "corrupt"
    return st.blocks, st.head, st.commit, st.base, len(store), store.stats()["orphans"]


def test_both_stores_agree_on_random_batches_with_bases():
    import tempfile

    from hypothesis import HealthCheck, event, given, settings
    from hypothesis import strategies as st

    @settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(st.lists(_batches(), max_size=10))
    def run(ops):
        with tempfile.TemporaryDirectory() as d:
            mem = MemoryStore(CLUSTER)
            lvl = LevelDBStore(d, CLUSTER)
            try:
                for batch in ops:
                    before = _state(mem)
                    o = _outcome(mem, batch)
                    assert _outcome(lvl, batch) == o
                    after = _state(mem)
                    assert after == _state(lvl)
                    if o != "ok":
                        assert after == before
                    if after != "corrupt":
                        blocks, head, commit, base = after[:4]
                        assert head == base.id or head in blocks
                        assert commit == base.id or commit in blocks
                        assert base.id == GENESIS_ID or all(b.height > base.height
                                                            for b in blocks.values())
                    event(o if after != "corrupt" else "unloadable")
                lvl.close()
                if _state(mem) == "corrupt":
                    with pytest.raises(CorruptStoreError):
                        LevelDBStore(d, CLUSTER)
                    return
                lvl = LevelDBStore(d, CLUSTER)
                assert _state(lvl) == _state(mem)
            finally:
                lvl.close()

    run()
