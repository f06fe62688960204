"""Security on real node processes (issue 13): key files, the forged-leader attack with
Curve on and with ``insecure = true``, and key rotation/removal on a running cluster."""
from __future__ import annotations

import os
import stat
import subprocess
import sys
import time

import pytest
import zmq

from josefine.chain.block import (
    BlockKind,
    Command,
    encode_commands,
    genesis,
    make_block,
)
from josefine.client import Client, query_status
from josefine.config import load_cluster_config, load_node_config
from josefine.errors import JosefineError
from josefine.fsm.kv import kv_put
from josefine.launch.cluster import Launcher, LaunchError
from josefine.messages import AppendBlocks
from josefine.security import KeyPair, apply_client_curve, load_keypair
from josefine.transport.codec import encode_frame
from tests.cluster.helpers import free_port_block, leader_of, statuses, wait_for

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(300)]


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
    for l in made:
        assert all(p is None for p in l.pids().values()), "a node process was left behind"


def _cli(*args: str, cluster: os.PathLike) -> subprocess.CompletedProcess:
    env = {**os.environ, "JOSEFINE_CLUSTER": str(cluster)}
    return subprocess.run([sys.executable, "-m", "josefine.launch.cli", *args],
                          capture_output=True, text=True, timeout=60, env=env)


# ------------------------------------------------------------------------ key files


def test_launch_makes_private_key_files_and_reuses_them(tmp_path):
    l = Launcher(3, tmp_path / "c", free_port_block(3), out=None)
    l.write_configs()
    cc = load_cluster_config(l.cluster_path)
    files = [tmp_path / "c" / "client.key_secret", tmp_path / "c" / "admin.key_secret"]
    for i in (1, 2, 3):
        nc = load_node_config(l.config_path(i))
        assert nc.insecure is False and nc.cluster_file == str(l.cluster_path)
        files.append(tmp_path / "c" / f"node-{i}" / "node.key_secret")
        assert nc.secret_key_file == str(files[-1])
        assert cc.nodes[i].public_key == load_keypair(files[-1]).public.decode()
    for f in files:
        assert stat.S_IMODE(f.stat().st_mode) == 0o600, f
    assert cc.client_keys == (load_keypair(files[0]).public.decode(),)
    assert cc.admin_keys == (load_keypair(files[1]).public.decode(),)
    assert cc.client_key_file == str(files[0]) and cc.admin_key_file == str(files[1])
    # Relaunching on the same directory keeps every key.
    again = Launcher(3, tmp_path / "c", free_port_block(3), out=None)
    again.write_configs()
    cc2 = load_cluster_config(again.cluster_path)
    assert {i: n.public_key for i, n in cc2.nodes.items()} == {
        i: n.public_key for i, n in cc.nodes.items()}
    assert (cc2.client_keys, cc2.admin_keys) == (cc.client_keys, cc.admin_keys)
    # ... and refuses to flip the cluster to plaintext.
    with pytest.raises(LaunchError, match="secure cluster.*--insecure"):
        Launcher(3, tmp_path / "c", free_port_block(3), out=None, insecure=True)


def test_insecure_launch_writes_no_keys(tmp_path):
    l = Launcher(3, tmp_path / "c", free_port_block(3), out=None, insecure=True)
    l.write_configs()
    assert load_cluster_config(l.cluster_path).insecure is True
    assert not list((tmp_path / "c").rglob("*.key_secret"))
    assert l.credentials() is None


# ------------------------------------------------------------------ forged leader


def forged_frames(cluster_id: str, claim: int, dsts: list[int], blocks: int = 400,
                  term: int = 10**6) -> list[tuple[int, bytes]]:
    """The attack of issue 13: a fresh branch from genesis at a huge term, `blocks` blocks
    (valid digests), the last writing k0 = "FORGED", sent as if from member `claim`, with a
    commit at its tip; 12 frames to each destination."""
    parent = genesis(cluster_id)
    chain = []
    for h in range(blocks):
        key = "k0" if h == blocks - 1 else f"forged{h}"
        payload = encode_commands([Command("forger", h + 1, kv_put(key, "FORGED"))])
        parent = make_block(parent, term, BlockKind.NORMAL, payload)
        chain.append(parent)
    step = -(-blocks // 12)
    out = []
    for dst in dsts:
        prev = genesis(cluster_id).id
        for seq, k in enumerate(range(0, blocks, step), start=1):
            part = tuple(chain[k:k + step])
            msg = AppendBlocks(src=claim, dst=dst, term=term, prev=prev, blocks=part,
                               commit=part[-1].id, seq=seq)
            out.append((dst, encode_frame(cluster_id, claim, [msg])))
            prev = part[-1].id
    return out


def _fill(l: Launcher, creds) -> dict[int, dict]:
    addrs = {i: l.address(i) for i in l.node_ids}
    wait_for(lambda: leader_of(addrs, l.cluster_id, creds), 30, "a leader")
    with Client(addrs, l.cluster_id, timeout=30, credentials=creds) as c:
        for i in range(200):
            c.put(f"k{i}", f"v{i}")
    return statuses(addrs, l.cluster_id, credentials=creds)


def _attack(l: Launcher, key: KeyPair | None, creds) -> None:
    ctx = zmq.Context()
    try:
        socks = {}
        for i in l.node_ids:
            s = ctx.socket(zmq.DEALER)
            s.setsockopt(zmq.LINGER, 0)
            if key is not None:
                apply_client_curve(s, key, creds.server_key(l.address(i)))
            s.connect(l.address(i))
            socks[i] = s
        frames = forged_frames(l.cluster_id, claim=1, dsts=[2, 3])
        assert len(frames) == 24
        for dst, frame in frames:
            try:
                socks[dst].send(frame, zmq.NOBLOCK)
            except zmq.Again:   # plaintext: the handshake never completes
                pass
        time.sleep(0.5)   # NB: gives the frames time to arrive before the sockets close
    finally:
        ctx.destroy(linger=2000)


def _unchanged_and_serving(l: Launcher, before: dict[int, dict], creds) -> dict[int, dict]:
    addrs = {i: l.address(i) for i in l.node_ids}
    with Client(addrs, l.cluster_id, timeout=60, credentials=creds) as c:
        for i in range(200):
            assert c.get(f"k{i}") == f"v{i}"
        c.put("after", "attack")
        assert c.get("after") == "attack"
        assert c.get("forged0") is None
    st = statuses(addrs, l.cluster_id, credentials=creds)
    for i, s in st.items():
        # never a forged block (they all carry term 10**6 exactly); a re-election above the
        # forged term (insecure case) legitimately commits blocks of a later term
        assert s["commit"][1] >= before[i]["commit"][1] and s["commit"][0] != 10**6, (i, s)
    return st


def test_forged_leader_is_refused_by_curve_before_the_core(launch):
    l = launch()
    creds = l.credentials()
    before = _fill(l, creds)
    _attack(l, None, creds)                  # plaintext: no handshake at all
    wait_for(lambda: all(s["transport"]["handshakes_failed"] >= 1 for i, s in statuses(
        {i: l.address(i) for i in (2, 3)}, l.cluster_id, credentials=creds).items()),
        30, "refused handshakes")
    _attack(l, creds.pair, creds)            # an authenticated client posing as node 1
    addrs = {i: l.address(i) for i in l.node_ids}
    wait_for(lambda: all(statuses(addrs, l.cluster_id, credentials=creds)[i]["transport"]
                         ["dropped_by_reason"]["unauthorized"] >= 12 for i in (2, 3)),
             30, "unauthorized drops")
    st = _unchanged_and_serving(l, before, creds)
    assert all(s["term"] < 10**6 for s in st.values())   # never reached the core


def test_forged_leader_is_refused_by_the_tripwire_when_insecure(launch):
    l = launch(insecure=True)
    before = _fill(l, None)
    _attack(l, None, None)
    addrs = {i: l.address(i) for i in l.node_ids}
    wait_for(lambda: all(statuses(addrs, l.cluster_id)[i].get("tripwire", {}).get(
        "refused_appends", 0) >= 1 for i in (2, 3)), 30, "tripwire refusals")
    _unchanged_and_serving(l, before, None)


# ------------------------------------------------------------- rotation and removal


def test_rotate_a_node_key_and_remove_a_client_key_without_stopping_the_cluster(launch, tmp_path):
    l = launch()
    path = l.cluster_path
    old3 = load_keypair(l.node_config(3).secret_key_file)
    before = _fill(l, l.credentials())

    r = _cli("keys", "rotate", "3", cluster=path)
    assert r.returncode == 0, r.stderr
    cc = load_cluster_config(path)
    new3 = load_keypair(l.node_config(3).secret_key_file)
    assert new3 != old3 and cc.nodes[3].public_key == new3.public.decode()
    assert cc.nodes[3].previous_keys == (old3.public.decode(),)
    r = _cli("keys", "reload", cluster=path)
    assert r.returncode == 0 and r.stdout.count("reloaded") == 3, (r.stdout, r.stderr)
    l.stop_node(3)
    l.start_node(3)
    # Node 3 runs with its new key, catches up, and the cluster serves throughout.
    with Client.from_cluster_file(str(path), timeout=60) as c:
        c.put("rotated", "yes")
        assert c.get("k7") == "v7"
    creds = Client.from_cluster_file(str(path)).credentials
    wait_for(lambda: (lambda s: s if s["applied"][1] >= before[1]["applied"][1] + 1 else None)(
        query_status(l.address(3), l.cluster_id, 1.0, credentials=creds)), 60, "node 3 caught up")

    # Forget the old key: a connection holding it is refused from now on.
    assert _cli("keys", "forget", "3", cluster=path).returncode == 0
    assert load_cluster_config(path).nodes[3].previous_keys == ()
    assert _cli("keys", "reload", cluster=path).returncode == 0
    st1 = query_status(l.address(1), l.cluster_id, 1.0, credentials=creds)["transport"]
    ctx = zmq.Context()
    try:
        s = ctx.socket(zmq.DEALER)
        s.setsockopt(zmq.LINGER, 0)
        apply_client_curve(s, old3, creds.server_key(l.address(1)))
        s.connect(l.address(1))
        s.send(b"anything")
        wait_for(lambda: query_status(l.address(1), l.cluster_id, 1.0, credentials=creds)
                 ["transport"]["handshakes_refused"] > st1["handshakes_refused"], 30,
                 "old key refused")
    finally:
        ctx.destroy(linger=0)

    # Remove the client key: that client is cut off, the admin key still works.
    cc = load_cluster_config(path)
    import dataclasses
    path.write_text(dataclasses.replace(cc, client_keys=()).to_toml())
    assert _cli("keys", "reload", cluster=path).returncode == 0
    with Client.from_cluster_file(str(path), timeout=3, request_timeout=0.5) as c:
        with pytest.raises(JosefineError):
            c.put("cut", "off")
    with Client.from_cluster_file(str(path), admin=True, timeout=30) as c:
        assert c.get("rotated") == "yes"


def test_keys_reload_needs_the_admin_key(launch):
    l = launch()
    _fill(l, l.credentials())
    client_key = load_cluster_config(l.cluster_path).client_key_file
    r = _cli("keys", "reload", "--key-file", client_key, cluster=l.cluster_path)
    assert r.returncode == 1 and "admin key required" in r.stderr, (r.stdout, r.stderr)


def test_a_node_whose_key_file_is_world_readable_does_not_start(tmp_path):
    from josefine.launch.node import EXIT_CONFIG
    l = Launcher(3, tmp_path / "c", free_port_block(3), out=None)
    l.write_configs()
    key = tmp_path / "c" / "node-1" / "node.key_secret"
    key.chmod(0o644)
    r = subprocess.run([sys.executable, "-m", "josefine.launch.cli", "node", "--config",
                        str(l.config_path(1))], capture_output=True, text=True, timeout=60)
    assert r.returncode == EXIT_CONFIG
    assert "accessible by group or others" in r.stderr and "chmod 600" in r.stderr


def test_a_cluster_dir_from_before_keys_is_upgraded_on_relaunch(tmp_path):
    from josefine.config import ClusterConfig, ClusterNode
    d = tmp_path / "old"
    d.mkdir()
    legacy = ClusterConfig("0ld1d", {i: ClusterNode(f"tcp://127.0.0.1:{7000 + i}")
                                     for i in (1, 2, 3)}, insecure=True).to_toml()
    (d / "cluster.toml").write_text(legacy.replace("insecure = true\n", ""))
    l = Launcher(3, d, free_port_block(3), out=None)
    assert l.cluster_id == "0ld1d"
    l.write_configs()
    cc = load_cluster_config(d / "cluster.toml")
    assert not cc.insecure and all(n.public_key for n in cc.nodes.values())
