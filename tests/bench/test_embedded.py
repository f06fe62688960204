"""The embedded benchmark mode (load inside node 1's process) runs end to end.

No timing assertions (shared, noisy machines): only that it measures something, reports it
in the BenchResult shape, and leaves no node process behind.
"""
from __future__ import annotations

import os

import pytest

from josefine.bench.embedded import run_josefine_embedded

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(180)]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:   # exists, but not ours (a recycled pid)
        return True
    return True


def test_embedded_run_measures_and_cleans_up():
    procs: dict = {}
    r = run_josefine_embedded(nodes=3, clients=1, pipeline=2, duration=1.5, payload=10,
                              fsync=True, warmup=0.5, procs_out=procs)
    assert (r.system, r.mode) == ("josefine", "durable-embedded")
    assert r.nodes == 3 and r.clients == 1 and r.pipeline == 2 and r.payload == 10
    assert r.fsync is True
    assert r.writes > 0, r
    assert r.writes_per_s == pytest.approx(r.writes / r.duration_s)
    lat = r.latency_ms
    assert 0 < lat["p50"] <= lat["p90"] <= lat["p99"] <= lat["p99.9"] <= lat["max"]
    assert set(r.cpu_per_node) == {"node1", "node2", "node3"}
    assert all(v >= 0 for v in r.cpu_per_node.values())
    assert set(r.peak_rss_mib) == {"node1", "node2", "node3"}
    assert all(v > 0 for v in r.peak_rss_mib.values())
    assert r.timeline and sum(n for _, n, _ in r.timeline) == r.writes
    d = r.to_dict()
    assert d["mode"] == "durable-embedded" and d["writes"] == r.writes

    assert set(procs["pids"]) == {"node1", "node2", "node3"}
    assert procs["node1_exit"] == 0, "the embedded node should stop itself cleanly"
    left = [pid for pid in procs["pids"].values() if _alive(pid)]
    assert not left, f"node processes still running: {left}"


def test_bench_cli_embedded_json():
    import json
    import subprocess
    import sys
    out = subprocess.run(
        [sys.executable, "-m", "josefine.launch.cli", "bench", "--embedded", "--clients", "1",
         "--duration", "1", "--warmup", "0.3", "--json", "--no-progress"],
        capture_output=True, text=True, timeout=170)
    assert out.returncode == 0, out.stderr[-3000:]
    doc = json.loads(out.stdout)
    (r,) = doc["results"]
    assert (r["system"], r["mode"], r["fsync"]) == ("josefine", "durable-embedded", True)
    assert r["writes"] > 0 and r["latency_ms"]["p50"] > 0


def test_bench_cli_refuses_two_load_modes():
    import subprocess
    import sys
    out = subprocess.run([sys.executable, "-m", "josefine.launch.cli", "bench", "--embedded",
                          "--client-api"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 2 and "choose one" in out.stderr
