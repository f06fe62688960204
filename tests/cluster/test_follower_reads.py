"""Clients served by any node, on a launched 3-node cluster of real processes: reads at
followers (read_from="any", `josefine get --any`) and writes through a follower."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

from josefine.client import Client
from tests.cluster.helpers import running_cluster, statuses, wait_for

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(180)]


def _cli(*args: str, env: dict) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "josefine.launch.cli", *args],
                          capture_output=True, text=True, timeout=60, env=env)


def test_followers_serve_reads_and_forward_writes(tmp_path):
    with running_cluster(tmp_path / "c") as rc:
        cid, creds = rc.launcher.cluster_id, rc.creds
        f1, f2 = sorted(i for i in rc.addrs if i != rc.leader)
        before = statuses(rc.addrs, cid, credentials=creds)
        # each client knows one follower only: everything it does goes through it
        via1 = Client({f1: rc.addrs[f1]}, cid, timeout=20, credentials=creds,
                      read_from="any")
        via2 = Client({f2: rc.addrs[f2]}, cid, timeout=20, credentials=creds,
                      read_from="any")
        with via1, via2:
            for i in range(30):
                via1.put(f"k{i}", f"v{i}")          # forwarded by f1
                assert via2.get(f"k{i}") == f"v{i}"  # read at f2 right after: linearizable
                assert via1.get(f"k{i}") == f"v{i}"
            assert via1.cas("k0", "v0", "w0") and not via2.cas("k0", "v0", "x")
            assert via2.get("k0") == "w0"
        after = statuses(rc.addrs, cid, credentials=creds)
        assert all(s["role"] == "follower" for i, s in after.items() if i in (f1, f2)), after
        assert after[f1]["forwarded_writes"] - before[f1]["forwarded_writes"] >= 31
        assert after[f2]["forwarded_writes"] - before[f2]["forwarded_writes"] >= 1
        assert after[f2]["follower_reads"] - before[f2]["follower_reads"] >= 31
        assert after[f1]["follower_reads"] - before[f1]["follower_reads"] >= 30
        assert after[rc.leader]["follower_reads"] == 0
        # the leader's own state agrees; a default client reads at the leader only, even
        # when the first node it asks is a follower
        first_follower = {f1: rc.addrs[f1], **rc.addrs}
        with Client(first_follower, cid, timeout=20, credentials=creds) as c:
            assert [c.get(f"k{i}") for i in range(1, 30)] == [f"v{i}" for i in range(1, 30)]
            assert c.get("k0") == "w0"
            for i in range(5):   # and writes: the follower points it at the leader
                c.put(f"d{i}", "x")
        again = statuses(rc.addrs, cid, credentials=creds)
        assert [again[i]["follower_reads"] for i in rc.addrs] == \
            [after[i]["follower_reads"] for i in rc.addrs]
        assert [again[i]["forwarded_writes"] for i in rc.addrs] == \
            [after[i]["forwarded_writes"] for i in rc.addrs], "a default client is not forwarded"
        # the CLI: `josefine get --any` spreads reads over the nodes, followers included
        env = {**os.environ, "JOSEFINE_CLUSTER": str(rc.launcher.cluster_path)}
        for _ in range(10):   # each run starts its round robin at random: P(all at the leader) ~ 2e-5
            r = _cli("get", "--any", "k7", env=env)
            assert r.returncode == 0 and r.stdout.strip() == "v7", r.stderr
        final = wait_for(lambda: statuses(rc.addrs, cid, credentials=creds), 10, "statuses")
        cli_reads = sum(final[i]["follower_reads"] - after[i]["follower_reads"]
                        for i in (f1, f2))
        assert cli_reads >= 1, "ten CLI reads with --any and none served by a follower"
