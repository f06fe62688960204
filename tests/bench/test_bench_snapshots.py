"""`josefine bench --snapshots`: its helpers compute what they claim, and one tiny run end to
end measures every part and reports it in the documented shape.

No figure is judged against a target here (shared, noisy machines): only that each part
really measured something (sizes, times, writes, snapshots) and that nothing outlives it.
"""
from __future__ import annotations

import json
import subprocess
import sys
import time
from datetime import datetime

import pytest

from josefine.bench.snapshots import (data_dir_sizes, dir_bytes, format_report, memory_stats,
                                      snapshot_windows, split_around)

CLI = [sys.executable, "-m", "josefine.launch.cli", "bench"]


@pytest.mark.timeout(30)
def test_dir_sizes_sum_chain_snapshots_and_the_rest(tmp_path):
    (tmp_path / "chain").mkdir()
    (tmp_path / "snapshots" / "sub").mkdir(parents=True)
    (tmp_path / "chain" / "000001.ldb").write_bytes(b"x" * 1000)
    (tmp_path / "chain" / "LOG").write_bytes(b"x" * 10)
    (tmp_path / "snapshots" / "sub" / "s").write_bytes(b"x" * 300)
    (tmp_path / "vote").write_bytes(b"x" * 7)
    assert data_dir_sizes(tmp_path) == {"chain_bytes": 1010, "snapshot_bytes": 300,
                                        "data_bytes": 1317}
    assert dir_bytes(tmp_path / "missing") == 0


@pytest.mark.timeout(30)
def test_snapshot_windows_from_node_log_lines():
    """A node's log line (the launcher's format) becomes [end - took - 1 s, end + 1 s] on
    the clock the offset maps to; other lines are ignored."""
    end = datetime(2025, 1, 2, 3, 4, 5, 250000)
    stamp = end.strftime("%Y-%m-%d %H:%M:%S,") + "250"
    log = "\n".join([
        f"{stamp} node2 INFO josefine.runtime.snapshots: node 2: snapshot of (3,2048) "
        "written in 0.500 s (0000000000000003-0000000000002048.snap)",
        f"{stamp} node2 INFO josefine.raft.core: node 2: installed snapshot (3,2048) from "
        "node 1 (kept 0 blocks above it)",
        "garbage"])
    (w,) = snapshot_windows(log, margin=1.0, wall_minus_mono=end.timestamp() - 100.0)
    assert w == pytest.approx((98.5, 101.0))


@pytest.mark.timeout(30)
def test_split_around_separates_writes_near_a_snapshot():
    done = [1.0, 2.0, 3.0, 10.0, 11.0]
    lat_us = [1000.0, 2000.0, 50000.0, 1000.0, 3000.0]
    out = split_around(done, lat_us, [(2.5, 3.5), (9.9, 10.1)])
    assert out["around_writes"] == 2 and out["other_writes"] == 3
    assert out["around_p99.9_ms"] == 50.0 and out["other_p99.9_ms"] == 3.0
    assert out["p99.9_ratio"] == pytest.approx(50 / 3, abs=0.001)
    none = split_around(done, lat_us, [])
    assert none["around_writes"] == 0 and none["p99.9_ratio"] is None


@pytest.mark.timeout(30)
def test_memory_stats_first_last_minute_and_slopes():
    # 100 MiB rising 1 MiB a minute, then a relaunch at 300 s back to 50 MiB, flat
    tl = [(float(t), 100 + t / 60) for t in range(0, 300, 5)] + \
         [(float(t), 50.0) for t in range(300, 600, 5)]
    m = memory_stats(tl, [300.0])
    assert m["first_minute_mib"] == pytest.approx(100.5)   # 100 + mean(0..55 s)/60, to 0.1
    assert m["last_minute_mib"] == 50.0
    assert m["slope_mib_per_min"] < 0
    assert m["last_segment"] == {"from_s": 300.0, "first_minute_mib": 50.0,
                                 "last_minute_mib": 50.0, "slope_mib_per_min": 0.0}
    rising = memory_stats([(float(t), 100 + t / 60) for t in range(0, 300, 5)], [])
    assert rising["slope_mib_per_min"] == pytest.approx(1.0)
    assert rising["last_segment"]["from_s"] == 0.0
    assert rising["last_segment"]["slope_mib_per_min"] == pytest.approx(1.0)
    assert memory_stats([], [])["slope_mib_per_min"] is None


@pytest.mark.timeout(60)
def test_help_lists_the_snapshot_options_and_bad_ones_are_refused():
    out = subprocess.run(CLI + ["--help"], capture_output=True, text=True, timeout=50)
    assert out.returncode == 0
    for opt in ("--snapshots", "--minutes-at", "--follower-down-minutes", "--catchup-seconds",
                "--on-off-seconds", "--on-off-rounds", "--snapshot-blocks", "--snapshot-bytes"):
        assert opt in out.stdout, opt
    for bad, word in ((["--minutes-at", "5,1"], "--minutes-at"),
                      (["--compare", "pysyncobj"], "--compare"),
                      (["--on-off-seconds", "0"], "--on-off-seconds"),
                      (["--on-off-rounds", "0"], "--on-off-rounds")):
        out = subprocess.run(CLI + ["--snapshots", *bad], capture_output=True, text=True,
                             timeout=50)
        assert out.returncode == 2 and word in out.stderr, (bad, out.stderr)


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return b"josefine.launch.node" in f.read()
    except OSError:
        return False


@pytest.mark.cluster
@pytest.mark.timeout(600)
def test_tiny_snapshot_bench_measures_every_part():
    out = subprocess.run(
        CLI + ["--snapshots", "--minutes-at", "0.05,0.1", "--follower-down-minutes", "0.05",
               "--catchup-seconds", "2", "--on-off-seconds", "3", "--on-off-rounds", "2", "--warmup", "0.5",
               "--snapshot-blocks", "50", "--clients", "2", "--pipeline", "32", "--json",
               "--no-progress"], capture_output=True, text=True, timeout=580)
    assert out.returncode == 0, out.stderr[-3000:]
    doc = json.loads(out.stdout)
    assert doc["version"] == 1 and doc["kind"] == "snapshots"
    assert doc["settings"]["node_settings"] == {"snapshot_blocks": 50}
    nodes = {"node1", "node2", "node3"}

    # 1. disk and relaunch at each checkpoint
    assert [c["load_minutes"] for c in doc["uptime"]] == pytest.approx([0.05, 0.1], abs=0.01)
    for c in doc["uptime"]:
        assert c["writes"] > 0 and c["commit_before_stop"] > 0
        assert set(c["nodes"]) == nodes
        for n in c["nodes"].values():
            assert n["chain_bytes"] > 0 and n["data_bytes"] >= n["chain_bytes"]
            assert n["snapshot_bytes"] > 0, "snapshot_blocks 50: every node has written one"
            assert n["rss_mib"] > 0
            assert n["snapshot"] is not None and n["snapshot"][1] > 0
        assert c["relaunch_s"] is not None and c["relaunch_s"] > 0
        assert c["relaunch_s"] == max(c["relaunch_per_node_s"].values())

    # 2. the follower caught up; when the leader's base had passed everything the follower
    # held, only InstallSnapshot could bring it back, and its log must say so
    f = doc["follower"]
    assert f["catch_up_s"] is not None and f["catch_up_s"] > 0
    assert f["leader_commit_at_restart"] > f["applied_before"]
    assert f["writes"] > 0
    if f["leader_base_at_restart"] > f["applied_before"]:
        assert f["installed_snapshot"] is True

    # 3. both runs wrote; snapshots were written only in the "on" run, and writes around
    # them were sampled
    oo = doc["on_off"]
    for mode in ("on", "off"):
        r = oo[mode]["result"]
        assert r["writes"] > 0 and r["writes_per_s"] > 0 and r["mode"] == f"snapshots-{mode}"
        assert set(oo[mode]["nodes"]) == nodes
    # two rounds, the second in reverse order; the first keeps its details, the ratio is of
    # the means over both
    rounds = oo["rounds"]
    assert len(rounds) == 2 and doc["settings"]["on_off_rounds"] == 2
    assert rounds[0]["on_writes_per_s"] == oo["on"]["result"]["writes_per_s"]
    assert rounds[0]["off_writes_per_s"] == oo["off"]["result"]["writes_per_s"]
    assert all(x["on_writes_per_s"] > 0 and x["off_writes_per_s"] > 0 for x in rounds)
    assert oo["throughput_on_over_off"] == pytest.approx(
        sum(x["on_writes_per_s"] for x in rounds) / sum(x["off_writes_per_s"] for x in rounds),
        abs=0.001)
    assert oo["off"]["snapshots_written"] == 0
    assert oo["on"]["snapshots_written"] > 0
    a = oo["on"]["around_snapshot"]
    assert a["around_writes"] > 0
    assert a["around_writes"] + a["other_writes"] == oo["on"]["result"]["writes"]

    # 4. memory sampled over the uptime run
    assert set(doc["memory"]) == nodes
    for m in doc["memory"].values():
        assert m["samples"] >= 2 and m["first_minute_mib"] > 0 and m["last_minute_mib"] > 0
        # the last relaunch ends the sampled run: the last segment starts at the one before
        assert m["last_segment"]["from_s"] == pytest.approx(0.05 * 60)
        assert m["last_segment"]["last_minute_mib"] > 0

    # every node process it started is gone
    assert len(doc["node_pids"]) >= 3 * 3   # three launches of the uptime run at least
    deadline = time.monotonic() + 10
    while any(_alive(p) for p in doc["node_pids"]) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not [p for p in doc["node_pids"] if _alive(p)]

    # the table (what runs without --json print) renders this document, every part in it
    table = format_report(doc)
    for part in ("disk and restart vs uptime", "follower catch-up", "snapshots on vs off",
                 "throughput on/off", "within 1 s of a snapshot", "memory over"):
        assert part in table, part
    assert len([ln for ln in table.splitlines() if ln.startswith("    0.")]) == 2
