"""Real node processes on loopback, started through the launcher."""
from __future__ import annotations

import signal

import pytest
import zmq

from josefine.client import Client
from josefine.launch.cluster import Launcher
from josefine.transport.codec import encode_frame
from josefine.security import apply_client_curve
from tests.cluster.helpers import free_port_block, leader_of, statuses, wait_for

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(240)]


@pytest.fixture
def cluster(tmp_path):
    launchers: list[Launcher] = []

    def make(n: int = 3, data_dir=None, **kw) -> Launcher:
        l = Launcher(n, data_dir or tmp_path / "cluster", free_port_block(n), out=None, **kw)
        l.start()
        launchers.append(l)
        return l

    yield make
    for l in launchers:
        l.stop()
    for l in launchers:
        for pid in l.pids().values():
            assert pid is None, "launcher left a node process behind"


def _addresses(l: Launcher) -> dict[int, str]:
    return {i: l.address(i) for i in l.node_ids}


def _converged(l: Launcher, min_applied: int = 0):
    st = statuses(_addresses(l), l.cluster_id, credentials=l.credentials())
    if any(s.get("role") == "unreachable" for s in st.values()):
        return None
    applied = {tuple(s["applied"]) for s in st.values()}
    digests = {s["sm_digest"] for s in st.values()}
    if len(applied) == 1 and len(digests) == 1 and next(iter(applied))[1] >= min_applied:
        return st
    return None


def test_three_nodes_elect_a_leader_and_apply_1000_writes_identically(cluster):
    l = cluster(3)
    addrs = _addresses(l)
    wait_for(lambda: leader_of(addrs, l.cluster_id, l.credentials()), 30, "a leader")
    with Client(addrs, l.cluster_id, timeout=20, credentials=l.credentials()) as c:
        for i in range(1000):
            c.put(f"k{i % 50}", f"v{i}")
        assert c.get("k49") == "v999"
        assert c.cas("k49", "v999", "new") is True
        assert c.cas("k49", "v999", "again") is False
        assert c.delete("k48") is True
        assert c.get("k48") is None
        c.put("k48", "back")
    st = wait_for(lambda: _converged(l, 1000), 60, "all nodes applied the same sequence")
    heights = {s["applied"][1] for s in st.values()}
    assert min(heights) >= 1000  # 1000 writes + no-op(s), one block each at least per write


def test_killing_the_leader_loses_no_acknowledged_write(cluster):
    l = cluster(3)
    addrs = _addresses(l)
    acked: dict[str, str] = {}
    with Client(addrs, l.cluster_id, timeout=30, credentials=l.credentials()) as c:
        wait_for(lambda: leader_of(addrs, l.cluster_id, l.credentials()), 30, "a leader")
        for i in range(100):
            c.put(f"a{i}", f"x{i}")
            acked[f"a{i}"] = f"x{i}"
        old = leader_of(addrs, l.cluster_id, l.credentials())
        old_term = statuses(addrs, l.cluster_id, credentials=l.credentials())[old]["term"]
        old_pid = l.pid(old)
        l.kill(old, signal.SIGKILL)
        new = wait_for(lambda: (lambda x: x if x and x != old else None)(
            leader_of({i: a for i, a in addrs.items() if i != old}, l.cluster_id, l.credentials())),
            30, "a new leader")
        assert statuses(addrs, l.cluster_id, credentials=l.credentials())[new]["term"] > old_term
        for i in range(100, 200):
            c.put(f"a{i}", f"x{i}")
            acked[f"a{i}"] = f"x{i}"
        wait_for(lambda: l.pid(old) not in (None, old_pid), 30, "the killed node restarted")
        for k, v in acked.items():
            assert c.get(k) == v, k
    wait_for(lambda: _converged(l, 200), 60, "the restarted node caught up")


def test_killed_follower_restarts_and_catches_up(cluster):
    l = cluster(3)
    addrs = _addresses(l)
    with Client(addrs, l.cluster_id, timeout=30, credentials=l.credentials()) as c:
        leader = wait_for(lambda: leader_of(addrs, l.cluster_id, l.credentials()), 30, "a leader")
        follower = next(i for i in addrs if i != leader)
        c.put("before", "1")
        l.stop_node(follower)   # stays down until start_node
        l.kill(follower, signal.SIGKILL)
        for i in range(300):
            c.put(f"f{i}", str(i))
        l.start_node(follower)
        st = wait_for(lambda: _converged(l, 300), 60, "the follower caught up")
        assert st[follower]["applied"] == st[leader]["applied"]
        assert c.get("f299") == "299"


def test_whole_cluster_relaunched_on_same_data_dir_keeps_all_data(cluster, tmp_path):
    d = tmp_path / "same"
    l = cluster(3, data_dir=d)
    addrs = _addresses(l)
    wait_for(lambda: leader_of(addrs, l.cluster_id, l.credentials()), 30, "a leader")
    with Client(addrs, l.cluster_id, timeout=30, credentials=l.credentials()) as c:
        for i in range(200):
            c.put(f"p{i}", f"v{i}")
    cid = l.cluster_id
    l.stop()
    l2 = cluster(3, data_dir=d)
    assert l2.cluster_id == cid
    addrs2 = _addresses(l2)
    wait_for(lambda: leader_of(addrs2, cid, l2.credentials()), 30, "a leader after relaunch")
    with Client(addrs2, cid, timeout=30, credentials=l2.credentials()) as c:
        for i in range(200):
            assert c.get(f"p{i}") == f"v{i}"
        c.put("after", "relaunch")
        assert c.get("after") == "relaunch"


def test_rogue_peer_garbage_is_dropped_and_counted(cluster):
    l = cluster(3)
    addrs = _addresses(l)
    leader = wait_for(lambda: leader_of(addrs, l.cluster_id, l.credentials()), 30, "a leader")
    target = addrs[leader]
    before = statuses(addrs, l.cluster_id, credentials=l.credentials())[leader]["dropped_frames"]
    ctx = zmq.Context()
    creds = l.credentials()   # authenticated with the client key, but sending garbage
    s = ctx.socket(zmq.DEALER)
    s.setsockopt(zmq.LINGER, 0)
    apply_client_curve(s, creds.pair, creds.server_key(target))
    s.connect(target)
    try:
        s.send(b"\x00garbage\xff" * 10)
        s.send(encode_frame("not-this-cluster", 2, []))
        s.send(encode_frame(l.cluster_id, 99, []))          # unknown sender
        s.send(b"\x93" + b"\x01" * 100)                       # malformed msgpack
        for _ in range(20):
            s.send(bytes(range(256)) * 4)
        with Client(addrs, l.cluster_id, timeout=20, credentials=l.credentials()) as c:
            for i in range(50):
                c.put(f"r{i}", "ok")
            assert c.get("r49") == "ok"
        after = wait_for(lambda: (lambda v: v if v >= before + 24 else None)(
            statuses(addrs, l.cluster_id, credentials=l.credentials())[leader]["dropped_frames"]), 20, "drop counter")
        assert after >= before + 24
        assert leader_of(addrs, l.cluster_id, l.credentials()) is not None
    finally:
        s.close()
        ctx.term()
    # an oversized frame makes libzmq drop the connection; the node keeps serving
    big = ctx2 = zmq.Context()
    s2 = ctx2.socket(zmq.DEALER)
    s2.setsockopt(zmq.LINGER, 0)
    apply_client_curve(s2, creds.pair, creds.server_key(target))
    s2.connect(target)
    try:
        s2.send(b"x" * (17 * 1024 * 1024))
        with Client(addrs, l.cluster_id, timeout=20, credentials=l.credentials()) as c:
            c.put("after-big", "ok")
            assert c.get("after-big") == "ok"
    finally:
        s2.close()
        big.term()
