"""The ratios `josefine bench` prints for each kind of --compare (their keys are part of the
documented JSON)."""
from __future__ import annotations

import pytest

from josefine.bench.cli import _ratios
from josefine.bench.runner import BenchResult

pytestmark = pytest.mark.timeout(30)


def _r(system: str, mode: str, wps: float, p50: float) -> BenchResult:
    return BenchResult(system, mode, 3, 1, 1, 10, 1.0, True, writes_per_s=wps,
                       latency_ms={"p50": p50})


def test_metrics_insecure_and_pysyncobj_ratios():
    jose = _r("josefine", "durable", 100.0, 2.0)
    assert _ratios([jose, _r("josefine", "durable-metrics", 98.0, 2.5)]) == {
        "throughput_metrics_vs_off": 0.98, "p50_metrics_minus_off_ms": 0.5}
    assert _ratios([jose, _r("josefine", "durable-insecure", 125.0, 1.5)]) == {
        "throughput_curve_vs_insecure": 0.8, "p50_curve_minus_insecure_ms": 0.5}
    out = _ratios([jose, _r("pysyncobj", "batch", 50.0, 9.0),
                   _r("pysyncobj", "no-batch", 20.0, 1.0)])
    assert out["pysyncobj_best_mode"] == "batch"
    assert out["throughput_vs_pysyncobj_best"] == 2.0
    assert out["p50_vs_pysyncobj_nobatch"] == 2.0
    assert _ratios([jose]) == {} and _ratios([]) == {}
