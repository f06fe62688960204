"""Snapshots on a launched cluster (docs/protocol.md A.13, A.14): nodes snapshot on their own
at the configured threshold and compact their chains; a follower that was down while the
others wrote past two snapshots comes back, is sent the leader's snapshot (streamed in
chunks), installs it and catches up; a relaunch restores snapshots and replays only tails.
"""
from __future__ import annotations

import pytest

from josefine.client import Client
from josefine.runtime.snapshots import SNAPSHOT_DIR
from josefine.snapshot.files import list_snapshots, verify
from tests.cluster.helpers import leader_of, running_cluster, statuses, wait_for

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(240)]

EVERY = 40   # blocks between snapshots: small, so a short test passes several


def _st(rc, i):
    return statuses({i: rc.addrs[i]}, rc.launcher.cluster_id, credentials=rc.creds)[i]


def test_stopped_follower_catches_up_by_snapshot_after_two_snapshots(tmp_path):
    with running_cluster(tmp_path / "c", snapshot_blocks=EVERY) as rc:
        launcher, addrs = rc.launcher, rc.addrs
        follower = max(i for i in addrs if i != rc.leader)
        with Client(addrs, launcher.cluster_id, timeout=30, credentials=rc.creds) as c:
            for i in range(10):
                c.put(f"k{i}", f"v{i}")
            stopped_at = _st(rc, follower)["commit"][1]
            launcher.stop_node(follower)
            for i in range(10, 10 + 3 * EVERY):   # one block per put: three intervals
                c.put(f"k{i}", f"v{i}")
            leader = leader_of(addrs, launcher.cluster_id, rc.creds)
            lst = wait_for(lambda: (s := _st(rc, leader))["base"][1] > stopped_at and s, 30,
                           "the leader's base to pass what the follower holds")
            assert lst["snapshot"][1] > lst["base"][1], "the chain is cut at the older snapshot"
            launcher.start_node(follower)
            c.put("after", "restart")
            target = _st(rc, leader)

            def caught_up():
                s = _st(rc, follower)
                return s.get("applied") and s["applied"][1] >= target["commit"][1] and s
            fst = wait_for(caught_up, 60, "the follower to catch up")
            assert fst["base"][1] > stopped_at, "it installed a snapshot above what it had"
            assert c.get("k5") == "v5" and c.get(f"k{9 + 3 * EVERY}") == f"v{9 + 3 * EVERY}"
        # every node applied the same history: equal digests at equal applied points
        def same():
            st = statuses(addrs, launcher.cluster_id, credentials=rc.creds)
            pts = {(tuple(s["applied"]), s["sm_digest"]) for s in st.values()}
            return len(pts) == 1
        wait_for(same, 30, "equal state machines on every node")
        log = launcher.log_path(follower).read_text()
        assert "received snapshot" in log and "installed snapshot" in log, log[-3000:]
    snaps = list_snapshots(launcher.data_dir / f"node-{follower}" / "data" / SNAPSHOT_DIR)
    assert snaps and all(verify(p) for p in snaps)


def test_relaunch_restores_snapshots_and_replays_only_the_tail(tmp_path):
    with running_cluster(tmp_path / "c", snapshot_blocks=EVERY) as rc:
        with Client(rc.addrs, rc.launcher.cluster_id, timeout=30, credentials=rc.creds) as c:
            for i in range(3 * EVERY):
                c.put(f"k{i}", f"v{i}")
        wait_for(lambda: all(s.get("base", [0, 0])[1] > 0 for s in statuses(
            rc.addrs, rc.launcher.cluster_id, credentials=rc.creds).values()),
            30, "every node to compact")
        before = statuses(rc.addrs, rc.launcher.cluster_id, credentials=rc.creds)
    with running_cluster(tmp_path / "c", snapshot_blocks=EVERY) as rc:
        for i in rc.addrs:
            log = rc.launcher.log_path(i).read_text()
            assert "restored snapshot" in log, log[-2000:]
        with Client(rc.addrs, rc.launcher.cluster_id, timeout=30, credentials=rc.creds) as c:
            assert c.get("k0") == "v0" and c.get(f"k{3 * EVERY - 1}") == f"v{3 * EVERY - 1}"
        after = statuses(rc.addrs, rc.launcher.cluster_id, credentials=rc.creds)
        for i in rc.addrs:
            assert after[i]["base"][1] >= before[i]["base"][1]


def _cli(launcher, *args: str):
    import subprocess
    import sys
    return subprocess.run([sys.executable, "-m", "josefine.launch.cli", "snapshot", *args,
                           "--cluster", str(launcher.cluster_path)],
                          capture_output=True, text=True, timeout=120)


def test_snapshot_cli_on_one_node_and_on_every_node(tmp_path):
    with running_cluster(tmp_path / "c", snapshot_blocks=0, snapshot_bytes=0) as rc:
        with Client(rc.addrs, rc.launcher.cluster_id, timeout=30, credentials=rc.creds) as c:
            for i in range(20):
                c.put(f"k{i}", f"v{i}")
        assert all(s["snapshot"] is None for s in statuses(
            rc.addrs, rc.launcher.cluster_id, credentials=rc.creds).values()), \
            "thresholds of 0: no snapshot on its own"
        out = _cli(rc.launcher, "--node", "2")
        assert out.returncode == 0, out.stderr
        assert out.stdout.startswith("node 2: snapshot at height ")
        height = int(out.stdout.split("height ")[1].split()[0])
        assert height >= 20
        assert _st(rc, 2)["snapshot"][1] == height
        out = _cli(rc.launcher)
        assert out.returncode == 0, out.stderr
        assert [line.split(":")[0] for line in out.stdout.splitlines()] == \
            [f"node {i}" for i in sorted(rc.addrs)]
        out = _cli(rc.launcher, "--node", "9")
        assert out.returncode != 0 and "not a member" in out.stderr


def test_a_planned_stop_snapshots_so_the_relaunch_replays_almost_nothing(tmp_path):
    """SIGTERM (the launcher's stop) runs the launched node's planned-stop path: with more
    than `snapshot_on_stop_blocks` applied since the last snapshot, each node writes one
    before exiting, and the relaunch restores it instead of replaying the blocks."""
    settings = {"snapshot_blocks": 0, "snapshot_bytes": 0, "snapshot_on_stop_blocks": 10}
    with running_cluster(tmp_path / "c", **settings) as rc:
        with Client(rc.addrs, rc.launcher.cluster_id, timeout=30, credentials=rc.creds) as c:
            for i in range(30):
                c.put(f"k{i}", f"v{i}")
        wait_for(lambda: len({tuple(s["applied"]) for s in statuses(
            rc.addrs, rc.launcher.cluster_id, credentials=rc.creds).values()}) == 1,
            30, "every node to apply the same")
        before = statuses(rc.addrs, rc.launcher.cluster_id, credentials=rc.creds)
        assert all(s["snapshot"] is None for s in before.values()), "thresholds 0: none yet"
    launcher = rc.launcher
    for i in rc.addrs:
        snaps = list_snapshots(launcher.data_dir / f"node-{i}" / "data" / SNAPSHOT_DIR)
        assert snaps, f"node {i} wrote no snapshot when it stopped"
        base = verify(snaps[0]).meta.base
        assert base.height >= before[i]["applied"][1], (i, base, before[i]["applied"])
        assert "snapshot before stopping" in launcher.log_path(i).read_text()
    with running_cluster(tmp_path / "c", **settings) as rc:
        for i in rc.addrs:
            log = rc.launcher.log_path(i).read_text().split("launcher (pid")[-1]
            assert "restored snapshot" in log, log[-2000:]
        with Client(rc.addrs, rc.launcher.cluster_id, timeout=30, credentials=rc.creds) as c:
            assert c.get("k0") == "v0" and c.get("k29") == "v29"


def test_no_snapshot_on_stop_below_snapshot_on_stop_blocks(tmp_path):
    settings = {"snapshot_blocks": 0, "snapshot_bytes": 0, "snapshot_on_stop_blocks": 1000}
    with running_cluster(tmp_path / "c", **settings) as rc:
        with Client(rc.addrs, rc.launcher.cluster_id, timeout=30, credentials=rc.creds) as c:
            for i in range(5):
                c.put(f"k{i}", f"v{i}")
    for i in rc.addrs:
        assert not list_snapshots(rc.launcher.data_dir / f"node-{i}" / "data" / SNAPSHOT_DIR)
        assert "snapshot before stopping" not in rc.launcher.log_path(i).read_text()
