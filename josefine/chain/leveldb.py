"""LevelDB chain store (plyvel): the node's disk (docs/protocol.md A.3, A.13).

Layout, one key space per kind:

    b"b/" + u64be(term) + u64be(height)  -> encode_block(block)       (ids sort by (term, height))
    b"h/hard"                            -> packb([term, voted_for])
    b"h/head"                            -> packb([term, height])
    b"h/commit"                          -> packb([term, height])
    b"h/cluster"                         -> cluster_id, UTF-8
    b"h/base"                            -> packb([term, height, digest])   (once compacted)

Every `write()` is one `WriteBatch`, written with `sync=sync`, so a batch is all-or-nothing
even across a power cut. All validation (the never-overwrite digest check included) happens
before the batch is built: a refused batch writes nothing.

A batch that moves the base (`write(base=...)`) records it and deletes the block records at
or below its height in that same batch. Block keys sort by term first, so the doomed keys
are spread over the whole block key range; they are found by walking the keys (no values)
of that range, which after the first compaction holds only the tail. Deleting only writes
tombstones: the disk space comes back when LevelDB compacts the range, which a background
thread asks for after the batch is written (`_Compactor`), so the writer never waits for it.

Opening creates the database and writes genesis on first use; reopening checks the cluster
id and rebuilds everything with `load()`, verifying every record (a record that does not
decode, or whose digest does not match its contents and parent, raises `CorruptStoreError`
naming the key). LevelDB locks its directory: one `LevelDBStore` per path at a time.
"""
from __future__ import annotations

import logging
import os
import struct
import threading
from pathlib import Path
from typing import Iterator, Sequence

import plyvel

from josefine.chain.block import Block, base_header, genesis, verify_digest
from josefine.chain.store import (
    INITIAL_HARD_STATE,
    CorruptStoreError,
    HardState,
    StoredState,
    check_base,
    check_batch,
    check_hard_state,
    check_marker,
    decode_block,
    descendants,
    encode_block,
    lift_commit,
    screen_blocks,
)
from josefine.codec import packb, unpackb
from josefine.types import GENESIS_ID, BlockId, SafetyViolation

__all__ = ["LevelDBStore", "block_key"]

log = logging.getLogger(__name__)

BLOCK_PREFIX = b"b/"
BLOCK_PREFIX_END = b"b0"        # the first key after every b"b/..." key ("0" follows "/")
KEY_HARD = b"h/hard"
KEY_HEAD = b"h/head"
KEY_COMMIT = b"h/commit"
KEY_CLUSTER = b"h/cluster"
KEY_BASE = b"h/base"

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


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _encode_id(bid: BlockId) -> bytes:
    return packb([bid.term, bid.height])


def _decode_base(value: bytes) -> Block:
    try:
        obj = unpackb(value)
    except Exception as exc:
        raise CorruptStoreError(KEY_BASE, f"undecodable: {exc!r}") from None
    if (not isinstance(obj, list) or len(obj) != 3
            or not all(type(x) is int and x >= 0 for x in obj[:2])
            or not isinstance(obj[2], bytes) or len(obj[2]) != 32):
        raise CorruptStoreError(KEY_BASE, f"not [term, height, digest]: {obj!r}")
    return base_header(BlockId(obj[0], obj[1]), obj[2])


class _Compactor:
    """Runs `compact_range` over the block keys on a thread of its own, one at a time.

    Why a thread: compacting rewrites table files, seconds for a large store, and the
    writer (the Chain actor) must keep persisting blocks meanwhile. LevelDB allows one DB
    object to be used from several threads without outside locking, and plyvel releases
    the GIL around `CompactRange`. What plyvel does not guard is `close()`: it frees the
    C++ DB under any call still running, so `stop()` joins the thread before the store
    closes the DB. A request while a run is under way makes it run once more afterwards
    (the new tombstones may lie in a range the running one has passed already).
    """

    def __init__(self, db: plyvel.DB, name: str) -> None:
        self._db = db
        self._name = name
        self._cv = threading.Condition()
        self._thread: threading.Thread | None = None
        self._again = False
        self._stopping = False
        self.finished = 0

    def request(self) -> None:
        with self._cv:
            if self._stopping:
                return
            if self._thread is not None:
                self._again = True
                return
            # not a daemon: interpreter exit waits for it instead of freeing the DB under it
            self._thread = threading.Thread(target=self._run, name=f"compact {self._name}")
            self._thread.start()

    def _run(self) -> None:
        while True:
            try:
                # Twice: LevelDB's CompactRange picks the deepest level to compact *before*
                # it flushes the memtable, and a flush can place its table deeper than that
                # (a fresh store's first flush lands at level 2). The first pass then merges
                # the tombstones only down to level 1, above the data they delete; the
                # second sees every level. Measured: one pass left 5.5 of 7.9 MB on disk.
                for _ in range(2):
                    self._db.compact_range(start=BLOCK_PREFIX, stop=BLOCK_PREFIX_END)
            except Exception:   # a failed compaction costs disk space, never data
                log.exception("compacting %s failed", self._name)
            with self._cv:
                self.finished += 1
                if self._again and not self._stopping:
                    self._again = False
                    continue
                self._again = False
                self._thread = None
                self._cv.notify_all()
                return

    def wait(self, timeout: float) -> bool:
        with self._cv:
            return self._cv.wait_for(lambda: self._thread is None, timeout)

    def stop(self) -> None:
        """Drop a queued rerun and wait for the running one: the DB may close after this."""
        with self._cv:
            self._stopping = True
            thread = self._thread
        if thread is not None:
            thread.join()


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
        existed = self.path.is_dir()
        self._db = plyvel.DB(str(self.path), create_if_missing=True, bloom_filter_bits=10,
                             max_open_files=MAX_OPEN_FILES, lru_cache_size=BLOCK_CACHE_BYTES)
        # LevelDB's open makes a new MANIFEST, points CURRENT at it and deletes the old
        # one, all without syncing the directory: a power cut right after could bring back
        # a CURRENT naming a manifest that is gone or empty, and the store would not open
        # (found with the power-loss filesystem, docs/powerloss.md). Sync the names now,
        # and the store directory's own name when it is new.
        _fsync_dir(self.path)
        if not existed:
            _fsync_dir(self.path.parent)
        self._closed = False
        self.writes = 0
        self.syncs = 0
        self.orphans = 0
        self._compactor = _Compactor(self._db, str(self.path))
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
        self._count = len(state.blocks) + self.orphans
        self._base: Block = state.base if state.base is not None else self._genesis
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
            with snap.iterator(prefix=BLOCK_PREFIX, fill_cache=False) as it:
                for key, value in it:
                    b = _decode_block_at(key, value)
                    blocks[b.id] = b
            hard = _decode_hard(snap.get(KEY_HARD))
            head = _decode_id(KEY_HEAD, snap.get(KEY_HEAD))
            commit = _decode_id(KEY_COMMIT, snap.get(KEY_COMMIT))
            base_rec = snap.get(KEY_BASE)
        stored = len(blocks)
        if base_rec is None:      # never compacted: genesis is the base, and must be there
            base = self._genesis
            g = blocks.get(GENESIS_ID)
            if g is None:
                raise CorruptStoreError(block_key(GENESIS_ID), "genesis is missing")
            if g.digest != self._genesis.digest:
                raise CorruptStoreError(block_key(GENESIS_ID),
                                        f"genesis is not that of cluster {self.cluster_id!r}")
        else:
            base = _decode_base(base_rec)
            if base.id == GENESIS_ID and base.digest != self._genesis.digest:
                raise CorruptStoreError(KEY_BASE, "names a genesis of another cluster")
            blocks = descendants(blocks, base.id)
        self.orphans = stored - len(blocks)
        if self.orphans:
            log.warning("%s: skipped %d orphan block(s) that do not descend from base %s",
                        self.path, self.orphans, base.id)
        for bid, b in blocks.items():
            if b.parent is None:
                continue
            parent = base if b.parent == base.id else blocks.get(b.parent)
            if parent is not None and not verify_digest(b, parent.digest):
                raise CorruptStoreError(block_key(bid),
                                        "digest does not match contents and parent")
        if head != base.id and head not in blocks:
            raise CorruptStoreError(KEY_HEAD, f"names block {head}, which is not stored")
        if commit != base.id and commit not in blocks:
            if commit.height > base.height:
                raise CorruptStoreError(KEY_COMMIT, f"names block {commit}, which is not stored")
            commit = base.id      # compacted past it: the base was committed to get there
        return StoredState(hard, blocks, head, commit, base)

    def write(
        self,
        *,
        hard_state: HardState | None = None,
        blocks: Sequence[Block] = (),
        head: BlockId | None = None,
        commit: BlockId | None = None,
        delete: Sequence[BlockId] = (),
        sync: bool = True,
        base: Block | None = None,
    ) -> None:
        self._check_open()
        if type(blocks) is not list and type(blocks) is not tuple:
            blocks = list(blocks)
        # ---- validate everything first: a refused batch writes nothing
        cur_base = self._base
        moved = base is not None and check_base(cur_base, base)
        if moved:
            assert base is not None
            cur_base = base_header(base.id, base.digest)
        base_id, bh = cur_base.id, cur_base.height
        if blocks:
            blocks = screen_blocks(blocks, cur_base)
        if bh > 0 and delete:   # ids at or below a compacted base are not stored anyway
            delete = [d for d in delete if d.height > bh]
        if hard_state is not None:
            if type(hard_state) is not HardState:  # e.g. the core's own HardState record
                hard_state = HardState(hard_state.term, hard_state.voted_for)
            if hard_state != self._hard:
                check_hard_state(self._hard, hard_state)
        new, dels = check_batch(self._stored_digest, blocks, delete)
        new_ids = {b.id for b in new}
        doomed = self._doomed(cur_base) if moved else []
        if moved and commit is None and self._commit != base_id and self._commit.height <= bh:
            commit = base_id
        if commit is not None:
            commit = lift_commit(commit, cur_base)

        def present(bid: BlockId) -> bool:
            return bid.height > bh and bid not in dels and (
                bid in new_ids or self._db.get(block_key(bid)) is not None)

        if head is not None:
            check_marker("head", head, present, base_id)
        elif moved and self._head != base_id and not present(self._head):
            raise ValueError(f"head {self._head} would be left at or below base {base_id}")
        if commit is not None:
            check_marker("commit", commit, present, base_id)
        if dels:
            if (head if head is not None else self._head) in dels or \
                    (commit if commit is not None else self._commit) in dels:
                raise ValueError("batch deletes the block that head or commit names")
        # ---- one batch
        wb = self._db.write_batch(sync=sync)
        gone = 0
        if moved:
            wb.put(KEY_BASE, packb([base_id.term, base_id.height, cur_base.digest]))
            for key in doomed:
                wb.delete(key)
            gone += len(doomed)
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
        if moved:
            self._base = cur_base
            self._compactor.request()

    def _doomed(self, base: Block) -> list[bytes]:
        """The keys of the block records a move to `base` deletes, after the tripwires.

        Walks keys only: their (term, height) is in the key, so no value is read except
        those of the base's own id and its children, which must agree with its digest.
        """
        out = []
        bh = base.height
        with self._db.iterator(prefix=BLOCK_PREFIX, include_value=False) as it:
            for key in it:
                bid = _key_id(key)
                if bid.height <= bh:
                    if bid == base.id:
                        stored = self.get_block(bid)
                        if stored is not None and stored.digest != base.digest:
                            raise SafetyViolation(
                                f"block {bid} is stored with another digest than the base "
                                f"that would replace it")
                    out.append(key)
                elif bid.height == bh + 1:
                    child = self.get_block(bid)
                    if (child is not None and child.parent == base.id
                            and not verify_digest(child, base.digest)):
                        raise SafetyViolation(
                            f"stored block {bid} does not verify against base {base.id}")
        return out

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
            "base": self._base.id,
            "orphans": self.orphans,
            "compactions": self._compactor.finished,
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

    def wait_compacted(self, timeout: float) -> bool:
        """Wait until no background compaction runs or is queued; False on timeout."""
        return self._compactor.wait(timeout)

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._compactor.stop()   # plyvel frees the DB under a running compact_range
            self._db.close()

    def __enter__(self) -> "LevelDBStore":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._closed else f"blocks={self._count}"
        return f"LevelDBStore({str(self.path)!r}, {self.cluster_id!r}, {state})"
