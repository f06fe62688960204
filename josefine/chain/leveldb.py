"""LevelDB chain store (plyvel): the node's disk (docs/protocol.md A.3, A.13).

Layout, one key space per kind:

    b"b/" + u64be(term) + u64be(height)  -> encode_block(block)       (ids sort by (term, height))
    b"h/hard"                            -> packb([term, voted_for])
    b"h/head"                            -> packb([term, height])
    b"h/commit"                          -> packb([term, height])
    b"h/cluster"                         -> cluster_id, UTF-8

Every `write()` is one `WriteBatch`, written with `sync=sync`, so a batch is all-or-nothing
even across a power cut. All validation (the never-overwrite digest check included) happens
before the batch is built: a refused batch writes nothing.

Opening creates the database and writes genesis on first use; reopening checks the cluster
id and rebuilds everything with `load()`, verifying every record (a record that does not
decode, or whose digest does not match its contents and parent, raises `CorruptStoreError`
naming the key). LevelDB locks its directory: one `LevelDBStore` per path at a time.
"""
from __future__ import annotations

import struct
from pathlib import Path
from typing import Iterator, Sequence

import plyvel

from josefine.chain.block import Block, genesis, verify_digest
from josefine.chain.store import (
    INITIAL_HARD_STATE,
    CorruptStoreError,
    HardState,
    StoredState,
    check_batch,
    check_hard_state,
    check_marker,
    decode_block,
    encode_block,
)
from josefine.codec import packb, unpackb
from josefine.types import GENESIS_ID, BlockId

__all__ = ["LevelDBStore", "block_key"]

BLOCK_PREFIX = b"b/"
KEY_HARD = b"h/hard"
KEY_HEAD = b"h/head"
KEY_COMMIT = b"h/commit"
KEY_CLUSTER = b"h/cluster"

_ID = struct.Struct(">QQ")


def block_key(bid: BlockId) -> bytes:
    return BLOCK_PREFIX + _ID.pack(bid.term, bid.height)


def _key_id(key: bytes) -> BlockId:
    if len(key) != len(BLOCK_PREFIX) + _ID.size:
        raise CorruptStoreError(key, "block key has the wrong length")
    return BlockId(*_ID.unpack_from(key, len(BLOCK_PREFIX)))


def _decode_block_at(key: bytes, value: bytes) -> Block:
    try:
        block = decode_block(value)
    except ValueError as exc:
        raise CorruptStoreError(key, str(exc)) from None
    if block.id != _key_id(key):
        raise CorruptStoreError(key, f"holds block {block.id}")
    return block


def _decode_hard(value: bytes | None) -> HardState:
    if value is None:
        raise CorruptStoreError(KEY_HARD, "missing")
    try:
        obj = unpackb(value)
    except Exception as exc:
        raise CorruptStoreError(KEY_HARD, f"undecodable: {exc!r}") from None
    if (not isinstance(obj, list) or len(obj) != 2 or type(obj[0]) is not int or obj[0] < 0
            or not (obj[1] is None or type(obj[1]) is int)):
        raise CorruptStoreError(KEY_HARD, f"not [term, voted_for]: {obj!r}")
    return HardState(obj[0], obj[1])


def _decode_id(key: bytes, value: bytes | None) -> BlockId:
    if value is None:
        raise CorruptStoreError(key, "missing")
    try:
        obj = unpackb(value)
    except Exception as exc:
        raise CorruptStoreError(key, f"undecodable: {exc!r}") from None
    if (not isinstance(obj, list) or len(obj) != 2
            or not all(type(x) is int and x >= 0 for x in obj)):
        raise CorruptStoreError(key, f"not a block id: {obj!r}")
    return BlockId(obj[0], obj[1])


def _encode_id(bid: BlockId) -> bytes:
    return packb([bid.term, bid.height])


MAX_OPEN_FILES = 74             # LevelDB's minimum (it clips lower values up to this):
                                # 10 files for itself, 64 cached tables
BLOCK_CACHE_BYTES = 1 << 20     # LevelDB's default is 8 MiB


class LevelDBStore:
    """A `ChainStore` on LevelDB. Single writer; `close()` is idempotent."""

    def __init__(self, path: str | Path, cluster_id: str) -> None:
        self.path = Path(path)
        self.cluster_id = cluster_id
        self._genesis = genesis(cluster_id)
        # Bloom filters: every written block is first looked up (never-overwrite check),
        # and almost all such lookups miss; without filters they probe every level.
        # Both of LevelDB's caches fill slowly and then stay full, so on a long-running
        # node they look like a leak until they are: the table cache (about 60 KB per open
        # table, measured with heaptrack, admitted as compactions write new tables) and
        # the block cache (8 MiB by default, admitted by reads that miss the memtable).
        # Under full load they grew a node's memory about 0.7 MiB a minute for the first
        # ten minutes. Both are bounded small here: block ids are written in increasing
        # order, so lookups touch few tables, and the node keeps the blocks it needs in
        # memory itself. Full scans (start-up) bypass the block cache altogether.
        self._db = plyvel.DB(str(self.path), create_if_missing=True, bloom_filter_bits=10,
                             max_open_files=MAX_OPEN_FILES, lru_cache_size=BLOCK_CACHE_BYTES)
        self._closed = False
        self.writes = 0
        self.syncs = 0
        try:
            self._open_cluster()
            self._index(self.load())
        except BaseException:
            self.close()
            raise

    def _open_cluster(self) -> None:
        stored = self._db.get(KEY_CLUSTER)
        if stored is None:
            with self._db.iterator(include_value=False) as it:
                if next(it, None) is not None:
                    raise CorruptStoreError(KEY_CLUSTER, f"missing, but {self.path} is not empty")
            wb = self._db.write_batch(sync=True)
            wb.put(KEY_CLUSTER, self.cluster_id.encode())
            wb.put(block_key(GENESIS_ID), encode_block(self._genesis))
            wb.put(KEY_HARD, packb([INITIAL_HARD_STATE.term, INITIAL_HARD_STATE.voted_for]))
            wb.put(KEY_HEAD, _encode_id(GENESIS_ID))
            wb.put(KEY_COMMIT, _encode_id(GENESIS_ID))
            wb.write()
            return
        try:
            name = stored.decode()
        except UnicodeDecodeError:
            raise CorruptStoreError(KEY_CLUSTER, "not UTF-8") from None
        if name != self.cluster_id:
            raise ValueError(
                f"store at {self.path} belongs to cluster {name!r}, not to cluster "
                f"{self.cluster_id!r}")

    def _index(self, state: StoredState) -> None:
        # No in-memory set of block ids: it would grow with the chain. Existence checks
        # read LevelDB (a few µs per written block). The first load() is kept for the
        # caller so a start-up reads and verifies the store once, not twice.
        self._first_load: StoredState | None = state
        self._count = len(state.blocks)
        self._hard = state.hard_state
        self._head = state.head
        self._commit = state.commit

    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError(f"LevelDBStore at {self.path} is closed")

    # ------------------------------------------------------------------ ChainStore

    def load(self) -> StoredState:
        """Read and verify everything from disk (one consistent LevelDB snapshot)."""
        self._check_open()
        first = getattr(self, "_first_load", None)
        if first is not None:
            self._first_load = None
            return first
        with self._db.snapshot() as snap:
            blocks: dict[BlockId, Block] = {}
            keys: dict[BlockId, bytes] = {}
            with snap.iterator(prefix=BLOCK_PREFIX, fill_cache=False) as it:
                for key, value in it:
                    b = _decode_block_at(key, value)
                    blocks[b.id] = b
                    keys[b.id] = key
            hard = _decode_hard(snap.get(KEY_HARD))
            head = _decode_id(KEY_HEAD, snap.get(KEY_HEAD))
            commit = _decode_id(KEY_COMMIT, snap.get(KEY_COMMIT))
        g = blocks.get(GENESIS_ID)
        if g is None:
            raise CorruptStoreError(block_key(GENESIS_ID), "genesis is missing")
        if g.digest != self._genesis.digest:
            raise CorruptStoreError(block_key(GENESIS_ID),
                                    f"genesis is not that of cluster {self.cluster_id!r}")
        for bid, b in blocks.items():
            parent = blocks.get(b.parent) if b.parent is not None else None
            if parent is not None and not verify_digest(b, parent.digest):
                raise CorruptStoreError(keys[bid], "digest does not match contents and parent")
        for key, bid in ((KEY_HEAD, head), (KEY_COMMIT, commit)):
            if bid not in blocks:
                raise CorruptStoreError(key, f"names block {bid}, which is not stored")
        return StoredState(hard, blocks, head, commit)

    def write(
        self,
        *,
        hard_state: HardState | None = None,
        blocks: Sequence[Block] = (),
        head: BlockId | None = None,
        commit: BlockId | None = None,
        delete: Sequence[BlockId] = (),
        sync: bool = True,
    ) -> None:
        self._check_open()
        if type(blocks) is not list and type(blocks) is not tuple:
            blocks = list(blocks)
        # ---- validate everything first: a refused batch writes nothing
        if hard_state is not None:
            if type(hard_state) is not HardState:  # e.g. the core's own HardState record
                hard_state = HardState(hard_state.term, hard_state.voted_for)
            if hard_state != self._hard:
                check_hard_state(self._hard, hard_state)
        new, dels = check_batch(self._stored_digest, blocks, delete)
        new_ids = {b.id for b in new}

        def present(bid: BlockId) -> bool:
            return bid not in dels and (bid in new_ids or self._db.get(block_key(bid)) is not None)

        if head is not None:
            check_marker("head", head, present)
        if commit is not None:
            check_marker("commit", commit, present)
        if dels:
            if (head if head is not None else self._head) in dels or \
                    (commit if commit is not None else self._commit) in dels:
                raise ValueError("batch deletes the block that head or commit names")
        # ---- one batch
        wb = self._db.write_batch(sync=sync)
        gone = 0
        for bid in dels:
            key = block_key(bid)
            if self._db.get(key) is not None:
                gone += 1
                wb.delete(key)
        for b in new:
            wb.put(block_key(b.id), encode_block(b))
        if hard_state is not None:
            wb.put(KEY_HARD, packb([hard_state.term, hard_state.voted_for]))
        if head is not None:
            wb.put(KEY_HEAD, _encode_id(head))
        if commit is not None:
            wb.put(KEY_COMMIT, _encode_id(commit))
        wb.write()
        # ---- mirror it in memory only once it is on disk
        self._first_load = None   # the start-up snapshot is stale now
        self._count += len(new) - gone
        if hard_state is not None:
            self._hard = hard_state
        if head is not None:
            self._head = head
        if commit is not None:
            self._commit = commit
        self.writes += 1
        if sync:
            self.syncs += 1

    def _stored_digest(self, bid: BlockId) -> bytes | None:
        b = self.get_block(bid)
        return None if b is None else b.digest

    def get_block(self, bid: BlockId) -> Block | None:
        self._check_open()
        key = block_key(bid)
        value = self._db.get(key)
        return None if value is None else _decode_block_at(key, value)

    def iter_blocks(self) -> Iterator[Block]:
        """Every stored block, in (term, height) order, decoded as it is read."""
        self._check_open()
        with self._db.iterator(prefix=BLOCK_PREFIX, fill_cache=False) as it:
            for key, value in it:
                yield _decode_block_at(key, value)

    def __len__(self) -> int:
        return self._count

    def __contains__(self, bid: object) -> bool:
        return isinstance(bid, BlockId) and self._db.get(block_key(bid)) is not None

    def stats(self) -> dict:
        return {
            "blocks": self._count,
            "term": self._hard.term,
            "voted_for": self._hard.voted_for,
            "head": self._head,
            "commit": self._commit,
            "writes": self.writes,
            "syncs": self.syncs,
            "leveldb_memory_bytes": self._approximate_memory(),
        }

    def _approximate_memory(self) -> int | None:
        """LevelDB's own estimate of the memory it holds (memtables, caches)."""
        try:
            v = None if self._closed else self._db.get_property(
                b"leveldb.approximate-memory-usage")
        except RuntimeError:   # closed meanwhile, by a node stopping
            return None
        return int(v) if v else None

    @property
    def closed(self) -> bool:
        return self._closed

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._db.close()

    def __enter__(self) -> "LevelDBStore":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._closed else f"blocks={self._count}"
        return f"LevelDBStore({str(self.path)!r}, {self.cluster_id!r}, {state})"
