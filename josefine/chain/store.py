"""The durable chain store: what a node must find again after a crash (docs/protocol.md A.3, A.13).

A store holds the hard state (`term`, `voted_for`), every block the node keeps, and the
`head` and `commit` markers. Two implementations exist:

* `josefine.chain.memory.MemoryStore` — the simulation's "disk": cheap, and `load()` hands
  out independent state so a simulated crash + restart shares nothing with the old node.
* `josefine.chain.leveldb.LevelDBStore` — the real one: every `write()` is one LevelDB
  `WriteBatch`, fsync'ed when `sync=True`.

Contract shared by both (tested in `tests/chain/test_chain_store.py`):

* `write()` is one atomic batch: either all of it is applied or none of it.
* Blocks are never overwritten. A block whose id is already stored (or appears twice in the
  batch) with a *different* digest raises `SafetyViolation` and nothing of the batch is
  written; the same id with the same digest is a no-op.
* Genesis is created by the store on first open (from `cluster_id`); it cannot be deleted.
* A batch may not both write and delete the same id, and `head` / `commit` must name a block
  that is stored once the batch is applied (`ValueError` otherwise, nothing written).
* The hard state is a tripwire too: a term never decreases, and within one term a recorded
  vote never changes (`SafetyViolation`, nothing written).
* A store has a single writer (the Chain actor, or the simulated node); it is not meant to be
  shared between threads.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterable, Protocol, Sequence, runtime_checkable

from josefine.chain.block import Block
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
    "INITIAL_HARD_STATE",
]


INITIAL_HARD_STATE = HardState(0, None)


@dataclass(slots=True)
class StoredState:
    """Everything a restart loads. `blocks` always includes genesis."""

    hard_state: HardState
    blocks: dict[BlockId, Block]
    head: BlockId = GENESIS_ID
    commit: BlockId = GENESIS_ID


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
    ) -> None:
        """Apply one atomic batch; returns once it is durable (when `sync`)."""
        ...

    def get_block(self, bid: BlockId) -> Block | None:
        ...

    def stats(self) -> dict:
        """Counters for status output and tests: at least `blocks`, `head`, `commit`, `term`."""
        ...

    def __len__(self) -> int:
        """Number of stored blocks, genesis included."""
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


def check_marker(name: str, bid: BlockId, present: Callable[[BlockId], bool]) -> None:
    """`head` / `commit` must name a block that is stored once the batch is applied."""
    if not present(bid):
        raise ValueError(f"{name} {bid} names a block that would not be stored")
