"""The durable chain store: what a node must find again after a crash (docs/protocol.md A.3, A.13).

A store holds the hard state (`term`, `voted_for`), every block the node keeps, the
`head` and `commit` markers, and the *base*: the block a snapshot stands in for (genesis
until the first compaction). Two implementations exist:

* `josefine.chain.memory.MemoryStore` — the simulation's "disk": cheap, and `load()` hands
  out independent state so a simulated crash + restart shares nothing with the old node.
* `josefine.chain.leveldb.LevelDBStore` — the real one: every `write()` is one LevelDB
  `WriteBatch`, fsync'ed when `sync=True`.

Contract shared by both (tested in `tests/chain/test_chain_store.py` and
`tests/chain/test_chain_store_base.py`):

* `write()` is one atomic batch: either all of it is applied or none of it.
* Blocks are never overwritten. A block whose id is already stored (or appears twice in the
  batch) with a *different* digest raises `SafetyViolation` and nothing of the batch is
  written; the same id with the same digest is a no-op.
* Genesis is created by the store on first open (from `cluster_id`); it cannot be deleted
  by `delete`, only compacted away by a base above it.
* A batch may not both write and delete the same id, and `head` / `commit` must name the
  base or a block that is stored once the batch is applied (`ValueError` otherwise,
  nothing written).
* The hard state is a tripwire too: a term never decreases, and within one term a recorded
  vote never changes (`SafetyViolation`, nothing written).
* The base (`write(base=...)`, docs/snapshots.md "The store's base"): the store keeps only
  its header (`block.base_header`: id + digest) and, in the same batch, deletes every
  stored block at or below its height. It never moves back: a lower base, or another id at
  the same height, is a `ValueError`; the same base again is a no-op, the same id with
  another digest a `SafetyViolation`. Blocks at or below the base are covered by the
  snapshot, so a batch that carries them stores nothing for them (except that the base's
  own id must carry the base's digest, and a child of the base must verify against it:
  `SafetyViolation`). A commit marker at or below the base height that is not the base
  is lifted to the base (a restart restores max(commit, base)); a head that would be left
  at or below the base (and is not the base) is a `ValueError`.
* `load()` returns the base header, the blocks *above* it that descend from it (when the
  base is genesis, genesis and every stored block, as before compaction existed), head
  and commit. Once compacted, a stored block that does not descend from the base is an
  orphan: it cannot be on any path from the base, only a bug can leave one, so it is
  skipped, logged and counted (`stats()["orphans"]`).
* A store has a single writer (the Chain actor, or the simulated node); it is not meant to be
  shared between threads.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterable, Protocol, Sequence, runtime_checkable

from josefine.chain.block import Block, verify_digest
from josefine.codec import decode_block, encode_block
from josefine.types import GENESIS_ID, BlockId, HardState, SafetyViolation

__all__ = [
    "HardState",
    "StoredState",
    "ChainStore",
    "CorruptStoreError",
    "encode_block",
    "decode_block",
    "check_hard_state",
    "check_batch",
    "check_marker",
    "check_base",
    "screen_blocks",
    "lift_commit",
    "descendants",
    "INITIAL_HARD_STATE",
]


INITIAL_HARD_STATE = HardState(0, None)


@dataclass(slots=True)
class StoredState:
    """Everything a restart loads.

    `base` is the header of the block the newest compaction stands in for; None means
    genesis of the cluster (only a hand-built state leaves it out: both stores fill it in).
    `blocks` holds the stored blocks strictly above the base that descend from it; while the
    base is genesis it holds genesis too, as it always has.
    """

    hard_state: HardState
    blocks: dict[BlockId, Block]
    head: BlockId = GENESIS_ID
    commit: BlockId = GENESIS_ID
    base: Block | None = None


class CorruptStoreError(ValueError):
    """A stored record cannot be decoded or contradicts itself; `key` names the record."""

    def __init__(self, key: bytes | str, reason: str) -> None:
        self.key = key
        self.reason = reason
        super().__init__(f"corrupt store record {key!r}: {reason}")


@runtime_checkable
class ChainStore(Protocol):
    """Durable storage of one node's chain and hard state (see the module docstring)."""

    def load(self) -> StoredState:
        """Return what a restarting node starts from (an independent copy)."""
        ...

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
        """Apply one atomic batch; returns once it is durable (when `sync`).

        `base` (a block or its header) moves the base up and compacts everything at or
        below it in the same batch (module docstring).
        """
        ...

    def get_block(self, bid: BlockId) -> Block | None:
        ...

    def stats(self) -> dict:
        """Counters for status output and tests: at least `blocks`, `head`, `commit`, `term`,
        `base` (its id) and `orphans` (skipped by the last `load()`)."""
        ...

    def __len__(self) -> int:
        """Number of stored block records (genesis while it is stored; never the base
        header of a compaction)."""
        ...

    def close(self) -> None:
        """Release resources; calling it twice is harmless."""
        ...


# ----------------------------------------------------------------------------- block codec
#
# A block record on disk is the same row a block is on the wire: `encode_block` and
# `decode_block` are `josefine.codec`'s, re-exported here for the stores. (They were a
# second, byte-identical implementation until the codec moved out of transport/; the
# golden records in tests/chain/test_chain_block.py keep old data dirs readable.)
# `decode_block` raises `josefine.codec.CodecError`, a ValueError.


# ----------------------------------------------------------------------- shared validation


def check_hard_state(old: HardState, new: HardState) -> None:
    """Raise SafetyViolation if replacing `old` by `new` would undo a term or a vote."""
    if new.term < old.term:
        raise SafetyViolation(f"hard state term would go back from {old.term} to {new.term}")
    if new.term == old.term and old.voted_for is not None and new.voted_for != old.voted_for:
        raise SafetyViolation(
            f"vote of term {old.term} would change from {old.voted_for} to {new.voted_for}")


def check_batch(
    stored_digest: Callable[[BlockId], bytes | None],
    blocks: Iterable[Block],
    delete: Iterable[BlockId],
) -> tuple[list[Block], set[BlockId]]:
    """Validate the block part of a batch without changing anything.

    `stored_digest(bid)` returns the stored digest of `bid` or None. Returns the blocks that
    are new (duplicates of stored blocks dropped) and the set of ids to delete.
    """
    new: dict[BlockId, Block] = {}
    for b in blocks:
        seen = new.get(b.id)
        if seen is not None:
            if seen.digest != b.digest:
                raise SafetyViolation(f"batch holds block {b.id} twice with different digests")
            continue
        old = stored_digest(b.id)
        if old is None:
            new[b.id] = b
        elif old != b.digest:
            raise SafetyViolation(
                f"block {b.id} is stored with digest {old.hex()[:16]}…, refusing to overwrite "
                f"it with digest {b.digest.hex()[:16]}…")
    dels = set(delete)
    if dels:
        if GENESIS_ID in dels:
            raise ValueError("genesis cannot be deleted")
        both = dels.intersection(b.id for b in blocks)
        if both:
            raise ValueError(f"batch both writes and deletes {sorted(both)}")
    return list(new.values()), dels


def check_marker(name: str, bid: BlockId, present: Callable[[BlockId], bool],
                 base: BlockId | None = None) -> None:
    """`head` / `commit` must name the base or a block stored once the batch is applied."""
    if bid != base and not present(bid):
        raise ValueError(f"{name} {bid} names a block that would not be stored")


def check_base(current: Block, new: Block) -> bool:
    """Validate moving the base from `current` to `new`; True if it actually moves.

    The base only goes up: everything below it is gone, so a lower one could not be
    honoured, and another block at the same height would be a second committed chain.
    """
    if new.id == current.id:
        if new.digest != current.digest:
            raise SafetyViolation(
                f"base {new.id} is recorded with digest {current.digest.hex()[:16]}…, "
                f"refusing digest {new.digest.hex()[:16]}…")
        return False
    if new.height < current.height:
        raise ValueError(f"base would move back from {current.id} to {new.id}")
    if new.height == current.height:
        raise ValueError(f"base {new.id} contradicts base {current.id} at the same height")
    return True


def screen_blocks(blocks: Sequence[Block], base: Block) -> Sequence[Block]:
    """Drop the blocks of a batch that the base's snapshot already covers.

    A block at or below the base height is never stored again (its record would be garbage
    a compaction already removed), but the tripwires still apply: the base's own id must
    carry the base's digest, and a child of the base must verify against it.
    """
    bh = base.height
    keep: list[Block] | None = None
    for i, b in enumerate(blocks):
        if b.id.height <= bh:
            if b.id == base.id and b.digest != base.digest:
                raise SafetyViolation(
                    f"block {b.id} arrives with digest {b.digest.hex()[:16]}…, but the base "
                    f"has digest {base.digest.hex()[:16]}…")
            if keep is None:
                keep = list(blocks[:i])
            continue
        if b.parent == base.id and not verify_digest(b, base.digest):
            raise SafetyViolation(f"block {b.id} does not verify against base {base.id}")
        if keep is not None:
            keep.append(b)
    return blocks if keep is None else keep


def lift_commit(commit: BlockId, base: Block) -> BlockId:
    """A commit at or below the base height is the base (it was committed to get there)."""
    if commit != base.id and commit.height <= base.height:
        return base.id
    return commit


def descendants(blocks: dict[BlockId, Block], base: BlockId) -> dict[BlockId, Block]:
    """The blocks of `blocks` reachable from `base` through parent links (base excluded)."""
    children: dict[BlockId, list[BlockId]] = {}
    for bid, b in blocks.items():
        if b.parent is not None:
            children.setdefault(b.parent, []).append(bid)
    out: dict[BlockId, Block] = {}
    stack = list(children.get(base, ()))
    while stack:
        bid = stack.pop()
        out[bid] = blocks[bid]
        stack.extend(children.get(bid, ()))
    return out

