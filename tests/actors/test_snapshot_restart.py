"""A node restarting from its snapshots (docs/protocol.md A.13): it restores the newest
usable snapshot and replays only the tail; a torn newest file makes it fall back to the
previous one; with no usable file left above a compacted chain it refuses to start, with
a message that says what to do. Embedded single-node clusters, real files."""
from __future__ import annotations

import dataclasses
import time

import pytest

from josefine import KVStateMachine, Node, NodeConfig
from josefine.fsm.kv import kv_get, kv_put
from josefine.launch.ports import free_port_block
from josefine.runtime.snapshots import SNAPSHOT_DIR, NoUsableSnapshotError
from josefine.snapshot.files import list_snapshots

pytestmark = pytest.mark.timeout(120)

EVERY = 20


def _config(tmp_path) -> NodeConfig:  # noqa: ANN001
    return NodeConfig(node_id=1, cluster_id="snap", address=f"tcp://127.0.0.1:{free_port_block(1)}",
                      peers={}, data_dir=str(tmp_path / "n1"), insecure=True,
                      snapshot_blocks=EVERY)


def _fill(cfg: NodeConfig, n: int) -> dict:
    node = Node.start(cfg, KVStateMachine())
    try:
        node.wait_for_leader(10)
        for i in range(n):
            node.propose(kv_put(f"k{i}", f"v{i}")).result(10)
        # a last snapshot by hand, so the newest file is at the commit
        node.take_snapshot()
        st = node.status()
        return {"applied": st.applied, "base": st.base, "snapshot": st.snapshot,
                "digest": st.sm_digest}
    finally:
        node.stop()


def _restart(cfg: NodeConfig) -> tuple[dict, Node]:
    node = Node.start(cfg, KVStateMachine())
    node.wait_for_leader(10)
    st = node.status()
    return {"applied": st.applied, "base": st.base, "snapshot": st.snapshot}, node


def test_restart_restores_the_newest_snapshot(tmp_path, caplog):
    cfg = _config(tmp_path)
    before = _fill(cfg, 3 * EVERY)
    assert before["base"][1] > 0, "the chain was compacted"
    newest = list_snapshots(tmp_path / "n1" / SNAPSHOT_DIR)[0]
    with caplog.at_level("INFO"):
        after, node = _restart(cfg)
    try:
        assert after["snapshot"] == before["snapshot"]
        assert any("restored snapshot" in r.getMessage() and newest.name in r.getMessage()
                   for r in caplog.records)
        assert node.read(kv_get(f"k{3 * EVERY - 1}")).result(10) == {"value": f"v{3 * EVERY - 1}"}
        assert node.read(kv_get("k0")).result(10) == {"value": "v0"}
    finally:
        node.stop()


def test_a_torn_newest_snapshot_falls_back_to_the_previous_one(tmp_path, caplog):
    cfg = _config(tmp_path)
    before = _fill(cfg, 3 * EVERY)
    snaps = list_snapshots(tmp_path / "n1" / SNAPSHOT_DIR)
    assert len(snaps) == 2, snaps
    newest, older = snaps
    data = newest.read_bytes()
    newest.write_bytes(data[: len(data) // 2])          # torn: cut in the middle
    with caplog.at_level("INFO"):
        after, node = _restart(cfg)
    try:
        assert any("skipping corrupt snapshot" in r.getMessage() and newest.name in r.getMessage()
                   for r in caplog.records)
        assert any(older.name in r.getMessage() and "restored" in r.getMessage()
                   for r in caplog.records)
        assert after["applied"][1] >= before["applied"][1]
        for i in (0, EVERY, 3 * EVERY - 1):      # replayed from the older one: all there
            assert node.read(kv_get(f"k{i}")).result(10) == {"value": f"v{i}"}
    finally:
        node.stop()


def test_no_usable_snapshot_above_a_compacted_chain_refuses_to_start(tmp_path):
    cfg = _config(tmp_path)
    _fill(cfg, 3 * EVERY)
    for p in list_snapshots(tmp_path / "n1" / SNAPSHOT_DIR):
        raw = bytearray(p.read_bytes())
        raw[len(raw) // 2] ^= 0xFF                        # corrupt: one flipped byte
        p.write_bytes(bytes(raw))
    with pytest.raises(NoUsableSnapshotError, match="no valid snapshot at or above it.*wipe"):
        Node.start(cfg, KVStateMachine())


def _taken(node: Node) -> int:
    return node.status().snapshots["taken"]


def test_snapshot_bytes_is_paced_by_the_last_snapshot_size(tmp_path):
    """`snapshot_bytes` triggers a snapshot, but never before as many payload bytes as
    the last snapshot file holds were applied: a large state is not rewritten for every
    small stretch of log (at most 2x write amplification)."""
    value = "x" * 10_000
    cfg = dataclasses.replace(_config(tmp_path), snapshot_blocks=0, snapshot_bytes=20_000,
                              snapshot_on_stop_blocks=0)
    node = Node.start(cfg, KVStateMachine())
    try:
        node.wait_for_leader(10)
        for i in range(50):                       # a state of ~500 KB, grown 10 KB a time
            node.propose(kv_put(f"k{i}", value)).result(10)
        node.take_snapshot()
        size = node.status().snapshots["last_bytes"]
        assert size > 400_000, size
        taken = _taken(node)
        assert taken < 10, f"{taken} snapshots while growing: not paced by their size"
        for _ in range(30):                       # 300 KB more: under the file's size
            node.propose(kv_put("k0", value)).result(10)
        assert _taken(node) == taken, "snapshot_bytes (20 KB) alone would have fired"
        for _ in range(30):                       # 600 KB in all: past it
            node.propose(kv_put("k0", value)).result(10)

        def one_more() -> bool:
            return _taken(node) == taken + 1
        deadline = time.monotonic() + 30
        while not one_more() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert one_more()
    finally:
        node.stop()
