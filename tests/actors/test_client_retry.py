"""Exactly-once for remote writes: a write whose answer is lost is retried under the same
(client id, seq), applied once, and answered from the session table.

The write is a compare-and-set, so a second application would be visible to the caller: it
would answer {"ok": False} (the key no longer holds the expected value) where the cached
first result says {"ok": True}. The answer is lost by the node's own fault rules, after the
command was applied and the reply sent, which is the case only a same-key retry can save.
"""
from __future__ import annotations

import pytest

from josefine import KVStateMachine, Node, NodeConfig
from josefine.client import Client
from josefine.config import load_cluster_config
from josefine.fsm.kv import kv_get
from josefine.launch.ports import free_port_block
from josefine.security import client_credentials, make_cluster_keys

pytestmark = pytest.mark.timeout(60)

CLUSTER = "retry"


def test_a_write_whose_reply_was_lost_is_retried_with_its_seq_applied_once_and_answered_cached(
        tmp_path):
    address = f"tcp://127.0.0.1:{free_port_block(1)}"
    keys = tmp_path / "keys"
    cluster_file = make_cluster_keys(keys, CLUSTER, {1: address})
    node = Node.start(NodeConfig(node_id=1, cluster_id=CLUSTER, address=address, peers={},
                                 data_dir=str(tmp_path / "n1"),
                                 secret_key_file=str(keys / "node-1.key_secret"),
                                 cluster_file=str(cluster_file)), KVStateMachine())
    creds = client_credentials(load_cluster_config(cluster_file), source=str(cluster_file))
    client = Client([address], CLUSTER, credentials=creds, timeout=20, request_timeout=0.5)
    try:
        assert node.wait_for_leader(10) == 1
        client.put("k", "v0")          # the connection is up; the session exists
        applied_before = node.applier.commands_applied

        node.faults.drop_client_replies(1)
        assert client.cas("k", "v0", "v1") is True   # the cached first result

        st = node.zt.stats()
        assert st["fault_dropped_client"] == 1, st   # the first answer really was lost
        assert node.applier.commands_applied - applied_before == 1   # applied once ...
        assert node.applier.duplicates == 1 and node.applier.stale == 0   # ... then recognised
        assert node.read(kv_get("k")).result(10) == {"value": "v1"}
        assert client.cas("k", "v1", "v2") is True   # the session moves on normally
        assert node.applier.duplicates == 1
    finally:
        client.close()
        node.stop()
    assert node.fatal_error is None
