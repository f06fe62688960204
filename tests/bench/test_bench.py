"""`josefine bench` runs end to end on a tiny setting, both systems, and its JSON is valid.

Nothing here asserts speed (shared, noisy machines): only that the command works, measures
something and reports it in the documented shape.
"""
from __future__ import annotations

import json
import math
import subprocess
import sys

import pytest

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(300)]

RESULT_KEYS = {"system", "mode", "nodes", "clients", "pipeline", "payload", "duration_s",
               "fsync", "writes", "writes_per_s", "latency_ms", "cpu_per_node", "peak_rss_mib",
               "errors", "timeline", "rss_timeline"}


def test_bench_json_both_systems(tmp_path):
    plot = tmp_path / "bench.png"
    out = subprocess.run(
        [sys.executable, "-m", "josefine.launch.cli", "bench", "--nodes", "3", "--clients", "2",
         "--pipeline", "2", "--duration", "1.5", "--warmup", "0.5", "--payload", "10",
         "--compare", "pysyncobj", "--json", "--no-progress", "--plot", str(plot)],
        capture_output=True, text=True, timeout=280)
    assert out.returncode == 0, out.stderr[-3000:]
    doc = json.loads(out.stdout)
    assert doc["version"] == 1
    systems = [(r["system"], r["mode"]) for r in doc["results"]]
    assert systems == [("josefine", "durable"), ("pysyncobj", "batch"),
                       ("pysyncobj", "no-batch")]
    for r in doc["results"]:
        assert RESULT_KEYS <= set(r), RESULT_KEYS - set(r)
        assert r["nodes"] == 3 and r["clients"] == 2 and r["payload"] == 10
        assert r["writes"] > 0, r
        assert r["writes_per_s"] == pytest.approx(r["writes"] / r["duration_s"])
        lat = r["latency_ms"]
        assert 0 < lat["p50"] <= lat["p90"] <= lat["p99"] <= lat["p99.9"] <= lat["max"]
        assert set(r["cpu_per_node"]) == {"node1", "node2", "node3"}
        assert all(v >= 0 for v in r["cpu_per_node"].values())
        assert all(v > 0 for v in r["peak_rss_mib"].values())
        assert set(r["rss_timeline"]) == {"node1", "node2", "node3"}
        for samples in r["rss_timeline"].values():
            assert samples and all(0 <= t <= r["duration_s"] + 1 and 0 < mib <= 4096
                                   for t, mib in samples)
    assert doc["results"][0]["fsync"] is True
    ratios = doc["ratios"]
    assert ratios["pysyncobj_best_mode"] in ("batch", "no-batch")
    assert ratios["throughput_vs_pysyncobj_best"] > 0
    assert not math.isnan(ratios["p50_vs_pysyncobj_nobatch"])
    assert doc["failover"] is None
    assert plot.exists() and plot.stat().st_size > 1000


def test_bench_floor_runs_the_bare_loop_in_the_same_run():
    """--floor: the bare loop, durable and without fsync, one write at a time, beside
    Josefine's run, and Josefine's p50 as a multiple of each floor's p50."""
    out = subprocess.run(
        [sys.executable, "-m", "josefine.launch.cli", "bench", "--nodes", "3", "--clients", "1",
         "--pipeline", "1", "--duration", "1.5", "--warmup", "0.5", "--floor", "--json",
         "--no-progress"], capture_output=True, text=True, timeout=280)
    assert out.returncode == 0, out.stderr[-3000:]
    doc = json.loads(out.stdout)
    floor = doc["floor"]
    assert set(floor) == {"durable", "no-fsync"}
    assert floor["durable"]["fsync"] is True and floor["no-fsync"]["fsync"] is False
    for r in floor.values():
        assert r["batch"] == 1 and r["window"] == 1 and r["proposals"] > 0
    p50 = doc["results"][0]["latency_ms"]["p50"]
    for mode, key in (("durable", "p50_over_bare_durable"),
                      ("no-fsync", "p50_over_bare_no_fsync")):
        assert doc["ratios"][key] == pytest.approx(
            p50 / floor[mode]["commit_latency_ms"]["p50"], abs=0.01)


def test_bench_rejects_bad_arguments():
    out = subprocess.run([sys.executable, "-m", "josefine.launch.cli", "bench", "--clients", "0"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 2
    assert "--clients" in out.stderr
