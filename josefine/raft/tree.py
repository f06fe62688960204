"""The core's volatile view of the chain: every known block, and the path to the head.

The tree is rooted at the chain's *base*: genesis, or, once a snapshot has compacted the
chain, a header (id and digest) standing in for the snapshot's last block (A.14). Below the
root nothing is known: those heights are committed, applied and gone.

This is the `ChainView` of the design: the core reads blocks only through it and every
durable write leaves the core as an effect. A restarted node rebuilds it from the store.

`at(h)` is the id at height h on the path genesis..head; `term_range[t] = [lo, hi]` are
the heights of term-t blocks on that path (terms never decrease along a path, F1), which
makes the fork search of A.7 a dictionary lookup.

Only the recent part of the path is held as a list of ids (`_recent`, from height `_base`):
below it, the path is committed and evicted, and its ids follow from `term_range` alone (the
id at height h is (the term whose range holds h, h)). A list of every id since genesis grew
by one id per block for the life of the process: about 2 MiB a minute under full load.
"""
from __future__ import annotations

from collections.abc import Callable

from josefine.chain.block import Block
from josefine.types import BlockId, SafetyViolation


class BlockTree:
    """Blocks by id, parent -> children, and the head path."""

    __slots__ = ("_base", "_recent", "blocks", "children", "evicted_below", "loader",
                 "root", "term_range")

    def __init__(self, root: Block,
                 loader: Callable[[BlockId], Block | None] | None = None) -> None:
        self.root = root
        """Genesis, or the header of the snapshot base the chain was compacted to."""
        h = root.id.height
        self.blocks: dict[BlockId, Block] = {root.id: root}
        self.children: dict[BlockId, list[BlockId]] = {}
        self._recent: list[BlockId] = [root.id]
        self._base = h
        """Height of `_recent[0]`; the path below it is known through `term_range`."""
        self.term_range: dict[int, list[int]] = {root.id.term: [h, h]}
        self.loader = loader
        """Reads a block back from durable storage (the runtime's ChainView); with it, old
        committed blocks may leave memory (`evict_below`) and are read again on demand."""
        self.evicted_below = h + 1

    # ------------------------------------------------------------------ reading
    @property
    def head(self) -> BlockId:
        return self._recent[-1]

    @property
    def path(self) -> list[BlockId]:
        """Every id root..head (O(height): for tests and diagnostics, not hot paths)."""
        return [self.at(h) for h in range(self.root.id.height, self.head.height + 1)]

    def has(self, bid: BlockId) -> bool:
        return bid in self.blocks or (bid.height < self.evicted_below and self.on_path(bid))

    def get(self, bid: BlockId) -> Block:
        b = self.blocks.get(bid)
        if b is None:
            b = self.lookup(bid)
            if b is None:
                raise KeyError(bid)
        return b

    def lookup(self, bid: BlockId) -> Block | None:
        """The block if known (reading an evicted committed block back), else None."""
        b = self.blocks.get(bid)
        if b is None and bid.height < self.evicted_below and self.on_path(bid):
            b = self.loader(bid) if self.loader is not None else None
            if b is None:
                raise SafetyViolation(f"committed block {bid} is missing from the store")
        return b

    def evict_below(self, height: int) -> None:
        """Forget the Block objects of path heights [1, height): they are committed and
        durable, so `lookup` can read them back. Needs a loader."""
        if self.loader is None or height <= self.evicted_below:
            return
        blocks, children = self.blocks, self.children
        for h in range(self.evicted_below, min(height, self.head.height + 1)):
            bid = self.at(h)
            blocks.pop(bid, None)
            children.pop(bid, None)
        self.evicted_below = height
        keep_from = min(height, self.head.height)   # the head's id stays in the list
        if keep_from > self._base:
            del self._recent[:keep_from - self._base]
            self._base = keep_from

    def on_path(self, bid: BlockId) -> bool:
        """Is `bid` on the path root..head? False below the root: unknown there."""
        h = bid.height
        if h >= self._base:
            i = h - self._base
            return i < len(self._recent) and self._recent[i] == bid
        if h < self.root.id.height:
            return False
        return self._term_at(h) == bid.term

    def at(self, height: int) -> BlockId:
        """The path's id at `height`; IndexError below the root or above the head."""
        if height >= self._base:
            return self._recent[height - self._base]
        if height < self.root.id.height:
            raise IndexError(height)
        return BlockId(self._term_at(height), height)

    def _term_at(self, height: int) -> int:
        """The term of the path's block at `height` (root height <= height <= head height)."""
        for t, (lo, hi) in self.term_range.items():
            if lo <= height <= hi:
                return t
        raise IndexError(height)

    def is_ancestor(self, a: BlockId, b: BlockId) -> bool:
        """a ⪯ b: walk b's parents down to a's height (both must be stored)."""
        if a.height > b.height:
            return False
        x: BlockId | None = b
        while x is not None and x.height > a.height:
            x = self.get(x).parent
        return x == a

    # ------------------------------------------------------------------ writing
    def add(self, block: Block) -> bool:
        """Store a block whose parent is known; False if it was already there.

        NB: a known id with a different digest is a broken safety assumption (A.2)."""
        old = self.lookup(block.id)
        if old is not None:
            if old.digest != block.digest:
                raise SafetyViolation(f"block {block.id} arrived with a different digest")
            return False
        self.blocks[block.id] = block
        self.children.setdefault(block.parent, []).append(block.id)  # type: ignore[arg-type]
        return True

    def append_head(self, block: Block) -> None:
        """Leader fast path: `block` is a new child of the head."""
        self.add(block)
        self._push(block.id)

    def set_head(self, x: BlockId) -> int:
        """Re-point the path at x (which may lie on another branch, lower or higher);
        returns the height of the fork point, the highest block the old and new paths
        share (everything above it on the path is new)."""
        missing = []
        y: BlockId | None = x
        while y is not None and not self.on_path(y):
            missing.append(y)
            y = self.get(y).parent
        assert y is not None, "the root is always on the path"
        self._truncate(y.height)
        for bid in reversed(missing):
            self._push(bid)
        return y.height

    def _truncate(self, height: int) -> None:
        if height < self._base:   # below the list: restart it at `height`
            self._recent = [self.at(height)]
            self._base = height
        else:
            del self._recent[height - self._base + 1:]
        top = self._recent[-1].term
        for t in [t for t, (lo, _) in self.term_range.items() if lo > height]:
            del self.term_range[t]
        self.term_range[top][1] = height

    def _push(self, bid: BlockId) -> None:
        self._recent.append(bid)
        r = self.term_range.get(bid.term)
        if r is None:
            self.term_range[bid.term] = [bid.height, bid.height]
        else:
            r[1] = bid.height

    def rebase(self, base: Block) -> None:
        """Re-root the tree at `base` (a header of a block on the path, at or above the
        root): everything below it is forgotten, as the snapshot replaced it (A.14).
        Blocks off the path below `base` are gone too: they forked below the commit, so GC
        deleted them already, or they are dead anyway."""
        h = base.id.height
        assert self.on_path(base.id) and h >= self.root.id.height, (base.id, self.root.id)
        if h == self.root.id.height:
            return
        blocks, children = self.blocks, self.children
        for bid in [b for b in blocks if b.height < h]:
            del blocks[bid]
            children.pop(bid, None)
        blocks[base.id] = base
        self.root = base
        if self._base < h:
            del self._recent[:h - self._base]
            self._base = h
        for t in [t for t, (_, hi) in self.term_range.items() if hi < h]:
            del self.term_range[t]
        self.term_range[base.id.term][0] = h
        self.evicted_below = max(self.evicted_below, h + 1)

    def delete_subtree(self, root: BlockId) -> list[BlockId]:
        """Remove root and all its descendants (GC of a dead branch); returns the ids."""
        out = []
        stack = [root]
        while stack:
            b = stack.pop()
            blk = self.blocks.pop(b, None)
            if blk is None:
                continue
            out.append(b)
            stack.extend(self.children.pop(b, ()))
            sib = self.children.get(blk.parent)  # type: ignore[arg-type]
            if sib is not None and b in sib:
                sib.remove(b)
        return out

    def term_summary(self, above: int, limit: int = 16) -> tuple[tuple[int, int], ...]:
        """(term, highest height of that term) for terms on the path above `above`."""
        out = [(t, hi) for t, (lo, hi) in self.term_range.items() if hi > above]
        out.sort(reverse=True)
        return tuple(out[:limit])
