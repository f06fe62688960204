"""In-memory chain store: the deterministic simulation's durable "disk".

Every `write()` is durable the moment it returns (the simulation models a crash as losing
the node object, never the store), so `sync` is only counted. `load()` returns a fresh
`StoredState` whose containers are new objects; blocks and hard states are immutable, so a
restarted node can never share mutable state with the crashed one.

Kept deliberately cheap: a write that adds blocks to the tip costs a few dict operations.
A compaction (`write(base=...)`) walks the dict once, which is what a real store's delete
costs too.
"""
from __future__ import annotations

import logging
from typing import Collection, Iterator, Sequence

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
    descendants,
    lift_commit,
    screen_blocks,
)
from josefine.types import GENESIS_ID, BlockId, SafetyViolation

__all__ = ["MemoryStore"]

log = logging.getLogger(__name__)


class MemoryStore:
    """A `ChainStore` held in a dict. Single writer; not thread-safe."""

    __slots__ = ("cluster_id", "_blocks", "_hard", "_head", "_commit", "_base", "orphans",
                 "writes", "syncs")

    def __init__(self, cluster_id: str) -> None:
        self.cluster_id = cluster_id
        g = genesis(cluster_id)
        self._blocks: dict[BlockId, Block] = {g.id: g}
        self._hard: HardState = INITIAL_HARD_STATE
        self._head: BlockId = GENESIS_ID
        self._commit: BlockId = GENESIS_ID
        self._base: Block = g          # genesis is its own header
        self.orphans = 0               # skipped by the last load()
        self.writes = 0
        self.syncs = 0

    # ------------------------------------------------------------------ ChainStore

    def load(self) -> StoredState:
        base = self._base
        if base.id == GENESIS_ID:
            blocks = dict(self._blocks)
            self.orphans = 0
        else:
            blocks = descendants(self._blocks, base.id)
            self.orphans = len(self._blocks) - len(blocks)
            if self.orphans:
                log.warning("%r: skipped %d orphan block(s) that do not descend from base %s",
                            self, self.orphans, base.id)
        for bid, b in blocks.items():
            if b.parent == base.id and not verify_digest(b, base.digest):
                raise CorruptStoreError(f"block {bid}", f"does not verify against base {base.id}")
        head, commit = self._head, self._commit
        if head != base.id and head not in blocks:
            raise CorruptStoreError("head", f"names block {head}, which is not stored")
        if commit != base.id and commit not in blocks:
            if commit.height > base.height:
                raise CorruptStoreError("commit", f"names block {commit}, which is not stored")
            commit = base.id
        return StoredState(self._hard, blocks, head, commit, base)

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
        stored = self._blocks
        if type(blocks) is not list and type(blocks) is not tuple:
            blocks = list(blocks)
        cur_base = self._base
        if base is not None and check_base(cur_base, base):
            cur_base = base_header(base.id, base.digest)
            moved = True
        else:
            moved = False
        base_id, bh = cur_base.id, cur_base.height
        if blocks:
            blocks = screen_blocks(blocks, cur_base)
        if bh > 0 and delete:   # ids at or below a compacted base are not stored anyway
            delete = [d for d in delete if d.height > bh]
        # ---- validate everything first: a failing batch must leave no trace
        if hard_state is not None:
            if type(hard_state) is not HardState:  # e.g. the core's own HardState record
                hard_state = HardState(hard_state.term, hard_state.voted_for)
            if hard_state != self._hard:
                check_hard_state(self._hard, hard_state)
        dels: Collection[BlockId]
        if delete or len(blocks) > 1:
            new, dels = check_batch(_digest_getter(stored), blocks, delete)
        else:
            dels = ()
            new = []
            for b in blocks:  # the hot path: zero or one block, nothing deleted
                old = stored.get(b.id)
                if old is None:
                    new.append(b)
                elif old.digest != b.digest:
                    check_batch(_digest_getter(stored), blocks, ())  # raises SafetyViolation
        doomed: list[BlockId] = []
        if moved:
            for bid, b in stored.items():
                if bid.height <= bh:
                    if bid == base_id and b.digest != cur_base.digest:
                        raise SafetyViolation(f"block {bid} is stored with another digest than "
                                              f"the base that would replace it")
                    doomed.append(bid)
                elif b.parent == base_id and not verify_digest(b, cur_base.digest):
                    raise SafetyViolation(f"stored block {bid} does not verify against "
                                          f"base {base_id}")
            if commit is None and self._commit != base_id and self._commit.height <= bh:
                commit = base_id
        if commit is not None:
            commit = lift_commit(commit, cur_base)
        if head is not None or commit is not None or moved:
            new_ids = {b.id for b in new} if new else ()

            def present(bid: BlockId) -> bool:
                return bid.height > bh and (bid in stored or bid in new_ids) and bid not in dels

            if head is not None:
                check_marker("head", head, present, base_id)
            elif moved and self._head != base_id and not present(self._head):
                raise ValueError(f"head {self._head} would be left at or below base {base_id}")
            if commit is not None:
                check_marker("commit", commit, present, base_id)
        if dels:
            keep_head = head if head is not None else self._head
            keep_commit = commit if commit is not None else self._commit
            if keep_head in dels or keep_commit in dels:
                raise ValueError("batch deletes the block that head or commit names")
        # ---- apply
        for bid in doomed:
            del stored[bid]
        self._base = cur_base
        for bid in dels:
            stored.pop(bid, None)
        for b in new:
            stored[b.id] = b
        if hard_state is not None:
            self._hard = hard_state
        if head is not None:
            self._head = head
        if commit is not None:
            self._commit = commit
        self.writes += 1
        if sync:
            self.syncs += 1

    def get_block(self, bid: BlockId) -> Block | None:
        return self._blocks.get(bid)

    def iter_blocks(self) -> Iterator[Block]:
        """Stored blocks in (term, height) order."""
        for bid in sorted(self._blocks):
            yield self._blocks[bid]

    def __len__(self) -> int:
        return len(self._blocks)

    def __contains__(self, bid: object) -> bool:
        return bid in self._blocks

    def stats(self) -> dict:
        return {
            "blocks": len(self._blocks),
            "term": self._hard.term,
            "voted_for": self._hard.voted_for,
            "head": self._head,
            "commit": self._commit,
            "base": self._base.id,
            "orphans": self.orphans,
            "writes": self.writes,
            "syncs": self.syncs,
        }

    def close(self) -> None:
        """Nothing to release; the contents survive so a simulated restart can `load()`."""

    def snapshot(self) -> tuple:
        """The contents as of now, for `restore`: how the simulation takes back writes a
        crash loses (those made without sync)."""
        return dict(self._blocks), self._hard, self._head, self._commit, self._base

    def restore(self, snap: tuple) -> None:
        blocks, self._hard, self._head, self._commit, self._base = snap
        self._blocks = dict(blocks)

    def __repr__(self) -> str:
        return (f"MemoryStore({self.cluster_id!r}, blocks={len(self._blocks)}, "
                f"head={self._head}, commit={self._commit}, base={self._base.id}, "
                f"term={self._hard.term})")


def _digest_getter(stored: dict[BlockId, Block]):
    def get(bid: BlockId) -> bytes | None:
        b = stored.get(bid)
        return None if b is None else b.digest
    return get
