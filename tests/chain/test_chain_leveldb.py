"""LevelDB-specific behaviour: layout, reopen, wrong cluster, corruption."""
import struct

import plyvel
import pytest

from josefine.chain.block import BlockKind, genesis, make_block
from josefine.chain.leveldb import LevelDBStore, block_key
from josefine.chain.store import CorruptStoreError, HardState, encode_block
from josefine.codec import packb, unpackb
from josefine.types import GENESIS_ID, BlockId, SafetyViolation

pytestmark = pytest.mark.timeout(60)

G = genesis("c")


def _raw(path):
    return plyvel.DB(str(path), create_if_missing=False)


def test_key_layout(tmp_path):
    s = LevelDBStore(tmp_path / "db", "c")
    a = make_block(G, 7, BlockKind.NOOP, b"")
    s.write(hard_state=HardState(7, 1), blocks=[a], head=a.id, commit=a.id)
    s.close()
    db = _raw(tmp_path / "db")
    try:
        assert block_key(a.id) == b"b/" + struct.pack(">QQ", 7, 1)
        assert db.get(block_key(a.id)) == encode_block(a)
        assert unpackb(db.get(b"h/hard")) == [7, 1]
        assert unpackb(db.get(b"h/head")) == [7, 1]
        assert unpackb(db.get(b"h/commit")) == [7, 1]
        assert db.get(b"h/cluster") == b"c"
        assert sorted(k for k, _ in db.iterator(prefix=b"b/")) == [block_key(GENESIS_ID),
                                                                 block_key(a.id)]
    finally:
        db.close()


def test_block_keys_sort_by_term_then_height(tmp_path):
    ids = [BlockId(2, 300), BlockId(10, 1), BlockId(2, 5), BlockId(1, 2**40)]
    assert sorted(ids, key=block_key) == sorted(ids)


def test_reopen_after_close_and_iter_blocks(tmp_path):
    path = tmp_path / "db"
    s = LevelDBStore(path, "c")
    a = make_block(G, 1, BlockKind.NOOP, b"")
    b = make_block(a, 1, BlockKind.NORMAL, b"x")
    s.write(blocks=[b, a], head=b.id)
    s.close()
    s.close()  # idempotent
    assert s.closed
    with pytest.raises(RuntimeError):
        s.load()
    with pytest.raises(RuntimeError):
        s.write(head=GENESIS_ID)
    with LevelDBStore(str(path), "c") as s2:
        assert list(s2.iter_blocks()) == [G, a, b]
        assert s2.load().head == b.id
        assert len(s2) == 3
    assert s2.closed


def test_wrong_cluster_id(tmp_path):
    path = tmp_path / "db"
    LevelDBStore(path, "alpha").close()
    with pytest.raises(ValueError) as exc:
        LevelDBStore(path, "beta")
    assert "alpha" in str(exc.value) and "beta" in str(exc.value)
    LevelDBStore(path, "alpha").close()  # the failed open released the lock


def test_non_josefine_database_is_refused(tmp_path):
    path = tmp_path / "db"
    db = plyvel.DB(str(path), create_if_missing=True)
    db.put(b"something", b"else")
    db.close()
    with pytest.raises(CorruptStoreError, match="h/cluster"):
        LevelDBStore(path, "c")


def _corrupt(path, key, value):
    db = _raw(path)
    if value is None:
        db.delete(key)
    else:
        db.put(key, value)
    db.close()


def _prepare(path):
    s = LevelDBStore(path, "c")
    a = make_block(G, 1, BlockKind.NOOP, b"")
    b = make_block(a, 2, BlockKind.NORMAL, b"payload")
    s.write(hard_state=HardState(2, None), blocks=[a, b], head=b.id, commit=a.id)
    s.close()
    return a, b


@pytest.mark.parametrize("case", ["garbage", "wrong-id", "bad-digest", "hard", "head",
                                  "head-missing-block", "commit-missing", "genesis"])
def test_corrupt_records_name_the_key(tmp_path, case):
    path = tmp_path / "db"
    a, b = _prepare(path)
    if case == "garbage":
        key, value = block_key(b.id), b"\xc1\xc1"
    elif case == "wrong-id":
        key, value = block_key(b.id), encode_block(a)
    elif case == "bad-digest":
        forged = make_block(a, 2, BlockKind.NORMAL, b"other payload")
        key = block_key(b.id)
        value = encode_block(type(b)(b.id, b.parent, b.kind, forged.payload, b.digest))
    elif case == "hard":
        key, value = b"h/hard", packb(["x"])
    elif case == "head":
        key, value = b"h/head", b"\x01\x02"
    elif case == "head-missing-block":
        key, value = b"h/head", packb([9, 9])
    elif case == "commit-missing":
        key, value = b"h/commit", None
    else:
        key, value = block_key(GENESIS_ID), encode_block(genesis("other"))
    _corrupt(path, key, value)
    with pytest.raises(CorruptStoreError) as exc:
        LevelDBStore(path, "c")
    assert exc.value.key == key
    assert repr(key) in str(exc.value)
    assert isinstance(exc.value, ValueError)


def test_get_block_of_corrupt_record(tmp_path):
    path = tmp_path / "db"
    a, b = _prepare(path)
    s = LevelDBStore(path, "c")
    s._db.put(block_key(b.id), b"junk")  # corrupted under a running store
    with pytest.raises(CorruptStoreError):
        s.get_block(b.id)
    s.close()


def test_write_is_atomic_on_disk(tmp_path):
    """A refused batch leaves the on-disk records untouched, seen through a raw reader."""
    path = tmp_path / "db"
    a, b = _prepare(path)
    db = _raw(path)
    before = dict(db.iterator())
    db.close()
    s = LevelDBStore(path, "c")
    impostor = make_block(a, 2, BlockKind.NORMAL, b"not the same")
    c = make_block(b, 3, BlockKind.NOOP, b"")
    with pytest.raises(SafetyViolation):
        s.write(hard_state=HardState(3, 1), blocks=[c, impostor], head=c.id, commit=b.id,
                delete=[a.id])
    s.close()
    db = _raw(path)
    after = dict(db.iterator())
    db.close()
    assert after == before


def _filled_store(path, n=1200, size=8192):
    """A store whose blocks went through the memtable into table files (about 10 MB)."""
    s = LevelDBStore(path, "c")
    parent, blocks = G, []
    for i in range(n):
        b = make_block(parent, 1, BlockKind.NORMAL, i.to_bytes(4, "big") * (size // 4))
        blocks.append(b)
        parent = b
    for i in range(0, n, 50):
        s.write(blocks=blocks[i:i + 50], head=blocks[i + 49].id, sync=False)
    s._db.compact_range()   # memtables flushed and compacted: LevelDB's memory is now its caches
    return s, blocks


def test_reads_do_not_grow_leveldb_memory_past_its_block_cache(tmp_path):
    # LevelDB's default block cache is 8 MiB; a long-running node filled it a few hundred
    # KiB a minute with its own existence checks, which looked like a leak for half an hour.
    from josefine.chain.leveldb import BLOCK_CACHE_BYTES
    s, blocks = _filled_store(tmp_path / "db")
    try:
        before = s.stats()["leveldb_memory_bytes"]
        for b in blocks:
            assert s.get_block(b.id) == b
        grown = s.stats()["leveldb_memory_bytes"] - before
        assert 0 < grown <= BLOCK_CACHE_BYTES * 1.1
    finally:
        s.close()


def test_full_scans_do_not_fill_the_block_cache(tmp_path):
    path = tmp_path / "db"
    s, blocks = _filled_store(path)
    s.close()
    with LevelDBStore(path, "c") as s2:       # opening reads and verifies every block
        assert s2.stats()["leveldb_memory_bytes"] < 256 << 10
        assert len(list(s2.iter_blocks())) == len(blocks) + 1
        assert s2.stats()["leveldb_memory_bytes"] < 256 << 10
