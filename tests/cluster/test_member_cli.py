"""The operator's membership verbs against a cluster run by a `Launcher` (the same object
`josefine launch` runs): `josefine member add/remove/promote` are separate processes that
reach the launcher through request files in its DIR, exactly as from a shell."""
from __future__ import annotations

import json
import socket
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from josefine.client import Client
from josefine.config import load_cluster_config
from josefine.launch.cluster import Launcher
from josefine.security import client_credentials
from tests.cluster.helpers import leader_of, running_cluster, wait_for

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(300)]


def _cli(cluster: Path, *args: str, timeout: float = 150) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "josefine.launch.cli", *args,
                           "--cluster", str(cluster)],
                          capture_output=True, text=True, timeout=timeout)


def _ok(cluster: Path, *args: str) -> str:
    r = _cli(cluster, *args)
    assert r.returncode == 0, (args, r.stdout, r.stderr)
    return r.stdout


def _fails(cluster: Path, match: str, *args: str) -> str:
    r = _cli(cluster, *args)
    assert r.returncode == 1, (args, r.stdout, r.stderr)
    line = r.stderr.strip()
    assert "\n" not in line and match in line, line
    return line


def _listed(cluster: Path) -> dict[int, str]:
    """{id: role} as `member list --json` shows it, once every member is caught up."""
    def caught_up():  # noqa: ANN202
        r = _cli(cluster, "member", "list", "--json")
        rows = json.loads(r.stdout)["members"] if r.returncode == 0 else []
        return rows if rows and all(m["lag"] is not None and m["lag"] <= 2
                                    for m in rows) else None
    return {m["id"]: m["role"] for m in wait_for(caught_up, 30, "members caught up")}


class _Writer:
    """Writes k0, k1, ... until stopped; remembers every acknowledged write."""

    def __init__(self, cluster: Path) -> None:
        self.cluster, self.acked = cluster, []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        i = 0
        while not self.stop.is_set():
            # A fresh client now and then: it learns the nodes added meanwhile.
            with Client.from_cluster_file(str(self.cluster), timeout=10) as c:
                for _ in range(50):
                    if self.stop.is_set():
                        return
                    try:
                        c.put(f"k{i}", str(i))
                        self.acked.append(i)
                    except Exception:  # noqa: BLE001 - unacknowledged: not checked
                        pass
                    i += 1

    def finish(self) -> list[int]:
        self.stop.set()
        self.thread.join(30)
        assert not self.thread.is_alive()
        return self.acked


def test_grow_1_to_3_to_5_and_shrink_to_3_under_writes_then_relaunch(tmp_path):
    data = tmp_path / "c"
    cluster = data / "cluster.toml"
    with running_cluster(data, nodes=1, fsync=False) as rc:
        base = rc.launcher.base_port
        writer = _Writer(cluster)
        wait_for(lambda: len(writer.acked) > 20, 30, "writes flowing")
        for i in (2, 3):   # 1 -> 3: a single voter's quorum is itself until node 2 joins
            out = _ok(cluster, "member", "add")
            assert f"node {i}" in out and "is a voter" in out, out
            assert _listed(cluster) == {j: "voter" for j in range(1, i + 1)}
            n_before = len(writer.acked)
            wait_for(lambda n=n_before: len(writer.acked) > n + 20, 30, f"writes on {i} nodes")
        out = _ok(cluster, "member", "add")
        assert "node 4" in out and "is a voter" in out
        assert _listed(cluster) == {1: "voter", 2: "voter", 3: "voter", 4: "voter"}
        out = _ok(cluster, "member", "add", "5")
        assert "node 5" in out and "is a voter" in out
        assert _listed(cluster) == {i: "voter" for i in range(1, 6)}
        cc = load_cluster_config(cluster)
        assert {i: n.address for i, n in cc.nodes.items()} == \
            {i: f"tcp://127.0.0.1:{base + i - 1}" for i in range(1, 6)}
        n_before = len(writer.acked)
        wait_for(lambda: len(writer.acked) > n_before + 20, 30, "writes on five nodes")

        addrs = {i: rc.launcher.address(i) for i in rc.launcher.node_ids}
        creds = load_cluster_config(cluster)
        from josefine.security import client_credentials
        leader = wait_for(lambda: leader_of(addrs, rc.launcher.cluster_id,
                                            client_credentials(creds)), 30, "a leader")
        # Remove the leader and an added node: 5 -> 3.
        gone = [leader, 4 if leader != 4 else 5]
        for i in gone:
            assert "removed and stopped" in _ok(cluster, "member", "remove", str(i))
            wait_for(lambda i=i: rc.launcher.pid(i) is None if i in rc.launcher.node_ids
                     else True, 30, f"node {i} stopped")
        left = sorted(set(range(1, 6)) - set(gone))
        assert _listed(cluster) == {i: "voter" for i in left}
        assert sorted(load_cluster_config(cluster).nodes) == left
        assert sorted(rc.launcher.node_ids) == left
        for i in gone:
            assert (data / f"node-{i}").is_dir()   # no --wipe: kept
        n_before = len(writer.acked)
        wait_for(lambda: len(writer.acked) > n_before + 20, 30, "writes on three nodes")
        acked = writer.finish()
        with Client.from_cluster_file(str(cluster), timeout=30) as c:
            lost = [i for i in acked if c.get(f"k{i}") != str(i)]
        assert not lost, f"{len(lost)} acknowledged writes lost, e.g. {lost[:5]}"

    # A relaunch on the same DIR starts exactly the current members, and they serve.
    again = Launcher(None, data, base, out=None, fsync=False)
    again.start()
    try:
        assert sorted(again.node_ids) == left
        assert sorted(i for i, p in again.pids().items() if p) == left
        assert _listed(cluster) == {i: "voter" for i in left}
        with Client.from_cluster_file(str(cluster), timeout=30) as c:
            assert c.get(f"k{acked[-1]}") == str(acked[-1])
    finally:
        again.stop()
    assert all(p is None for p in again.pids().values())


def test_replace_a_node_whose_data_dir_was_deleted(tmp_path):
    data = tmp_path / "c"
    cluster = data / "cluster.toml"
    with running_cluster(data, fsync=False) as rc:
        with Client.from_cluster_file(str(cluster), timeout=30) as c:
            for i in range(200):
                c.put(f"r{i}", str(i))
        victim = next(i for i in rc.launcher.node_ids if i != rc.leader)
        # The disk is lost: the node cannot come back under its id with an empty store.
        rc.launcher.stop_node(victim)
        import shutil
        shutil.rmtree(data / f"node-{victim}" / "data")
        assert "wiped" in _ok(cluster, "member", "remove", str(victim), "--wipe")
        assert not (data / f"node-{victim}").exists()
        _fails(cluster, "ids are never reused", "member", "add", str(victim))
        out = _ok(cluster, "member", "add")
        assert "node 4" in out and "is a voter" in out
        expect = {i: "voter" for i in (set(range(1, 4)) - {victim}) | {4}}
        assert _listed(cluster) == expect
        # The new node holds everything: the others can lose one node and still serve.
        other = next(i for i in expect if i not in (4, rc.leader))
        rc.launcher.stop_node(other)
        with Client.from_cluster_file(str(cluster), timeout=30) as c:
            assert [c.get(f"r{i}") for i in range(200)] == [str(i) for i in range(200)]
            c.put("after", "yes")


def test_bad_input_is_one_line_exit_1_and_changes_nothing(tmp_path):
    data = tmp_path / "c"
    cluster = data / "cluster.toml"
    with running_cluster(data, fsync=False) as rc:
        launcher = rc.launcher
        before = cluster.read_bytes()
        dirs = sorted(p.name for p in data.iterdir())

        def unchanged() -> None:
            assert cluster.read_bytes() == before
            assert sorted(p.name for p in data.iterdir()) == dirs
            assert sorted(launcher.node_ids) == [1, 2, 3]
            assert _listed_roles(cluster) == {1: "voter", 2: "voter", 3: "voter"}

        _fails(cluster, "node 2 is already a member", "member", "add", "2")
        unchanged()
        _fails(cluster, "node 9 is not a member", "member", "remove", "9")
        unchanged()
        _fails(cluster, "omit --address", "member", "add", "--address", "tcp://127.0.0.1:1")
        unchanged()
        with socket.socket() as s:   # node 4 would listen on base + 3
            s.bind(("127.0.0.1", launcher.base_port + 3))
            s.listen()
            _fails(cluster, "is in use", "member", "add")
        unchanged()
        # Another change under way in the launcher (as while a `member add` waits for its
        # node to catch up): a second request is refused at once, not queued.
        with launcher._membership_change("add"):
            _fails(cluster, "another membership change (add) is in progress",
                   "member", "remove", "3")
        unchanged()

        # A lagging learner is not promoted: node 4 joins as a learner, is frozen and
        # falls behind; `member promote` says so; once it runs again it is promoted.
        assert "is a learner" in _ok(cluster, "member", "add", "--learner")
        launcher.pause(4)
        try:
            with Client.from_cluster_file(str(cluster), timeout=30) as c:
                for i in range(300):
                    c.put(f"x{i}", "v")
            _fails(cluster, "not caught up", "member", "promote", "4", "--timeout", "1")
            assert _listed_roles(cluster)[4] == "learner"
        finally:
            launcher.resume(4)
        assert "is a voter" in _ok(cluster, "member", "promote", "4")
        assert _listed_roles(cluster)[4] == "voter"


def test_the_last_voter_cannot_be_removed(tmp_path):
    data = tmp_path / "c"
    cluster = data / "cluster.toml"
    with running_cluster(data, nodes=1, fsync=False) as rc:
        before = cluster.read_bytes()
        _fails(cluster, "node 1 is the last voter", "member", "remove", "1")
        assert cluster.read_bytes() == before and rc.launcher.pid(1) is not None
    # Launcher stopped: nothing serves requests, so the CLI says so at once.
    _fails(cluster, "no launcher is running", "member", "add")


def _listed_roles(cluster: Path) -> dict[int, str]:
    r = _cli(cluster, "member", "list", "--json")
    assert r.returncode == 0, r.stderr
    return {m["id"]: m["role"] for m in json.loads(r.stdout)["members"]}


def test_a_client_made_before_a_node_joined_follows_the_leader_to_it(tmp_path):
    """A Client keeps working across membership changes: made when nodes 1..3 were the
    cluster, it follows a leader hint naming node 4, which joined later, by re-reading its
    cluster file; a Client made from bare addresses learns node 4's address from the
    hinting node's member list. Without that discovery both bounce among nodes 1..3 until
    they time out."""
    with running_cluster(tmp_path / "c") as rc:
        launcher, cid = rc.launcher, rc.launcher.cluster_id
        path = launcher.cluster_path
        old_file = Client.from_cluster_file(str(path), timeout=30)
        old_addrs: Client | None = None
        try:
            old_file.put("a", "1")
            launcher.add_member(4)
            all_addrs = {**rc.addrs, 4: launcher.address(4)}
            # (launcher.credentials() is cached from before node 4: read the file again)
            creds = client_credentials(load_cluster_config(path))   # trusts node 4
            # Given only nodes 1..3's addresses (and keys that trust node 4).
            old_addrs = Client(dict(rc.addrs), cid, timeout=30, credentials=creds)
            with Client.from_cluster_file(str(path), admin=True, timeout=30) as admin:
                wait_for(lambda: _transferred(admin, all_addrs, cid, creds), 60,
                         "node 4 to lead")
            old_file.put("b", "2")
            assert old_file.get("b") == "2" and old_file.get("a") == "1"
            assert all_addrs[4] in old_file.addresses
            old_addrs.put("c", "3")
            assert old_addrs.get("c") == "3"
            assert all_addrs[4] in old_addrs.addresses
        finally:
            old_file.close()
            if old_addrs is not None:
                old_addrs.close()


def _transferred(admin: Client, addrs: dict[int, str], cid: str, creds: object) -> bool:
    if leader_of(addrs, cid, creds) == 4:
        return True
    try:
        admin.transfer_leadership(4)
    except Exception:  # noqa: BLE001 - a learner not yet promoted, an election: retried
        pass
    return leader_of(addrs, cid, creds) == 4
