"""`josefine chain` on known forks: the model, the text picture, SVG and PNG, a stopped
node's store read through the CLI, and the core's own description (the `chain` admin
answer) of a fork made by real cores in the test harness."""
from __future__ import annotations

import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from josefine import chainview
from josefine.chain.block import Block, BlockKind, Command, encode_commands, genesis, make_block
from josefine.chain.leveldb import LevelDBStore
from josefine.chainview import (BlockInfo, ChainViewError, chain_view, describe_core,
                                load_store_view, render_image, render_text,
                                view_from_description)
from josefine.launch import cli
from josefine.messages import AppendBlocks, Heartbeat
from josefine.types import BlockId, HardState
from tests.raft.harness import Network

pytestmark = pytest.mark.timeout(120)

CLUSTER = "pic"


def _normal(parent: Block, term: int) -> Block:
    return make_block(parent, term, BlockKind.NORMAL,
                      encode_commands([Command("c", parent.id.height + 1, b"x" * 30)]))


def _fork() -> tuple[list[Block], BlockId, BlockId]:
    """G-(1,1)noop-(1,2)-(3,3)noop-(3,4)-(3,5)-(3,6), commit (3,4), head (3,6); a dead
    term-2 branch (2,3)-(2,4) off (1,2), below the commit; a live term-4 block (4,5) off the
    commit. NORMAL payloads are 49 bytes, NOOPs 0."""
    g = genesis(CLUSTER)
    b1 = make_block(g, 1, BlockKind.NOOP, b"")
    b2 = _normal(b1, 1)
    d3 = _normal(b2, 2)
    d4 = _normal(d3, 2)
    b3 = make_block(b2, 3, BlockKind.NOOP, b"")
    b4 = _normal(b3, 3)
    b5 = _normal(b4, 3)
    b6 = _normal(b5, 3)
    l5 = make_block(b4, 4, BlockKind.NOOP, b"")
    return [g, b1, b2, d3, d4, b3, b4, b5, b6, l5], b6.id, b4.id


def _store(path: Path) -> Path:
    blocks, head, commit = _fork()
    path.parent.mkdir(parents=True, exist_ok=True)
    with LevelDBStore(path, CLUSTER) as s:
        s.write(hard_state=HardState(4, 2), blocks=blocks[1:], head=head, commit=commit)
    return path


@pytest.fixture
def fork_view():
    blocks, head, commit = _fork()
    return chain_view({b.id: BlockInfo.of(b) for b in blocks}, head, commit, node=2, term=4)


def _row(text: str, height: int) -> str:
    rows = [ln for ln in text.splitlines() if ln.split()[:1] == [str(height)]]
    assert len(rows) == 1, (height, text)
    return rows[0]


# ------------------------------------------------------------------ model and text


def test_model_splits_path_dead_and_live_branches(fork_view):
    v = fork_view
    assert [b.id for b in v.path] == [BlockId(0, 0), BlockId(1, 1), BlockId(1, 2), BlockId(3, 3),
                                      BlockId(3, 4), BlockId(3, 5), BlockId(3, 6)]
    assert [(br.fork, [b.id for b in br.blocks], br.dead, br.terms) for br in v.branches] == [
        (BlockId(1, 2), [BlockId(2, 3), BlockId(2, 4)], True, (2,)),
        (BlockId(3, 4), [BlockId(4, 5)], False, (4,)),
    ]
    assert [b.size for b in v.path] == [0, 0, 49, 0, 49, 49, 49]


def test_text_names_path_heights_commit_head_frontier_and_branches(fork_view):
    text = render_text([fork_view])
    lines = text.splitlines()
    assert lines[0].startswith("node 2: term 4; head (3,6), commit (3,4), base (0,0) = genesis")
    for h, term, size, mark in [(0, 0, 0, "*"), (1, 1, 0, "*"), (2, 1, 49, "*"), (3, 3, 0, "*"),
                                (4, 3, 49, "*"), (5, 3, 49, "o"), (6, 3, 49, "o")]:
        cols = _row(text, h).split()
        assert cols[:3] == [str(h), str(term), str(size)], cols
        assert cols[4] == mark and cols[5] == f"({term},{h})", cols
    assert "<- commit" in _row(text, 4) and "<- head" in _row(text, 6)
    assert "<- commit" not in _row(text, 6) and "<- head" not in _row(text, 4)
    assert "base (genesis)" in _row(text, 0)
    frontier = next(i for i, ln in enumerate(lines) if "commit frontier (3,4)" in ln)
    assert lines.index(_row(text, 4)) < frontier < lines.index(_row(text, 5))
    dead = next(ln for ln in lines if "x-- dead branch" in ln)
    assert "forks at height 2 off (1,2), terms 2: (2,3) 49B - (2,4) 49B" in dead
    assert lines.index(_row(text, 2)) < lines.index(dead) < lines.index(_row(text, 3))
    live = next(ln for ln in lines if "+-- branch above the commit" in ln)
    assert "forks at height 4 off (3,4), terms 4: (4,5) 0B" in live


def test_last_n_shows_the_last_heights_and_always_the_commit():
    blocks, head, commit = _fork()
    infos = {b.id: BlockInfo.of(b) for b in blocks}
    v = chain_view(infos, head, commit, last=1)
    assert [b.id.height for b in v.path] == [4, 5, 6]       # the commit stays in the picture
    text = render_text([v])
    assert "heights 0..3 not shown" in text
    assert "forks at height 2 off (1,2), terms 2" in text   # its fork block is not shown
    v = chain_view(infos, head, BlockId(3, 6), last=2)
    assert [b.id.height for b in v.path] == [5, 6]
    assert "commit frontier" not in render_text([v])         # head == commit: no frontier


def test_a_long_branch_is_cut_short_in_text():
    g = genesis(CLUSTER)
    path = [g]
    for _ in range(3):
        path.append(_normal(path[-1], 1))
    side = [path[1]]
    for _ in range(chainview.MAX_BRANCH_SHOWN + 5):
        side.append(_normal(side[-1], 2))
    infos = {b.id: BlockInfo.of(b) for b in path + side[1:]}
    # commit (1,3): the term-2 branch forks at height 1 and is dead
    text = render_text([chain_view(infos, path[-1].id, path[-1].id)])
    assert "... +5 more" in text and "terms 2" in text and "dead branch" in text


# ------------------------------------------------------------------ images


def test_svg_holds_every_block_label_and_the_markers(fork_view, tmp_path):
    out = render_image([fork_view], tmp_path / "fork.svg")
    root = ET.parse(out).getroot()
    texts = ["".join(t.itertext()) for t in root.iter("{http://www.w3.org/2000/svg}text")]
    for label in ["t0 h0", "t1 h1", "t1 h2", "t3 h3", "t3 h4", "t3 h5", "t3 h6", "t2 h3", "t2 h4",
                  "t4 h5", "49B", "0B", "head (3,6)", "base (genesis)",
                  "dead branch, forks at h2, terms 2", "branch, forks at h4, terms 4"]:
        assert label in texts, (label, texts)
    assert any("commit (3,4)" in t for t in texts)
    assert any(t.startswith("node 2: term 4") for t in texts)


def test_png_is_drawn_with_the_dead_branch_in_red(fork_view, tmp_path):
    import matplotlib.image
    import numpy as np

    out = render_image([fork_view, fork_view], tmp_path / "fork.png")
    data = out.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000
    img = matplotlib.image.imread(out)[..., :3]
    red = np.array([0xd9, 0x53, 0x4f]) / 255            # _DEAD
    green = np.array([0x4c, 0x9f, 0x70]) / 255          # _COMMITTED
    assert (np.abs(img - red).max(axis=-1) < 0.02).sum() > 500
    assert (np.abs(img - green).max(axis=-1) < 0.02).sum() > 500


def test_image_needs_a_known_suffix_and_matplotlib(fork_view, tmp_path, monkeypatch):
    with pytest.raises(ChainViewError, match="png or .svg"):
        render_image([fork_view], tmp_path / "fork.jpg")
    monkeypatch.setitem(sys.modules, "matplotlib", None)   # import fails as if absent
    with pytest.raises(ChainViewError, match="needs matplotlib.*pip install"):
        render_image([fork_view], tmp_path / "fork.png")
    assert not (tmp_path / "fork.png").exists()


# ------------------------------------------------------------------ a stopped node's store


def test_cli_reads_a_stopped_nodes_store(tmp_path, capsys):
    for i in (1, 2):   # the layout `josefine launch` writes
        _store(tmp_path / f"node-{i}" / "data" / "chain")
    assert cli.main(["chain", "--data-dir", str(tmp_path), "--node", "2"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("node 2: term 4; head (3,6), commit (3,4)")
    assert "node 1:" not in out
    assert "<- head" in _row(out, 6) and "dead branch" in out
    assert cli.main(["chain", "--data-dir", str(tmp_path), "--last", "2"]) == 0
    out = capsys.readouterr().out
    assert "node 1:" in out and "node 2:" in out and "heights 0..3 not shown" in out
    # a node's own data dir, and its store directly
    assert cli.main(["chain", "--data-dir", str(tmp_path / "node-1" / "data")]) == 0
    assert capsys.readouterr().out.startswith("node 1: ")
    svg = tmp_path / "n1.svg"
    assert cli.main(["chain", "--data-dir", str(tmp_path / "node-1" / "data" / "chain"),
                     "--out", str(svg)]) == 0
    assert "t2 h4" in svg.read_text()


def test_cli_refuses_a_locked_store_and_points_at_cluster(tmp_path, capsys):
    path = _store(tmp_path / "chain")
    with LevelDBStore(path, CLUSTER):   # held open, as by a running node
        assert cli.main(["chain", "--data-dir", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert "is locked" in err and "--cluster" in err
    assert cli.main(["chain", "--data-dir", str(tmp_path / "nothing")]) == 1
    assert "no chain store" in capsys.readouterr().err
    assert not (tmp_path / "nothing").exists()   # looking never creates a store


def test_load_store_view_matches_the_model(tmp_path, fork_view):
    v = load_store_view(_store(tmp_path / "chain"), node=2)
    assert (v.path, v.branches, v.head, v.commit, v.term) == \
        (fork_view.path, fork_view.branches, fork_view.head, fork_view.commit, 4)


# ------------------------------------------------------------------ the core's answer


def test_core_describes_a_fork_made_by_real_leaders_until_gc_removes_it():
    """C.57's fork: old leader n1 holds two term-1 blocks nobody else has while n2 leads
    term 2. n1 then gets n2's blocks with a commit below the fork: both branches are in its
    tree, and its answer draws them; once the commit passes the fork, GC deletes the old
    branch (A.14) and the picture has none."""
    net = Network(5)
    net.elect(1)
    net.heartbeat(1)
    net.partition({1}, {2, 3, 4, 5})
    net.propose(1, b"lost-1", seq=1)
    net.propose(1, b"lost-2", seq=2)
    net.stabilize()
    net.elect(2)
    net.propose(2, b"kept", seq=3)
    net.stabilize()
    n1, n2 = net.nodes[1], net.nodes[2]
    assert n1.head == BlockId(1, 3) and n2.commit == BlockId(2, 3)
    run = tuple(n2.tree.get(n2.tree.at(h)) for h in (2, 3))
    n1.step(AppendBlocks(src=2, dst=1, term=2, prev=BlockId(1, 1), blocks=run,
                         commit=BlockId(1, 1), seq=1))
    desc = describe_core(n1, last=10)
    assert desc["role"] == "follower" and desc["term"] == 2
    v = view_from_description(desc, last=10)
    assert [b.id for b in v.path] == [BlockId(0, 0), BlockId(1, 1), BlockId(2, 2), BlockId(2, 3)]
    assert v.head == BlockId(2, 3) and v.commit == BlockId(1, 1)
    assert [(br.fork, [b.id for b in br.blocks], br.dead, br.terms) for br in v.branches] == [
        (BlockId(1, 1), [BlockId(1, 2), BlockId(1, 3)], False, (1,))]
    text = render_text([v])
    assert "forks at height 1 off (1,1), terms 1: (1,2)" in text
    n1.step(Heartbeat(src=2, dst=1, term=2, commit=BlockId(2, 3), seq=99))
    v = view_from_description(describe_core(n1, last=10))
    assert v.commit == BlockId(2, 3) and v.branches == ()
    assert "no branches off the path" in render_text([v])


def test_core_answer_is_bounded_by_last():
    net = Network(3)
    net.elect(1)
    for i in range(40):
        net.propose(1, b"w%d" % i, seq=i + 1)
        net.stabilize()
    n1 = net.nodes[1]
    desc = describe_core(n1, last=5)
    assert len(desc["blocks"]) == 5
    assert [b[1] for b in desc["blocks"]] == list(range(n1.head.height - 4, n1.head.height + 1))
    assert describe_core(n1, last=10**9)["last"] == chainview.MAX_LAST


def test_core_answer_reports_errors_instead_of_raising():
    net = Network(3)
    n1 = net.nodes[1]
    n1.tree.blocks.clear()   # broken on purpose: the head's block is gone
    assert "error" in describe_core(n1)
    with pytest.raises(ChainViewError, match="node"):
        view_from_description(describe_core(n1))
