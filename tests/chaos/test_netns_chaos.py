"""`josefine chaos --netns`: partitions made by the kernel.

The command construction needs no root. As root: a directed cut drops exactly the one
direction it names (silently: the sender times out), leaves the root namespace's clients
alone, and heals; and a 60 s chaos run over a netns cluster, partitions by the kernel next
to kills and pauses, passes every check and leaves nothing behind.
"""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from josefine.chaos import ChaosConfig, run_chaos
from josefine.chaos.config import DEFAULT_FAULTS
from josefine.chaos.netns_faults import (CUT_PREF, LOCAL_PREF, MECHANISM, KernelPartitioner,
                                         cut_commands, prepare_commands)
from josefine.launch import netns
from josefine.launch.netns import NetnsError, NetnsPlan
from tests.launch.test_netns_launch import ENV, JOSEFINE, _ip_state, needs_netns

pytestmark = pytest.mark.timeout(30)  # per test; the ones starting clusters say more


def test_cut_commands_name_the_receiver_and_the_senders_address():
    plan = NetnsPlan(3, tag="abc123")
    ports = {1: 7001, 2: 7002, 3: 7003}
    cmds = cut_commands(plan, ports, {(3, 2), (1, 2), (2, 1)})
    assert [" ".join(c) for c in cmds] == [
        f"ip -n jf-abc123-n2 rule add pref {CUT_PREF} from 10.213.47.11/32 ipproto tcp dport 7002 blackhole",
        f"ip -n jf-abc123-n1 rule add pref {CUT_PREF} from 10.213.47.12/32 ipproto tcp dport 7001 blackhole",
        f"ip -n jf-abc123-n2 rule add pref {CUT_PREF} from 10.213.47.13/32 ipproto tcp dport 7002 blackhole",
    ]
    with pytest.raises(NetnsError, match="itself"):
        cut_commands(plan, ports, {(2, 2)})
    with pytest.raises(NetnsError, match="no port for node"):
        KernelPartitioner(plan, {1: 7001})


def test_local_rule_is_added_at_its_new_place_before_it_leaves_the_old():
    flat = [" ".join(c[3:]) for c in prepare_commands(NetnsPlan(2, tag="abc123"))]
    assert flat == [f"rule add pref {LOCAL_PREF} lookup local", "rule del pref 0 lookup local"] * 2
    assert CUT_PREF < LOCAL_PREF


SERVER = """
import socket, sys
s = socket.create_server((sys.argv[1], int(sys.argv[2]))); print("up", flush=True)
while True:
    c, _ = s.accept(); c.sendall(b"ok"); c.close()
"""

PROBE = """
import socket, sys
try:
    with socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=1.0) as c:
        print(c.recv(2).decode())
except OSError as exc:
    print(type(exc).__name__)
"""


@needs_netns
@pytest.mark.timeout(90)
def test_a_cut_drops_one_direction_silently_and_heals(tmp_path):
    net = netns.Network(NetnsPlan(3, subnet="10.213.221.0/24"), env=ENV)
    net.create()
    servers = []
    try:
        plan = net.plan
        ports = {1: 7001, 2: 7002, 3: 7003}
        for i in plan.node_ids:
            p = subprocess.Popen([*net.exec_prefix(i), sys.executable, "-c", SERVER,
                                  plan.node_ip(i), str(ports[i])], stdout=subprocess.PIPE)
            servers.append(p)
            assert p.stdout is not None and p.stdout.readline() == b"up\n"

        def reach(src: int, dst: int) -> str:
            out = subprocess.run([*net.exec_prefix(src), sys.executable, "-c", PROBE,
                                  plan.node_ip(dst), str(ports[dst])],
                                 capture_output=True, text=True, timeout=30)
            return out.stdout.strip()

        def from_root(dst: int) -> str:
            with socket.create_connection((plan.node_ip(dst), ports[dst]), timeout=2) as c:
                return c.recv(2).decode()

        pairs = [(a, b) for a in plan.node_ids for b in plan.node_ids if a != b]
        assert {p: reach(*p) for p in pairs} == {p: "ok" for p in pairs}
        part = KernelPartitioner(plan, ports)
        part.cut({(1, 2)})  # node 1 cannot send to node 2; everything else flows
        got = {p: reach(*p) for p in pairs}
        assert got[(1, 2)] == "TimeoutError", got  # dropped on arrival, not refused
        assert {p: v for p, v in got.items() if p != (1, 2)} == {
            p: "ok" for p in pairs if p != (1, 2)}
        assert [from_root(i) for i in plan.node_ids] == ["ok"] * 3
        assert [len(r) for r in part.rules().values()] == [0, 1, 0]
        part.cut({(3, 1), (2, 1)})  # on top: node 1 hears nobody
        got = {p: reach(*p) for p in pairs}
        assert {p for p, v in got.items() if v != "ok"} == {(1, 2), (2, 1), (3, 1)}, got
        part.heal()
        assert part.rules() == {1: [], 2: [], 3: []}
        assert {p: reach(*p) for p in pairs} == {p: "ok" for p in pairs}
        part.cut({(2, 3)})  # a second round after the heal
        assert reach(2, 3) == "TimeoutError" and reach(3, 2) == "ok"
        part.heal()
        assert reach(2, 3) == "ok"
    finally:
        for p in servers:
            p.kill()
            p.wait()
        assert net.close() == []


@needs_netns
@pytest.mark.chaos
@pytest.mark.cluster
@pytest.mark.timeout(400)
def test_netns_chaos_60s_kernel_partitions_pass_every_check(tmp_path):
    out = tmp_path / "run"
    report = run_chaos(ChaosConfig(out=out, nodes=3, duration=60, seed=4242, clients=4,
                                   keys=6, netns=True, netns_subnet="10.213.222.0/24"))
    assert report.passed, report.format()
    assert {f["kind"] for f in report.faults} == set(DEFAULT_FAULTS), report.format()
    partitions = [f for f in report.faults if f["kind"] == "partition"]
    assert partitions and all(f["mechanism"] == MECHANISM for f in partitions), report.format()
    assert all(f["mechanism"].startswith("signal") for f in report.faults
               if f["kind"] != "partition")
    assert "mechanism" in (out / "report.txt").read_text()
    for name in ("converged", "linearizable", "same-sequence", "commit-monotonic",
                 "one-leader-per-term", "acked-writes", "no-crashes"):
        check = report.check(name)
        assert check is not None and check.passed, report.format()
    pids = json.loads((out / "pids.json").read_text())
    assert all(p is None for p in pids["nodes"].values())
    assert f"jf-{pids['netns']['tag']}-" not in _ip_state()
    print(report.format())


@needs_netns
@pytest.mark.timeout(60)
def test_chaos_cli_netns_without_root_fails_cleanly():
    """Run as user nobody: the run fails with the launcher's root-only error."""
    import tempfile
    with tempfile.TemporaryDirectory(dir="/tmp") as d:
        os.chmod(d, 0o777)
        res = subprocess.run(
            ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", *JOSEFINE,
             "chaos", "--netns", "--duration", "1", "--out", f"{d}/run"],
            capture_output=True, text=True, timeout=50, env=ENV, cwd=d)
        assert res.returncode == 1, res
        assert "needs root" in res.stdout, res.stdout + res.stderr
        assert Path(d, "run", "report.txt").exists()



@needs_netns
@pytest.mark.cluster
@pytest.mark.timeout(120)
def test_kernel_isolated_leader_is_replaced_and_rejoins(tmp_path):
    """Raft sees the kernel's partition: cutting the leader off both ways makes the other
    two elect a new leader that serves clients; after the heal all three agree again."""
    from josefine.client import Client
    from josefine.launch.cluster import Launcher
    from tests.cluster.helpers import free_port_block, leader_of, statuses, wait_for
    launcher = Launcher(3, tmp_path / "c", free_port_block(3), out=None, netns=True,
                        netns_subnet="10.213.223.0/24")
    launcher.start()
    try:
        plan = launcher.netns_plan
        assert plan is not None
        addrs = {i: launcher.address(i) for i in launcher.node_ids}
        creds = launcher.credentials()
        old = wait_for(lambda: leader_of(addrs, launcher.cluster_id, creds), 30, "a leader")
        old_term = statuses(addrs, launcher.cluster_id, credentials=creds)[old]["term"]
        part = KernelPartitioner(plan, {i: launcher.node_config(i).port for i in addrs})
        others = [i for i in addrs if i != old]
        part.cut({(old, j) for j in others} | {(j, old) for j in others})
        rest = {i: addrs[i] for i in others}
        new = wait_for(lambda: leader_of(rest, launcher.cluster_id, creds), 30,
                       "a leader among the two cut off from the old one")
        st = statuses(addrs, launcher.cluster_id, credentials=creds)
        assert st[new]["term"] > old_term
        with Client(rest, launcher.cluster_id, timeout=30, credentials=creds) as c:
            c.put("during", "cut")
            assert c.get("during") == "cut"
        part.heal()

        def agreed():
            s = statuses(addrs, launcher.cluster_id, credentials=creds)
            applied = {tuple(x.get("applied") or ()) for x in s.values()}
            roles = sorted(x.get("role") for x in s.values())
            return roles == ["follower", "follower", "leader"] and len(applied) == 1
        wait_for(agreed, 30, "all three to agree after the heal")
        with Client(addrs, launcher.cluster_id, timeout=30, credentials=creds) as c:
            assert c.get("during") == "cut"
    finally:
        launcher.stop()
    assert plan.prefix not in _ip_state()
