"""`josefine chain`: a node's block tree as a picture (text for a terminal, PNG or SVG).

The chain of blocks is what sets Chained Raft apart from Raft's log, so an operator should be
able to see it: the committed path, the commit frontier, the head, and the branches beside the
path (docs/protocol.md A.2, A.7, A.14). Three layers, so each can be tested alone:

* **Collecting**, bounded. `describe_core` runs on the role actor's thread (the only thread
  that may read a core) and packs the last N heights of the path, every path block above the
  commit and every stored block off the path into a small msgpack-friendly dict: the answer
  to the `chain` admin request. `load_store_view` reads a *stopped* node's LevelDB store.
* **The model**. `chain_view` is a pure function from blocks, head and commit to a
  `ChainView`: which path heights to show, and each branch with the height it forks at,
  its terms, and whether it is dead (it forks below the commit, so it can never commit).
* **Rendering**. `render_text` draws with ASCII only (any terminal, any locale);
  `render_image` uses matplotlib, imported only when an image is asked for.

Snapshots do not exist yet (A.14), so every node's chain starts at genesis; the views carry a
`base` all the same (`snapshot_base`), so that a snapshot base has one place to plug in.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from josefine.chain.block import Block, BlockKind
from josefine.types import GENESIS_ID, BlockId

if TYPE_CHECKING:
    from josefine.raft.core import RaftCore

__all__ = ["DEFAULT_LAST", "MAX_LAST", "BlockInfo", "Branch", "ChainView", "ChainViewError",
           "chain_view", "describe_core", "view_from_description", "load_store_view",
           "render_text", "render_image", "snapshot_base"]

DEFAULT_LAST = 20
MAX_LAST = 10_000
"""Upper bound of `--last`. The role actor collects the answer on its own thread, reading
path blocks it has evicted from memory back from LevelDB for their sizes: 10,000 of them
take it about 50 ms (a pause of the node's protocol work, below an election timeout), and
the answer is about 110 KB of msgpack, far below a frame's 16 MiB."""
MAX_OFF_PATH = 10_000
"""At most this many off-path blocks in one answer; the rest are counted in `omitted`."""
MAX_BRANCH_SHOWN = 8
"""A text picture lists at most this many blocks of one branch, then how many more."""


class ChainViewError(Exception):
    """The picture cannot be made (a locked or missing store, no matplotlib, a bad node)."""


@dataclass(frozen=True, slots=True)
class BlockInfo:
    """What the picture needs of a block: no payload, only its size in bytes."""

    id: BlockId
    parent: BlockId | None
    kind: int
    size: int

    @classmethod
    def of(cls, b: Block) -> "BlockInfo":
        return cls(b.id, b.parent, int(b.kind), len(b.payload))


@dataclass(frozen=True, slots=True)
class Branch:
    """Blocks off the path that hang from one path block (`fork`), in height order."""

    fork: BlockId
    blocks: tuple[BlockInfo, ...]
    dead: bool
    """It forks below the commit: the committed path holds another block at its first
    height, so none of it can ever commit (garbage collection deletes such branches, A.14)."""

    @property
    def fork_height(self) -> int:
        return self.fork.height

    @property
    def terms(self) -> tuple[int, ...]:
        return tuple(sorted({b.id.term for b in self.blocks}))


@dataclass(frozen=True, slots=True)
class ChainView:
    """One node's chain, ready to draw. `path` holds the shown heights only (ascending)."""

    head: BlockId
    commit: BlockId
    path: tuple[BlockInfo, ...]
    branches: tuple[Branch, ...] = ()
    base: BlockId = GENESIS_ID
    node: int | None = None
    term: int | None = None
    role: str | None = None
    source: str = ""
    omitted: int = 0
    """Off-path blocks the node left out of its answer (over `MAX_OFF_PATH`)."""
    extra: dict = field(default_factory=dict)

    @property
    def first_height(self) -> int:
        return self.path[0].id.height if self.path else self.head.height

    @property
    def dead_branches(self) -> tuple[Branch, ...]:
        return tuple(b for b in self.branches if b.dead)


def snapshot_base(core: "RaftCore | None" = None) -> BlockId:
    """The lowest block a node still holds: genesis until snapshots exist (A.14). A snapshot
    would move it up to the snapshot's block, and the views would start there."""
    return GENESIS_ID


def _shown_from(head: BlockId, commit: BlockId, base: BlockId, last: int) -> int:
    """Lowest path height shown: the last `last` heights, and always the commit, so that the
    commit frontier is in the picture even when the head is far ahead of it."""
    return max(base.height, min(head.height - last + 1, commit.height),
               head.height - MAX_LAST - last + 1)


# ------------------------------------------------------------------ the model


def chain_view(blocks: Mapping[BlockId, BlockInfo], head: BlockId, commit: BlockId, *,
               last: int = DEFAULT_LAST, base: BlockId = GENESIS_ID, node: int | None = None,
               term: int | None = None, role: str | None = None, source: str = "",
               omitted: int = 0) -> ChainView:
    """Lay out a node's blocks: the path genesis..head (its last `last` heights and the
    commit), and every other block grouped into branches by the path block they hang from.

    `blocks` may lack path blocks below what is shown (a node's answer leaves them out); a
    block whose parent is missing is then taken to hang from the path, which is the only
    place an omitted block can be."""
    if head not in blocks:
        raise ChainViewError(f"head {head} is not among the blocks")
    on_path: dict[BlockId, BlockInfo] = {}
    x: BlockId | None = head
    while x is not None and x in blocks and x.height >= base.height:
        info = blocks[x]
        on_path[x] = info
        x = info.parent
    lo = _shown_from(head, commit, base, last)
    shown = tuple(sorted((b for b in on_path.values() if b.id.height >= lo),
                         key=lambda b: b.id.height))
    off = {bid: b for bid, b in blocks.items() if bid not in on_path and bid.height > base.height}
    children: dict[BlockId, list[BlockInfo]] = {}
    roots: list[BlockInfo] = []
    for b in off.values():
        if b.parent is not None and b.parent in off:
            children.setdefault(b.parent, []).append(b)
        else:
            roots.append(b)
    branches = []
    for r in sorted(roots, key=lambda b: (b.id.height, b.id.term)):
        members = []
        stack = [r]
        while stack:
            b = stack.pop()
            members.append(b)
            stack.extend(children.get(b.id, ()))
        members.sort(key=lambda b: (b.id.height, b.id.term))
        fork = r.parent if r.parent is not None else GENESIS_ID
        branches.append(Branch(fork, tuple(members), dead=fork.height < commit.height))
    return ChainView(head=head, commit=commit, path=shown, branches=tuple(branches), base=base,
                     node=node, term=term, role=role, source=source, omitted=omitted)


# ------------------------------------------------------------------ collecting


def _pack(b: BlockInfo) -> list:
    p = b.parent
    return [b.id.term, b.id.height, None if p is None else p.term,
            None if p is None else p.height, b.kind, b.size]


def describe_core(core: "RaftCore", last: int = DEFAULT_LAST) -> dict:
    """The `chain` admin answer: a bounded description of `core`'s block tree.

    Must run on the thread that owns the core (the role actor's). Path blocks the core has
    evicted from memory are read back through its loader, only for their sizes. Never
    raises: a failure is reported as {"error": ...}, since a diagnostic must not stop a node."""
    try:
        tree = core.tree
        last = max(1, min(int(last), MAX_LAST))
        base = snapshot_base(core)
        head, commit = tree.head, core.commit
        lo = _shown_from(head, commit, base, last)
        out = []
        for h in range(lo, head.height + 1):
            out.append(_pack(BlockInfo.of(tree.get(tree.at(h)))))
        off = sorted(bid for bid in tree.blocks if not tree.on_path(bid))
        omitted = max(0, len(off) - MAX_OFF_PATH)
        for bid in off[:MAX_OFF_PATH]:
            out.append(_pack(BlockInfo.of(tree.blocks[bid])))
        return {"node": core.id, "term": core.term, "role": core.role.name.lower(),
                "head": list(head), "commit": list(commit), "base": list(base),
                "last": last, "blocks": out, "omitted": omitted}
    except Exception as exc:  # noqa: BLE001 - reported to the asking client instead
        return {"error": f"{type(exc).__name__}: {exc}"}


def _bid(v: Any) -> BlockId:
    if not (isinstance(v, (list, tuple)) and len(v) == 2 and all(type(x) is int for x in v)):
        raise ChainViewError(f"not a block id: {v!r}")
    return BlockId(v[0], v[1])


def view_from_description(d: Mapping[str, Any], last: int = DEFAULT_LAST,
                          source: str = "") -> ChainView:
    """The view of a node's `chain` answer (see `describe_core`)."""
    if "error" in d:
        raise ChainViewError(f"node {d.get('node', '?')}: {d['error']}")
    blocks: dict[BlockId, BlockInfo] = {}
    try:
        for t, h, pt, ph, kind, size in d["blocks"]:
            parent = None if pt is None else BlockId(pt, ph)
            blocks[BlockId(t, h)] = BlockInfo(BlockId(t, h), parent, kind, size)
        return chain_view(blocks, _bid(d["head"]), _bid(d["commit"]), last=last,
                          base=_bid(d.get("base", list(GENESIS_ID))), node=d.get("node"),
                          term=d.get("term"), role=d.get("role"), source=source,
                          omitted=int(d.get("omitted", 0)))
    except (KeyError, TypeError, ValueError) as exc:
        raise ChainViewError(f"malformed chain description: {exc!r}") from None


def load_store_view(path: str | Path, last: int = DEFAULT_LAST, node: int | None = None) -> ChainView:
    """The view of a stopped node's LevelDB chain store at `path` (the `chain` directory).

    LevelDB locks its directory, so the store of a running node cannot be opened: that is
    reported as such, pointing at `--cluster`. Opening never creates a store."""
    import plyvel

    from josefine.chain.leveldb import KEY_CLUSTER, LevelDBStore

    path = Path(path)
    if not (path / "CURRENT").is_file():
        raise ChainViewError(f"no chain store at {path}")
    try:
        # The store needs its cluster id to open; the store itself records it.
        db = plyvel.DB(str(path), create_if_missing=False)
        try:
            raw = db.get(KEY_CLUSTER)
        finally:
            db.close()
        if raw is None:
            raise ChainViewError(f"{path}: no cluster id recorded; not a Josefine chain store")
        store = LevelDBStore(path, raw.decode())
    except plyvel.IOError as exc:
        if "lock" in str(exc).lower():
            raise ChainViewError(
                f"{path} is locked: its node is running (LevelDB allows one process at a "
                "time). Ask the running cluster instead: josefine chain --cluster FILE") from None
        raise ChainViewError(f"cannot open {path}: {exc}") from None
    with store:
        st = store.load()
    infos = {bid: BlockInfo.of(b) for bid, b in st.blocks.items()}
    return chain_view(infos, st.head, st.commit, last=last, node=node,
                      term=st.hard_state.term, source=str(path))


# ------------------------------------------------------------------ text


def _kind_name(kind: int) -> str:
    try:
        return BlockKind(kind).name.lower()
    except ValueError:
        return f"kind{kind}"


def _branch_text(br: Branch) -> str:
    shown = br.blocks[:MAX_BRANCH_SHOWN]
    parts = []
    prev = br.fork
    for b in shown:
        link = "" if b.parent == prev else f"[on {b.parent}]"
        parts.append(f"{link}{b.id} {b.size}B")
        prev = b.id
    more = len(br.blocks) - len(shown)
    chain = " - ".join(parts) + (f" - ... +{more} more" if more > 0 else "")
    what = ("dead branch (forks below the commit: can never commit)" if br.dead
            else "branch above the commit (may still win)")
    terms = ",".join(str(t) for t in br.terms)
    return f"{what}, forks at height {br.fork_height} off {br.fork}, terms {terms}: {chain}"


def render_text(views: Sequence[ChainView]) -> str:
    """ASCII picture of each view: one row per shown path height, branches under the row of
    the block they fork from, the commit frontier as a rule below the commit's row."""
    out: list[str] = []
    for v in views:
        if out:
            out.append("")
        who = f"node {v.node}" if v.node is not None else "node"
        facts = [f"term {v.term}" if v.term is not None else "", v.role or ""]
        out.append(f"{who}: " + ", ".join(f for f in facts if f) + ("; " if any(facts) else "")
                   + f"head {v.head}, commit {v.commit}, base {v.base}"
                   + (" = genesis (no snapshots yet)" if v.base == GENESIS_ID else " (snapshot)")
                   + (f"  [{v.source}]" if v.source else ""))
        out.append("  * committed   o not yet committed   x dead branch   + live branch")
        out.append(f"  {'height':>8} {'term':>6} {'bytes':>8}  {'kind':<6}  block")
        by_fork: dict[BlockId, list[Branch]] = {}
        for br in v.branches:
            by_fork.setdefault(br.fork, []).append(br)
        shown_ids = {b.id for b in v.path}
        hidden = [br for br in v.branches if br.fork not in shown_ids]
        if v.path and v.first_height > v.base.height:
            out.append(f"  {'...':>8}  heights {v.base.height}..{v.first_height - 1} not "
                       "shown (all committed; see --last)")
        for br in hidden:
            out.append(f"  {'':>8}  {'x' if br.dead else '+'}-- {_branch_text(br)}")
        for b in v.path:
            h = b.id.height
            mark = "*" if h <= v.commit.height else "o"
            notes = []
            if b.id == v.base:
                notes.append("base" + (" (genesis)" if b.id == GENESIS_ID else ""))
            if b.id == v.commit:
                notes.append("<- commit")
            if b.id == v.head:
                notes.append("<- head")
            out.append(f"  {h:>8} {b.id.term:>6} {b.size:>8}  {_kind_name(b.kind):<6}  "
                       f"{mark} {b.id}" + ("  " + ", ".join(notes) if notes else ""))
            for br in by_fork.get(b.id, ()):
                out.append(f"  {'':>8} {'':>6} {'':>8}  {'':<6}  |")
                out.append(f"  {'':>8} {'':>6} {'':>8}  {'':<6}  {'x' if br.dead else '+'}-- "
                           + _branch_text(br))
            if b.id == v.commit and v.head != v.commit:
                out.append(f"  {'':->8}-{'':->6}-{'':->8}--{'':-<6}  commit frontier "
                           f"{v.commit}: above it, not yet committed")
        if not v.branches:
            out.append("  no branches off the path")
        if v.omitted:
            out.append(f"  ({v.omitted} more off-path blocks not listed)")
    return "\n".join(out) + "\n"


# ------------------------------------------------------------------ image

_LABEL_LIMIT = 80
"""Per-block labels only while a node shows at most this many blocks (else they overlap)."""


def _matplotlib() -> Any:
    try:
        import matplotlib
    except ImportError:
        raise ChainViewError("an image needs matplotlib, which is not installed: "
                             "pip install 'josefine[bench]' (or pip install matplotlib), "
                             "or leave out --out for the text picture") from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def render_image(views: Sequence[ChainView], out: str | Path) -> Path:
    """Draw the views into `out` (.png or .svg), one row of blocks per node.

    Path blocks sit on the middle lane (x = height), committed ones filled, the rest
    outlined; branches sit on lanes below, joined to their fork block; a dashed line is the
    commit frontier. SVG text stays text (not glyph outlines), so labels can be searched."""
    out = Path(out)
    fmt = out.suffix.lower().lstrip(".")
    if fmt not in ("png", "svg"):
        raise ChainViewError(f"{out}: the image must be a .png or .svg file")
    if not views:
        raise ChainViewError("nothing to draw")
    plt = _matplotlib()
    from matplotlib.collections import PatchCollection
    from matplotlib.patches import Rectangle
    from matplotlib.ticker import MaxNLocator

    lanes = [1 + sum(1 for _ in v.branches) for v in views]
    span = max(max(1, len(v.path)) for v in views)
    width = min(40.0, max(8.0, 0.9 * min(span, _LABEL_LIMIT) + 2))
    heights = [1.2 + 0.9 * n for n in lanes]
    with plt.rc_context({"svg.fonttype": "none", "font.size": 8}):
        fig, axes = plt.subplots(len(views), 1, figsize=(width, sum(heights) + 0.6),
                                 squeeze=False, gridspec_kw={"height_ratios": heights})
        for ax, v in zip(axes[:, 0], views, strict=True):
            _draw_view(ax, v, Rectangle, PatchCollection, MaxNLocator)
        fig.tight_layout()
        fig.savefig(out, format=fmt, dpi=100)
        plt.close(fig)
    return out


_COMMITTED, _OPEN, _DEAD, _LIVE = "#4c9f70", "#ffffff", "#d9534f", "#f0ad4e"


def _draw_view(ax: Any, v: ChainView, Rectangle: Any, PatchCollection: Any,  # noqa: N803
               MaxNLocator: Any) -> None:  # noqa: N803
    n_blocks = len(v.path) + sum(len(b.blocks) for b in v.branches)
    labels = n_blocks <= _LABEL_LIMIT
    w, hh = 0.8, 0.6
    rects, colors = [], []

    def box(x: float, y: float, color: str, text: str | None) -> None:
        rects.append(Rectangle((x - w / 2, y - hh / 2), w, hh))
        colors.append(color)
        if text is not None:
            ax.text(x, y, text, ha="center", va="center", fontsize=7)

    for b in v.path:
        h = b.id.height
        box(h, 0, _COMMITTED if h <= v.commit.height else _OPEN,
            f"t{b.id.term} h{h}\n{b.size}B" if labels else None)
    for i, br in enumerate(v.branches):
        y = -(i + 1.0)
        color = _DEAD if br.dead else _LIVE
        for b in br.blocks:
            box(b.id.height, y, color, f"t{b.id.term} h{b.id.height}\n{b.size}B" if labels else None)
        first = br.blocks[0]
        ax.plot([br.fork.height + w / 2, first.id.height - w / 2], [0, y], color="#555555",
                linewidth=0.8)
        kind = "dead branch" if br.dead else "branch"
        ax.text(br.blocks[-1].id.height + 0.6, y,
                f"{kind}, forks at h{br.fork_height}, terms {','.join(map(str, br.terms))}",
                ha="left", va="center", fontsize=7, color=color)
    ax.add_collection(PatchCollection(rects, facecolors=colors, edgecolors="#333333",
                                      linewidths=0.6 if labels else 0.0))
    if not labels:   # blocks too small to label: mark where each term starts instead
        starts = [b for i, b in enumerate(v.path) if i == 0 or b.id.term != v.path[i - 1].id.term]
        if len(starts) <= 40:
            for b in starts:
                ax.plot([b.id.height - 0.5] * 2, [-hh / 2, hh / 2 + 0.15], color="#333333",
                        linewidth=0.8)
                ax.text(b.id.height - 0.5, hh / 2 + 0.17, f"term {b.id.term}", ha="left",
                        va="bottom", fontsize=7)
    xs = [b.id.height for b in v.path] + [b.id.height for br in v.branches for b in br.blocks]
    x0, x1 = (min(xs), max(xs)) if xs else (0, 1)
    ax.axvline(v.commit.height + 0.5, color="#1f4e79", linestyle="--", linewidth=1)
    ax.text(v.commit.height + 0.5, 0.55, f" commit {v.commit}", color="#1f4e79",
            ha="left" if v.head == v.commit else "right", va="bottom", fontsize=7)
    ax.annotate(f"head {v.head}", (v.head.height, hh / 2), (v.head.height, 0.95),
                ha="center", fontsize=7, arrowprops={"arrowstyle": "->", "linewidth": 0.8})
    if v.path and v.path[0].id == v.base:
        ax.text(v.base.height, -hh / 2 - 0.05, "base (genesis)" if v.base == GENESIS_ID
                else "base (snapshot)", ha="center", va="top", fontsize=6)
    who = f"node {v.node}" if v.node is not None else "node"
    facts = ", ".join(str(f) for f in (f"term {v.term}" if v.term is not None else None,
                                       v.role) if f)
    title = f"{who}{': ' + facts if facts else ''} — head {v.head}, commit {v.commit}"
    if v.path and v.first_height > v.base.height:
        title += f"; heights {v.base.height}..{v.first_height - 1} not shown"
    ax.set_title(title, loc="left", fontsize=9)
    right = x1 + (6 if v.branches else 1.5)
    ax.set_xlim(x0 - 1, right)
    ax.set_ylim(-len(v.branches) - 0.7, 1.3)
    ax.set_yticks([])
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("height")
    for s in ("top", "right", "left"):
        ax.spines[s].set_visible(False)
