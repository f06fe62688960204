"""Prometheus metrics: a launched cluster's nodes serve the documented names, and the
heights move as writes commit; a node without `metrics_address` measures nothing."""
from __future__ import annotations

import json
import subprocess
import sys
import threading
import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families

from josefine import KVStateMachine, Node, NodeConfig
from josefine.client import Client
from josefine.config import ConfigError, load_cluster_config
from josefine.fsm.kv import kv_put
from josefine.launch.cluster import Launcher
from josefine.security import make_cluster_keys
from tests.cluster.helpers import free_port_block, leader_of, wait_for

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(240)]

NAMES = {"josefine_term", "josefine_commit_height", "josefine_applied_height",
         "josefine_head_height", "josefine_is_leader", "josefine_fsync_seconds",
         "josefine_commit_seconds", "josefine_batch_commands", "josefine_dropped_frames",
         "josefine_elections", "josefine_follower_match_height", "josefine_base_height",
         "josefine_snapshots", "josefine_snapshots_installed",
         "josefine_snapshot_write_seconds", "josefine_snapshot_height"}
"""Family names as the parser reports them (counters without their `_total` suffix)."""


def scrape(address: str) -> dict[str, dict[tuple, float]]:
    """{family name: {(sample name, sorted labels): value}} of one node's /metrics."""
    with urllib.request.urlopen(f"http://{address}/metrics", timeout=5) as resp:
        text = resp.read().decode()
    out: dict[str, dict[tuple, float]] = {}
    for fam in text_string_to_metric_families(text):
        out[fam.name] = {(s.name, tuple(sorted(s.labels.items()))): s.value
                         for s in fam.samples}
    return out


def value(fams: dict, family: str, sample: str | None = None, **labels: str) -> float:
    return fams[family][(sample or family, tuple(sorted(labels.items())))]


def test_a_launched_cluster_serves_its_metrics_and_they_move_with_writes(tmp_path):
    base, mbase = free_port_block(3), free_port_block(3)
    # snapshots every 20 blocks: the 50 writes below make every node take some
    launcher = Launcher(3, tmp_path / "c", base, out=None, metrics_base_port=mbase,
                        snapshot_blocks=20)
    launcher.start()
    try:
        cc = load_cluster_config(launcher.cluster_path)
        maddr = {i: n.metrics_address for i, n in cc.nodes.items()}
        assert maddr == {i: f"127.0.0.1:{mbase + i - 1}" for i in (1, 2, 3)}
        addrs = {i: launcher.address(i) for i in launcher.node_ids}
        creds = launcher.credentials()
        leader = wait_for(lambda: leader_of(addrs, launcher.cluster_id, creds), 30, "a leader")
        with Client(addrs, launcher.cluster_id, timeout=30, credentials=creds) as c:
            c.put("warm", "up")
            before = {i: scrape(a) for i, a in maddr.items()}
            for i in range(50):
                c.put(f"k{i}", "v")
        after = wait_for(lambda: (a := {i: scrape(x) for i, x in maddr.items()}) and all(
            value(f, "josefine_snapshots", "josefine_snapshots_total") >= 2
            for f in a.values()) and a, 30, "two snapshots on every node")

        lead = after[leader]
        assert NAMES <= set(lead), NAMES - set(lead)
        assert value(lead, "josefine_is_leader") == 1.0
        assert value(lead, "josefine_term") >= 1
        assert value(lead, "josefine_commit_height") >= \
            value(before[leader], "josefine_commit_height") + 50
        assert value(lead, "josefine_commit_seconds", "josefine_commit_seconds_count") >= 50
        assert value(lead, "josefine_batch_commands", "josefine_batch_commands_sum") >= 50
        assert value(lead, "josefine_fsync_seconds", "josefine_fsync_seconds_count") > \
            value(before[leader], "josefine_fsync_seconds", "josefine_fsync_seconds_count")
        peers = {dict(k[1])["peer"] for k in lead["josefine_follower_match_height"]}
        assert peers == {str(i) for i in (1, 2, 3) if i != leader}
        for i, fams in after.items():
            if i == leader:
                continue
            assert value(fams, "josefine_is_leader") == 0.0
            assert "josefine_follower_match_height" not in fams   # leader only
            assert value(fams, "josefine_head_height") >= value(fams, "josefine_commit_height")
            assert value(fams, "josefine_applied_height") > \
                value(before[i], "josefine_applied_height")
            assert value(fams, "josefine_fsync_seconds", "josefine_fsync_seconds_count") > 0
        assert sum(value(f, "josefine_elections", "josefine_elections_total")
                   for f in after.values()) >= 1
        for fams in after.values():   # two snapshots: the chain is cut at the older one
            assert 0 < value(fams, "josefine_base_height") \
                < value(fams, "josefine_snapshot_height") \
                <= value(fams, "josefine_applied_height")
            assert value(fams, "josefine_snapshot_write_seconds") > 0
        out = subprocess.run([sys.executable, "-m", "josefine.launch.cli", "status", "--json",
                              "--cluster", str(launcher.cluster_path)],
                             capture_output=True, text=True, timeout=60)
        rows = json.loads(out.stdout)["nodes"]
        assert {r["id"]: r["metrics_address"] for r in rows} == maddr
    finally:
        launcher.stop()
    assert all(pid is None for pid in launcher.pids().values())


def _node_config(tmp_path, port: int, metrics: str | None) -> NodeConfig:  # noqa: ANN001
    address = f"tcp://127.0.0.1:{port}"
    cluster_file = make_cluster_keys(tmp_path / "keys", "m", {1: address})
    return NodeConfig(node_id=1, cluster_id="m", address=address, peers={},
                      data_dir=str(tmp_path / "n1"), metrics_address=metrics,
                      secret_key_file=str(tmp_path / "keys" / "node-1.key_secret"),
                      cluster_file=str(cluster_file))


def test_metrics_off_by_default_installs_nothing(tmp_path):
    before = {t.ident for t in threading.enumerate()}
    node = Node.start(_node_config(tmp_path, free_port_block(1), None), KVStateMachine())
    try:
        node.wait_for_leader(10)
        assert node.propose(kv_put("k", "v")).result(10) == {"ok": True}
        assert node.metrics is None and node.writer.observe_sync is None
        new = [t.name for t in threading.enumerate() if t.ident not in before]
        assert not [n for n in new if "serve_forever" in n], new
        assert node.status().metrics_address is None
    finally:
        node.stop()


def test_an_embedded_node_serves_metrics_and_closes_its_listener(tmp_path):
    maddr = f"127.0.0.1:{free_port_block(1)}"
    node = Node.start(_node_config(tmp_path, free_port_block(1), maddr), KVStateMachine())
    try:
        node.wait_for_leader(10)
        node.propose(kv_put("k", "v")).result(10)
        fams = scrape(maddr)
        assert value(fams, "josefine_is_leader") == 1.0
        assert value(fams, "josefine_commit_height") >= 2
        assert node.status().metrics_address == maddr
    finally:
        node.stop()
    with pytest.raises(OSError):
        scrape(maddr)


def test_a_taken_metrics_port_is_a_clear_config_error(tmp_path):
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        taken = f"127.0.0.1:{s.getsockname()[1]}"
        with pytest.raises(ConfigError, match="metrics_address.*cannot listen"):
            Node.start(_node_config(tmp_path, free_port_block(1), taken), KVStateMachine())


@pytest.mark.parametrize("bad", ["9101", "tcp://127.0.0.1:9101", "127.0.0.1:0", "host:x"])
def test_a_malformed_metrics_address_is_refused(tmp_path, bad):
    with pytest.raises(ConfigError, match="metrics_address"):
        _node_config(tmp_path, 7000, bad)
