"""Chaos testing: real node processes, a recorded client workload, faults, and checks.

    from josefine.chaos import ChaosConfig, run_chaos
    report = run_chaos(ChaosConfig(out="/tmp/run", nodes=5, duration=60, seed=1))
    print(report.format()); assert report.passed

Command line: ``josefine chaos --nodes 5 --duration 60 --seed S --out DIR``.
"""
from josefine.chaos.checks import CheckOutcome
from josefine.chaos.config import FAULT_KINDS, ChaosConfig, find_free_ports
from josefine.chaos.harness import run_chaos
from josefine.chaos.report import ChaosReport

__all__ = ["ChaosConfig", "ChaosReport", "CheckOutcome", "FAULT_KINDS", "find_free_ports",
           "run_chaos"]
