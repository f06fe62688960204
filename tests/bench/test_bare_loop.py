"""The bare commit loop (`josefine.bench.bare_loop`) runs on a tiny setting and reports its
numbers in the documented shape, both from Python and from its command line.

Nothing here asserts speed (shared, noisy machines): only that the loop works, commits
something and reports it consistently.
"""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from josefine.bench.bare_loop import run_bare

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(120)]

RESULT_KEYS = {"nodes", "batch", "window", "payload", "fsync", "duration_s", "proposals",
               "proposals_per_s", "batches_per_s", "commit_latency_ms"}


def _check(r: dict, batch: int) -> None:
    assert set(r) == RESULT_KEYS, set(r) ^ RESULT_KEYS
    assert r["nodes"] == 3 and r["batch"] == batch and r["window"] == 4
    assert r["payload"] == 10 and r["fsync"] is True
    assert r["proposals"] > 0, r
    assert r["proposals"] % batch == 0, r
    assert r["proposals_per_s"] == pytest.approx(r["proposals"] / r["duration_s"])
    assert r["batches_per_s"] == pytest.approx(r["proposals_per_s"] / batch)
    lat = r["commit_latency_ms"]
    assert set(lat) == {"p50", "p99"}
    assert 0 < lat["p50"] <= lat["p99"]


def test_run_bare_reports_documented_shape():
    r = run_bare(batch=8, duration=1.0, warmup=0.3)
    _check(r, batch=8)
    assert r["duration_s"] == pytest.approx(1.0)


def test_bare_loop_cli_json():
    out = subprocess.run(
        [sys.executable, "-m", "josefine.bench.bare_loop", "--batch", "4", "--duration", "0.5",
         "--json"],
        check=False, capture_output=True, text=True, timeout=100)
    assert out.returncode == 0, out.stderr[-3000:]
    doc = json.loads(out.stdout)
    assert isinstance(doc, list) and len(doc) == 1
    _check(doc[0], batch=4)
    assert doc[0]["duration_s"] == pytest.approx(0.5)


def test_bare_loop_rejects_bad_arguments():
    out = subprocess.run([sys.executable, "-m", "josefine.bench.bare_loop", "--window", "0"],
                         check=False, capture_output=True, text=True, timeout=60)
    assert out.returncode == 2
    assert "--window" in out.stderr
