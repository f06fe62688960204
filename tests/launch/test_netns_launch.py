"""`josefine launch --netns`: the address plan and commands (no root needed), the
privilege error, and, as root, real namespaces: a cluster served across the bridge, and
nothing left behind after a clean stop or after SIGKILL of whoever made them."""
from __future__ import annotations

import json
import os
import queue
import shutil
import signal
import subprocess
import sys
import textwrap
import threading
import time
from array import array
from pathlib import Path

import pytest

from josefine.client import Client
from josefine.launch import netns
from josefine.launch.cluster import LaunchError, Launcher
from josefine.launch.netns import NetnsError, NetnsPlan
from josefine.launch.procutil import pid_alive
from tests.cluster.helpers import free_port_block, leader_of, wait_for

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.timeout(30)  # per test; the ones starting clusters say more

ENV = {**os.environ, "PYTHONPATH": os.pathsep.join(
    p for p in [str(REPO), os.environ.get("PYTHONPATH", "")] if p)}
JOSEFINE = [sys.executable, "-m", "josefine.launch.cli"]


def _netns_usable() -> str | None:
    """Why the root tests cannot run here, or None."""
    if os.geteuid() != 0:
        return "needs root (creates network namespaces)"
    if shutil.which("ip") is None:
        return "needs iproute2's `ip`"
    probe = NetnsPlan(1)
    res = subprocess.run(["ip", "netns", "add", probe.namespace(1)], capture_output=True, text=True)
    if res.returncode != 0:
        return f"`ip netns add` does not work here: {res.stderr.strip()}"
    subprocess.run(["ip", "netns", "del", probe.namespace(1)], capture_output=True)
    return None


_WHY_NOT = _netns_usable()
needs_netns = pytest.mark.skipif(_WHY_NOT is not None, reason=_WHY_NOT or "")


def _ip_state() -> str:
    return (subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
            + subprocess.run(["ip", "-o", "link", "show"], capture_output=True, text=True).stdout)


def _wait_nothing_left(prefix: str, pids: list[int], timeout: float) -> None:
    """Poll `ip netns list`, `ip link` and the pids until none of them shows."""
    deadline = time.monotonic() + timeout
    while True:
        state = _ip_state()
        alive = [p for p in pids if pid_alive(p)]
        if prefix not in state and not alive:
            return
        if time.monotonic() >= deadline:
            left = [line for line in state.splitlines() if prefix in line]
            pytest.fail(f"after {timeout} s still there: {left}, live pids {alive}")
        time.sleep(0.05)


# -- the pure parts -------------------------------------------------------------


def test_plan_names_and_addresses():
    plan = NetnsPlan(3, tag="0a1b2c")
    assert plan.bridge == "jf-0a1b2c-br"
    assert plan.bridge_ip == "10.213.47.1"
    assert plan.namespaces == ["jf-0a1b2c-n1", "jf-0a1b2c-n2", "jf-0a1b2c-n3"]
    assert plan.links == ["jf-0a1b2c-br", "jf-0a1b2c-v1", "jf-0a1b2c-v2", "jf-0a1b2c-v3"]
    assert [plan.node_ip(i) for i in (1, 2, 3)] == ["10.213.47.11", "10.213.47.12", "10.213.47.13"]
    assert plan.node_address(2, 7002) == "tcp://10.213.47.12:7002"
    other = NetnsPlan(2, subnet="192.168.77.0/24", tag="ffffff")
    assert other.bridge_ip == "192.168.77.1" and other.node_ip(2) == "192.168.77.12"


def test_each_plan_draws_its_own_tag():
    tags = {NetnsPlan(3).tag for _ in range(50)}
    assert len(tags) == 50
    assert all(len(t) == 6 and int(t, 16) >= 0 for t in tags)


@pytest.mark.parametrize("kwargs, why", [
    ({"nodes": 3, "tag": "XYZ123"}, "six lowercase hex"),
    ({"nodes": 3, "tag": "0a1b2c3"}, "six lowercase hex"),
    ({"nodes": 0}, ">= 1"),
    ({"nodes": 3, "subnet": "fd00::/64"}, "IPv4"),
    ({"nodes": 3, "subnet": "10.213.47.1/24"}, "not an IPv4 network"),
    ({"nodes": 5, "subnet": "10.9.9.0/28"}, "no room for 5"),  # .15 is the broadcast address
    ({"nodes": 10000, "subnet": "10.0.0.0/8"}, "longer than 15"),
])
def test_plan_rejects(kwargs, why):
    with pytest.raises(NetnsError, match=why):
        NetnsPlan(**kwargs)


def test_plan_limits_fit():
    assert NetnsPlan(4, subnet="10.9.9.0/28").node_ip(4) == "10.9.9.14"
    assert NetnsPlan(243).node_ip(243) == "10.213.47.253"
    with pytest.raises(NetnsError, match="no node 4"):
        NetnsPlan(3).namespace(4)


def test_commands_touch_only_the_plans_names():
    plan = NetnsPlan(2, tag="00beef")
    assert plan.exec_prefix(2) == ["ip", "netns", "exec", "jf-00beef-n2"]
    cmds = plan.setup_commands("/sbin/ip")
    assert all(c[0] == "/sbin/ip" for c in cmds)
    mine = set(plan.namespaces) | set(plan.links)
    for cmd in cmds:
        # every interface or namespace a command names is this launch's, or inside one
        named = [w for w in cmd if w.startswith("jf-")]
        assert named and set(named) <= mine, cmd
        if "-n" not in cmd and "eth0" in cmd:
            assert cmd[cmd.index("eth0") + 1:cmd.index("eth0") + 2] == ["netns"], cmd
    flat = [" ".join(c[1:]) for c in cmds]
    for i in (1, 2):
        ns = plan.namespace(i)
        assert f"-n {ns} link set lo up" in flat
        assert f"-n {ns} addr add 10.213.47.1{i}/24 dev eth0" in flat
        assert f"link set jf-00beef-v{i} master jf-00beef-br up" in flat
        # the namespace exists before its veth is made, and gets its address before eth0 is up
        assert flat.index(f"netns add {ns}") < flat.index(
            f"link add jf-00beef-v{i} type veth peer name eth0 netns {ns}")
    assert flat[:3] == ["link add jf-00beef-br type bridge",
                        "addr add 10.213.47.1/24 dev jf-00beef-br", "link set jf-00beef-br up"]


def test_missing_capabilities():
    full = (1 << netns.CAP_NET_ADMIN) | (1 << netns.CAP_SYS_ADMIN)
    assert netns.missing_capabilities(full) == []
    assert netns.missing_capabilities(0) == ["CAP_NET_ADMIN", "CAP_SYS_ADMIN"]
    assert netns.missing_capabilities(1 << netns.CAP_NET_ADMIN) == ["CAP_SYS_ADMIN"]


def test_privilege_error_names_what_is_missing(tmp_path):
    status = tmp_path / "status"
    status.write_text("Name:\tx\nCapInh:\t0\nCapEff:\t0000000000001000\n")  # NET_ADMIN only
    with pytest.raises(NetnsError, match=r"needs root.*CAP_SYS_ADMIN"):
        netns.check_privileges(str(status))


def test_launcher_plans_netns_addresses(tmp_path):
    launcher = Launcher(3, tmp_path / "c", 7101, out=None, netns=True, netns_subnet="10.77.1.0/24",
                        metrics_base_port=9101)
    assert [launcher.address(i) for i in (1, 2, 3)] == [
        "tcp://10.77.1.11:7101", "tcp://10.77.1.12:7102", "tcp://10.77.1.13:7103"]
    assert launcher.node_config(2).peers == {1: "tcp://10.77.1.11:7101", 3: "tcp://10.77.1.13:7103"}
    assert launcher.node_config(3).metrics_address == "10.77.1.13:9103"
    with pytest.raises(LaunchError, match="only for netns=True"):
        Launcher(3, tmp_path / "d", 7101, out=None, netns_subnet="10.77.1.0/24")
    with pytest.raises(LaunchError, match="no room"):
        Launcher(9, tmp_path / "d", 7101, out=None, netns=True, netns_subnet="10.77.1.0/28")


def test_launcher_without_privileges_makes_nothing(tmp_path, monkeypatch):
    def denied(*a, **k):
        raise NetnsError("--netns needs root: no CAP_NET_ADMIN")

    monkeypatch.setattr(netns, "check_privileges", denied)
    launcher = Launcher(3, tmp_path / "c", 7101, out=None, netns=True)
    with pytest.raises(LaunchError, match="needs root"):
        launcher.start()
    assert not (tmp_path / "c").exists()
    assert launcher.stopped


@pytest.mark.timeout(60)
@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("setpriv") is None,
                    reason="needs root and setpriv to run the CLI as user nobody")
def test_cli_as_nobody_says_it_needs_root():
    import tempfile
    with tempfile.TemporaryDirectory(dir="/tmp") as d:  # pytest's tmp_path is root-only
        os.chmod(d, 0o777)
        res = subprocess.run(
            ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", *JOSEFINE,
             "launch", "--netns", "--data-dir", f"{d}/c"],
            capture_output=True, text=True, timeout=50, env=ENV, cwd=d)
        assert res.returncode == 1
        assert "needs root" in res.stderr and "CAP_NET_ADMIN" in res.stderr, res.stderr
        assert "Traceback" not in res.stderr
        assert not Path(d, "c").exists()


# -- as root: real namespaces ---------------------------------------------------


@needs_netns
@pytest.mark.timeout(60)
def test_network_reachable_and_subnet_clash_refused(tmp_path):
    plan = NetnsPlan(2, subnet="10.213.201.0/24")
    net = netns.Network(plan, env=ENV, log_path=tmp_path / "netns.log")
    net.create()
    try:
        assert netns.leftovers(net.plan) == sorted([*plan.namespaces, *plan.links])
        reaper = net.reaper_pid
        assert reaper is not None and pid_alive(reaper)
        # loopback is up inside, and the root namespace reaches node 2 through the bridge
        out = subprocess.run([*net.exec_prefix(2), "ip", "-br", "addr"],
                             capture_output=True, text=True, check=True).stdout
        assert "10.213.201.12/24" in out and any(
            line.startswith("lo ") and "127.0.0.1" in line for line in out.splitlines())
        server = subprocess.Popen(
            [*net.exec_prefix(2), sys.executable, "-c", textwrap.dedent("""
                import socket
                s = socket.create_server(("10.213.201.12", 7777)); print("up", flush=True)
                c, _ = s.accept(); c.sendall(b"hello from n2")
                """)], stdout=subprocess.PIPE)
        try:
            assert server.stdout is not None and server.stdout.readline() == b"up\n"
            import socket
            with socket.create_connection(("10.213.201.12", 7777), timeout=5) as c:
                assert c.recv(100) == b"hello from n2"
        finally:
            server.kill()
            server.wait()
        clash = netns.Network(NetnsPlan(1, subnet="10.213.201.0/24"), env=ENV)
        with pytest.raises(NetnsError, match=rf"10.213.201.0/24 is already in use .*{plan.bridge}"):
            clash.create()
        assert clash.plan.prefix not in _ip_state()
    finally:
        assert net.close() == []
    assert plan.prefix not in _ip_state()
    assert not pid_alive(reaper)


OWNER = """
import json, subprocess, sys, os
from josefine.launch import netns
net = netns.Network(netns.NetnsPlan(2, subnet="10.213.202.0/24"), log_path=sys.argv[1])
net.create()
# No parent-death signal here: only the reaper can stop these.
sleepers = [subprocess.Popen([*net.exec_prefix(i), "sleep", "600"], start_new_session=True)
            for i in (1, 2)]
print(json.dumps({"prefix": net.plan.prefix, "reaper": net.reaper_pid,
                  "sleepers": [p.pid for p in sleepers]}), flush=True)
sys.stdin.read()
"""


@needs_netns
@pytest.mark.timeout(60)
def test_reaper_cleans_up_after_sigkill_of_its_owner(tmp_path):
    """Processes inside the namespaces that nothing else would stop, the namespaces and
    the links all go when their owner is SIGKILLed."""
    owner = subprocess.Popen([sys.executable, "-c", OWNER, str(tmp_path / "netns.log")],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=ENV, text=True)
    try:
        assert owner.stdout is not None
        info = json.loads(owner.stdout.readline())
        prefix, pids = info["prefix"], [info["reaper"], *info["sleepers"]]
        assert prefix in _ip_state() and all(pid_alive(p) for p in pids)
        owner.send_signal(signal.SIGKILL)
        owner.wait()
        _wait_nothing_left(prefix, pids, timeout=20)
    finally:
        owner.kill()
        owner.wait()
    assert "deleted" in (tmp_path / "netns.log").read_text()


def _bench_load(addrs, cluster_id, creds, seconds: float) -> int:
    """Writes the bench's load generator completes against the cluster in `seconds`."""
    from josefine.bench.load import josefine_worker
    q: queue.Queue = queue.Queue()
    t0 = time.monotonic()
    th = threading.Thread(target=josefine_worker,
                          args=(0, addrs, cluster_id, 4, 10, t0, t0 + seconds, q, creds))
    th.start()
    th.join(seconds + 40)
    done = array("d")
    done.frombytes(q.get(timeout=5)["done_t"])
    return len(done)


@needs_netns
@pytest.mark.timeout(180)
def test_netns_cluster_serves_the_root_namespace_and_survives_a_leader_kill(tmp_path):
    launcher = Launcher(3, tmp_path / "c", free_port_block(3), out=None, netns=True,
                        netns_subnet="10.213.203.0/24")
    launcher.start()
    try:
        plan = launcher.netns_plan
        assert plan is not None
        addrs = {i: launcher.address(i) for i in launcher.node_ids}
        assert addrs[1].startswith("tcp://10.213.203.11:")
        pids = json.loads(launcher.pids_path.read_text())
        assert pids["netns"]["namespaces"] == {"1": plan.namespace(1), "2": plan.namespace(2),
                                               "3": plan.namespace(3)}
        for i in launcher.node_ids:  # each node really runs inside its own namespace
            pid = launcher.pid(i)
            inside = subprocess.run(["ip", "netns", "pids", plan.namespace(i)],
                                    capture_output=True, text=True).stdout.split()
            assert str(pid) in inside
        creds = launcher.credentials()
        leader = wait_for(lambda: leader_of(addrs, launcher.cluster_id, creds), 30, "a leader")
        with Client(addrs, launcher.cluster_id, timeout=30, credentials=creds) as c:
            for k in range(50):
                c.put(f"d{k}", f"v{k}")
            assert c.get("d49") == "v49"
        # the CLI, from the root namespace, through cluster.toml
        st = subprocess.run([*JOSEFINE, "status", "--json", "--cluster", str(launcher.cluster_path)],
                            capture_output=True, text=True, timeout=30, env=ENV, check=True)
        roles = {n["id"]: n["role"] for n in json.loads(st.stdout)["nodes"]}
        assert sorted(roles.values()) == ["follower", "follower", "leader"], roles
        got = subprocess.run([*JOSEFINE, "get", "d7", "--cluster", str(launcher.cluster_path)],
                             capture_output=True, text=True, timeout=30, env=ENV, check=True)
        assert got.stdout.strip() == "v7"
        assert _bench_load(addrs, launcher.cluster_id, creds, 1.0) > 0

        old_pid = launcher.pid(leader)
        assert launcher.kill(leader)
        new = wait_for(lambda: (lambda x: x if x not in (None, leader) else None)(
            leader_of(addrs, launcher.cluster_id, creds)), 30, "a new leader")
        assert new != leader
        with Client(addrs, launcher.cluster_id, timeout=30, credentials=creds) as c:
            assert [c.get(f"d{k}") for k in range(50)] == [f"v{k}" for k in range(50)]
            c.put("after", "kill")
            assert c.get("after") == "kill"
        # the killed node is restarted inside the same namespace
        wait_for(lambda: launcher.pid(leader) not in (None, old_pid), 30, "the restart")
        inside = subprocess.run(["ip", "netns", "pids", plan.namespace(leader)],
                                capture_output=True, text=True).stdout.split()
        assert str(launcher.pid(leader)) in inside
        node_pids = [p for p in launcher.pids().values() if p]
        reaper = pids["netns"]["reaper"]
    finally:
        launcher.stop()
    assert plan.prefix not in _ip_state()
    assert not any(pid_alive(p) for p in [*node_pids, reaper])


@needs_netns
@pytest.mark.timeout(120)
def test_sigkill_of_the_launcher_leaves_nothing_behind(tmp_path):
    data = tmp_path / "c"
    proc = subprocess.Popen([*JOSEFINE, "launch", "--netns", "--netns-subnet", "10.213.204.0/24",
                             "--data-dir", str(data), "--base-port", str(free_port_block(3)),
                             "--quiet"], env=ENV, stdin=subprocess.DEVNULL)
    try:
        def ready():
            info = json.loads((data / "pids.json").read_text())
            return info if all(info["nodes"].values()) and "netns" in info else None

        info = wait_for(ready, 60, "all nodes spawned")
        get = [*JOSEFINE, "put", "x", "1", "--cluster", str(data / "cluster.toml"), "--timeout", "20"]
        subprocess.run(get, env=ENV, check=True, timeout=60, capture_output=True)
        prefix = f"jf-{info['netns']['tag']}-"
        pids = [*info["nodes"].values(), info["netns"]["reaper"]]
        assert prefix in _ip_state() and all(pid_alive(p) for p in pids)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        _wait_nothing_left(prefix, pids, timeout=20)
    finally:
        proc.kill()
        proc.wait()


@needs_netns
@pytest.mark.timeout(60)
def test_close_cleans_up_when_the_reaper_is_gone(tmp_path):
    """The launcher's own teardown covers a reaper that was killed before the stop."""
    net = netns.Network(NetnsPlan(2, subnet="10.213.205.0/24"), env=ENV)
    net.create()
    try:
        reaper = net.reaper_pid
        assert reaper is not None
        os.kill(reaper, signal.SIGKILL)
        wait_for(lambda: not pid_alive(reaper), 10, "the reaper to die")
        assert net.plan.prefix in _ip_state()
    finally:
        assert net.close() == []
    assert net.plan.prefix not in _ip_state()


@needs_netns
@pytest.mark.timeout(60)
def test_failed_start_leaves_nothing_behind(tmp_path, monkeypatch):
    """Node 1 is running in its namespace when node 2 cannot be spawned: start() fails,
    and node 1, the namespaces and the links are gone when it returns."""
    from josefine.launch import procutil
    real = procutil.spawn_node
    spawned: list[int] = []
    reaper: list[int] = []

    def spawn(cmd, *a, **k):
        reaper.append(json.loads((tmp_path / "c" / "pids.json").read_text())["netns"]["reaper"])
        if len(spawned) == 1:
            raise OSError(12, "Cannot allocate memory")
        proc = real(cmd, *a, **k)
        spawned.append(proc.pid)
        return proc

    monkeypatch.setattr(procutil, "spawn_node", spawn)
    launcher = Launcher(2, tmp_path / "c", free_port_block(2), out=None, netns=True,
                        netns_subnet="10.213.206.0/24")
    with pytest.raises(LaunchError, match="cannot start node 2"):
        launcher.start()
    assert len(spawned) == 1 and not pid_alive(spawned[0])
    plan = launcher.netns_plan
    assert plan is not None and plan.prefix not in _ip_state()
    assert reaper[0] is not None and not pid_alive(reaper[0])
