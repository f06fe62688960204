"""Fault injection through the admin request, and the CLI against a real cluster."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from josefine.client import Client, admin_request
from josefine.errors import RejectedError
from josefine.launch.cluster import Launcher
from tests.cluster.helpers import free_port_block, leader_of, statuses, wait_for

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(240)]


@pytest.fixture
def launch(tmp_path):
    made: list[Launcher] = []

    def make(**kw) -> Launcher:
        l = Launcher(3, tmp_path / f"c{len(made)}", free_port_block(3), out=None, **kw)
        l.start()
        made.append(l)
        return l
    yield make
    for l in made:
        l.stop()


def test_fault_rules_are_refused_unless_enabled_at_start(launch):
    l = launch()
    addrs = {i: l.address(i) for i in l.node_ids}
    wait_for(lambda: leader_of(addrs, l.cluster_id, l.credentials()), 30, "a leader")
    with pytest.raises(RejectedError, match="fault injection is disabled"):
        admin_request(addrs[1], l.cluster_id, "faults", {"blocked_out": [2]},
                      credentials=l.credentials(admin=True))


def test_isolating_the_leader_through_fault_rules_elects_another_and_heals(launch):
    l = launch(fault_injection=True)
    addrs = {i: l.address(i) for i in l.node_ids}
    old = wait_for(lambda: leader_of(addrs, l.cluster_id, l.credentials()), 30, "a leader")
    others = [i for i in addrs if i != old]
    # cut the leader off both ways: it blocks the others, they block it
    admin_request(addrs[old], l.cluster_id, "faults", {"blocked_out": others, "blocked_in": others},
                      credentials=l.credentials(admin=True))
    for i in others:
        admin_request(addrs[i], l.cluster_id, "faults", {"blocked_out": [old], "blocked_in": [old]},
                      credentials=l.credentials(admin=True))
    wait_for(lambda: (lambda x: x if x in others else None)(
        leader_of({i: addrs[i] for i in others}, l.cluster_id, l.credentials())), 30, "a leader among the rest")
    with Client({i: addrs[i] for i in others}, l.cluster_id, timeout=20, credentials=l.credentials()) as c:
        c.put("during", "partition")
    # the isolated old leader steps down (check-quorum) and cannot serve a linearizable read
    wait_for(lambda: statuses({old: addrs[old]}, l.cluster_id, credentials=l.credentials())[old].get("role") != "leader",
             30, "the isolated leader to step down")
    for i in addrs:
        admin_request(addrs[i], l.cluster_id, "clear_faults",
                      credentials=l.credentials(admin=True))
    with Client(addrs, l.cluster_id, timeout=20, credentials=l.credentials()) as c:
        assert c.get("during") == "partition"
    st = wait_for(lambda: (lambda s: s if len({tuple(x.get("applied", ())) for x in s.values()})
                           == 1 else None)(statuses(addrs, l.cluster_id, credentials=l.credentials())), 30, "convergence")
    assert st[old]["role"] == "follower"
    assert st[old]["term"] == max(x["term"] for x in st.values())


def _cli(*args: str, env: dict) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "josefine.launch.cli", *args],
                          capture_output=True, text=True, timeout=60, env=env)


def test_cli_put_get_cas_delete_status(launch):
    l = launch()
    addrs = {i: l.address(i) for i in l.node_ids}
    wait_for(lambda: leader_of(addrs, l.cluster_id, l.credentials()), 30, "a leader")
    env = {**os.environ, "JOSEFINE_CLUSTER": str(l.cluster_path)}
    assert _cli("put", "color", "blue", env=env).returncode == 0
    r = _cli("get", "color", env=env)
    assert r.returncode == 0 and r.stdout.strip() == "blue"
    assert _cli("cas", "color", "red", "green", env=env).returncode == 3
    assert _cli("cas", "color", "blue", "green", env=env).returncode == 0
    assert _cli("get", "color", env=env).stdout.strip() == "green"
    assert _cli("delete", "color", env=env).returncode == 0
    assert _cli("get", "color", env=env).returncode == 3
    r = _cli("status", "--json", env=env)
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    assert doc["cluster_id"] == l.cluster_id
    nodes = {n["id"]: n for n in doc["nodes"]}
    assert set(nodes) == {1, 2, 3}
    assert sum(1 for n in nodes.values() if n["role"] == "leader") == 1
    for i, n in nodes.items():
        assert n["reachable"] is True and n["pid"] == l.pid(i)
        assert n["address"] == addrs[i]
        for k in ("term", "leader", "head", "commit", "applied", "dropped_frames"):
            assert k in n
        assert n["rss_bytes"] > 1 << 20 and n["leveldb_memory_bytes"] > 0
    l.stop_node(2)
    r = _cli("status", "--json", env=env)
    doc = json.loads(r.stdout)
    down = next(n for n in doc["nodes"] if n["id"] == 2)
    assert down["reachable"] is False and down["role"] == "unreachable"
    assert r.returncode == 1
