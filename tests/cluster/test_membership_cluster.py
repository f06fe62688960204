"""A launched (secure) cluster grows by a node the operator starts by hand: its key goes
into the cluster file, every member reloads its keys, the node starts with ``join = true``,
and the leader adds and promotes it through the ``member`` admin op (docs/protocol.md
A.12, "Runtime")."""
from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from josefine.client import Client, admin_request
from josefine.config import ClusterNode, NodeConfig, load_cluster_config
from josefine.errors import RejectedError
from josefine.security import client_credentials, generate_keypair, write_keypair
from tests.cluster.helpers import (free_port_block, leader_of, running_cluster, statuses,
                                   wait_for)

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(240)]


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "josefine.launch.cli", *args],
                          capture_output=True, text=True, timeout=60)


def _add_to_cluster_file(path, node_id: int, node: ClusterNode) -> None:  # noqa: ANN001
    cc = load_cluster_config(path)
    cc = dataclasses.replace(cc, nodes={**cc.nodes, node_id: node})
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(cc.to_toml(), encoding="utf-8")
    os.replace(tmp, path)


def test_a_fourth_node_started_by_hand_joins_as_learner_and_is_promoted(tmp_path):
    with running_cluster(tmp_path / "c") as rc:
        launcher, addrs = rc.launcher, rc.addrs
        cid, cluster_path = launcher.cluster_id, launcher.cluster_path
        admin = launcher.credentials(admin=True)
        with Client(addrs, cid, timeout=30, credentials=rc.creds) as c:
            for i in range(20):
                c.put(f"before{i}", "v")

        # 1. Its key into the cluster file, and every member trusts it (before it is
        #    added: a member links only to peers whose key it trusts).
        node_dir = launcher.data_dir / "node-4"
        node_dir.mkdir()
        pair = generate_keypair()
        write_keypair(node_dir / "node.key_secret", pair, comment="node 4")
        address = f"tcp://127.0.0.1:{free_port_block(1)}"
        _add_to_cluster_file(cluster_path, 4, ClusterNode(
            address=address, public_key=pair.public.decode(), data_dir=str(node_dir / "data"),
            config_path=str(node_dir / "node.toml")))
        for a in addrs.values():
            assert admin_request(a, cid, "reload_keys", credentials=admin)["nodes"] == 4

        # 2. The operator starts it: join = true, the current members as peers.
        cfg = NodeConfig(node_id=4, cluster_id=cid, address=address, peers=addrs,
                         data_dir=str(node_dir / "data"), join=True,
                         secret_key_file=str(node_dir / "node.key_secret"),
                         cluster_file=str(cluster_path), fsync=False)
        (node_dir / "node.toml").write_text(cfg.to_toml(), encoding="utf-8")
        log = open(node_dir / "node.log", "wb")
        proc = subprocess.Popen([sys.executable, "-m", "josefine.launch.cli", "node",
                                 "--config", str(node_dir / "node.toml")],
                                stdout=log, stderr=subprocess.STDOUT)
        try:
            all_addrs = {**addrs, 4: address}
            creds = client_credentials(load_cluster_config(cluster_path))   # knows node 4
            wait_for(lambda: statuses({4: address}, cid, credentials=creds)[4]
                     .get("role") == "follower", 30, "node 4 to answer")
            # Not a member yet: it neither campaigns nor counts.
            st4 = statuses({4: address}, cid, credentials=creds)[4]
            assert {m["id"] for m in st4["members"]} == {1, 2, 3} and st4["elections"] == 0

            # 3. Added through the Client admin method (any node: it finds the leader).
            with Client.from_cluster_file(str(cluster_path), admin=True, timeout=30) as ac:
                members = ac.change_membership("add_learner", 4, address)
                assert {m["id"]: m["role"] for m in members} == \
                    {1: "voter", 2: "voter", 3: "voter", 4: "learner"}
                with pytest.raises(RejectedError, match="node 4 is already a member"):
                    ac.change_membership("add_learner", 4, address)
                listed = json.loads(_cli("member", "list", "--json", "--cluster",
                                         str(cluster_path)).stdout)["members"]
                assert {m["id"]: m["role"] for m in listed}[4] == "learner"

                deadline = time.monotonic() + 30
                while True:   # promoted once the leader sees it caught up
                    try:
                        members = ac.change_membership("promote", 4)
                        break
                    except RejectedError as exc:
                        if "not caught up" not in str(exc) or time.monotonic() > deadline:
                            raise
                        time.sleep(0.1)
            assert all(m["role"] == "voter" for m in members) and len(members) == 4

            # 4. Every node's `status --json` shows the four voters, node 4 caught up.
            def four_voters():  # noqa: ANN202
                out = _cli("status", "--json", "--cluster", str(cluster_path))
                nodes = json.loads(out.stdout)["nodes"]
                ok = len(nodes) == 4 and all(
                    n["members"] is not None
                    and {m["id"]: m["role"] for m in n["members"]}
                    == {1: "voter", 2: "voter", 3: "voter", 4: "voter"} for n in nodes)
                return nodes if ok and len({tuple(n["applied"]) for n in nodes}) == 1 else None
            nodes = wait_for(four_voters, 30, "four voters on every node, all applied alike")
            assert {n["id"]: n["address"] for n in nodes} == all_addrs
            with Client.from_cluster_file(str(cluster_path), timeout=30) as c:
                c.put("after", "4")
                assert [c.get(f"before{i}") for i in range(20)] == ["v"] * 20
                assert c.get("after") == "4"
        finally:
            _stop([proc])
            log.close()


def _start_node(config: Path, log: Path) -> subprocess.Popen:
    with open(log, "ab") as out:
        return subprocess.Popen([sys.executable, "-m", "josefine.launch.cli", "node",
                                 "--config", str(config)], stdout=out, stderr=subprocess.STDOUT)


def _stop(procs: list[subprocess.Popen]) -> None:
    for p in procs:
        p.send_signal(signal.SIGTERM)
    for p in procs:
        try:
            p.wait(20)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait(10)


def test_member_add_with_address_for_a_node_the_operator_runs(tmp_path):
    """`josefine member add ID --address ADDR --node-key FILE` on a cluster whose nodes the
    operator runs (no launcher): the CLI makes the key pair, puts it into cluster.toml, has
    every member reload its keys, asks the leader to add the node as a learner and waits
    for it to catch up; the operator starts the node meanwhile (join = true), and the
    command returns once it is a voter. On a launched cluster the same command is refused
    (the launcher runs the nodes: `member add` without --address)."""
    from josefine.launch.cluster import Launcher
    files = Launcher(3, tmp_path / "c", free_port_block(3), out=None)
    files.write_configs()      # node.toml and cluster.toml, as an operator would have them
    cluster_path, cid = files.cluster_path, files.cluster_id
    addrs = {i: files.address(i) for i in files.node_ids}
    procs = [_start_node(files.config_path(i), tmp_path / f"node{i}.log") for i in addrs]
    add: subprocess.Popen | None = None
    try:
        creds = client_credentials(load_cluster_config(cluster_path))
        wait_for(lambda: leader_of(addrs, cid, creds), 60, "a leader")
        with Client.from_cluster_file(str(cluster_path), timeout=30) as c:
            for i in range(20):
                c.put(f"before{i}", "v")
        node_dir = tmp_path / "mine"
        node_dir.mkdir()
        key = node_dir / "node.key_secret"
        address = f"tcp://127.0.0.1:{free_port_block(1)}"
        add = subprocess.Popen([sys.executable, "-m", "josefine.launch.cli", "member", "add",
                                "4", "--address", address, "--node-key", str(key),
                                "--cluster", str(cluster_path), "--timeout", "90"],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        # The CLI made the key and put it into the cluster file: now start the node.
        wait_for(lambda: add.poll() is not None
                 or (key.exists() and 4 in load_cluster_config(cluster_path).nodes),
                 60, "the key pair and node 4's entry in cluster.toml")
        assert add.poll() is None, add.communicate()
        cfg = NodeConfig(node_id=4, cluster_id=cid, address=address, peers=addrs,
                         data_dir=str(node_dir / "data"), join=True,
                         secret_key_file=str(key), cluster_file=str(cluster_path),
                         fsync=False)
        (node_dir / "node.toml").write_text(cfg.to_toml(), encoding="utf-8")
        procs.append(_start_node(node_dir / "node.toml", node_dir / "node.log"))
        out, err = add.communicate(timeout=120)
        assert add.returncode == 0, (out, err)
        assert f"node 4 ({address}) is a voter" in out, out
        listed = json.loads(_cli("member", "list", "--json", "--cluster",
                                 str(cluster_path)).stdout)["members"]
        assert {m["id"]: m["role"] for m in listed} == \
            {1: "voter", 2: "voter", 3: "voter", 4: "voter"}
        assert {m["id"]: m["address"] for m in listed}[4] == address
        creds = client_credentials(load_cluster_config(cluster_path))
        # Caught up: node 4 applied as far as every old member had when it became a voter.
        target = max(st["applied"][1]
                     for st in statuses(addrs, cid, credentials=creds).values())
        wait_for(lambda: statuses({4: address}, cid, credentials=creds)[4]
                 .get("applied", [0, 0])[1] >= target, 30, "node 4 to apply the chain")
        with Client.from_cluster_file(str(cluster_path), timeout=30) as c:
            c.put("after", "4")
            assert c.get("before19") == "v" and c.get("after") == "4"
        # The same address again is refused, naming the member that has it.
        again = _cli("member", "add", "--address", address, "--node-key",
                     str(node_dir / "other.key"), "--cluster", str(cluster_path))
        assert again.returncode == 1 and "already node 4's" in again.stderr, again.stderr
    finally:
        if add is not None and add.poll() is None:
            add.kill()
            add.communicate(timeout=10)
        _stop(procs)


def test_member_add_with_address_is_refused_on_a_launched_cluster(tmp_path):
    with running_cluster(tmp_path / "c") as rc:
        r = _cli("member", "add", "4", "--address", f"tcp://127.0.0.1:{free_port_block(1)}",
                 "--node-key", str(tmp_path / "k.key"), "--cluster",
                 str(rc.launcher.cluster_path))
        assert r.returncode == 1, (r.stdout, r.stderr)
        assert "omit --address" in r.stderr and not (tmp_path / "k.key").exists()
        assert set(load_cluster_config(rc.launcher.cluster_path).nodes) == {1, 2, 3}
