"""`josefine transfer [ID]`: leadership moves to the named node, or to the most caught-up
follower, on a launched cluster; bad ids are refused."""
from __future__ import annotations

import subprocess
import sys

import pytest

from josefine.launch.cluster import Launcher
from tests.cluster.helpers import leader_of, running_cluster, statuses, wait_for

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(180)]


def _transfer(launcher: Launcher, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "josefine.launch.cli", "transfer", *args,
                           "--cluster", str(launcher.cluster_path)],
                          capture_output=True, text=True, timeout=60)


def test_transfer_to_a_named_node_and_to_the_most_caught_up(tmp_path):
    with running_cluster(tmp_path / "c") as rc:
        launcher, addrs, creds, first = rc.launcher, rc.addrs, rc.creds, rc.leader
        target = next(i for i in addrs if i != first)
        out = _transfer(launcher, str(target))
        assert out.returncode == 0, out.stderr
        assert f"node {target} leads" in out.stdout
        assert leader_of(addrs, launcher.cluster_id, creds) == target

        st = statuses(addrs, launcher.cluster_id, credentials=creds)[target]
        best = min(st["followers"], key=lambda v: (-st["followers"][v], v))
        out = _transfer(launcher)
        assert out.returncode == 0, out.stderr
        assert f"node {best} leads" in out.stdout
        assert leader_of(addrs, launcher.cluster_id, creds) == best

        out = _transfer(launcher, str(best))
        assert out.returncode == 0 and "already leads" in out.stdout

        out = _transfer(launcher, "9")
        assert out.returncode == 2 and "node 9 is not a member" in out.stderr
        assert leader_of(addrs, launcher.cluster_id, creds) == best   # nothing changed


def test_member_list_shows_every_member_with_match_and_lag(tmp_path):
    import json

    from josefine.client import Client
    from josefine.launch.cli import MEMBER_FIELDS
    with running_cluster(tmp_path / "c") as rc:
        launcher, addrs, creds, leader = rc.launcher, rc.addrs, rc.creds, rc.leader
        with Client(addrs, launcher.cluster_id, timeout=30, credentials=creds) as c:
            for i in range(30):
                c.put(f"k{i}", "v")
        cmd = [sys.executable, "-m", "josefine.launch.cli", "member", "list",
               "--cluster", str(launcher.cluster_path)]
        doc = wait_for(lambda: (lambda d: d if all(m["lag"] == 0 for m in d["members"])
                                else None)(json.loads(subprocess.run(
                                    cmd + ["--json"], capture_output=True, text=True,
                                    timeout=60).stdout)), 30, "followers caught up")
        members = doc["members"]
        assert [m["id"] for m in members] == [1, 2, 3]
        assert all(tuple(m) == MEMBER_FIELDS for m in members)
        assert {m["id"]: m["address"] for m in members} == addrs
        assert all(m["role"] == "voter" for m in members)
        assert [m["id"] for m in members if m["leader"]] == [leader]
        assert all(m["match_height"] >= 31 for m in members)   # 30 writes + the no-op
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
        assert out.returncode == 0 and out.stdout.splitlines()[0].split() == \
            ["id", "address", "role", "match", "lag", "leader"]
        assert len(out.stdout.splitlines()) == 4
