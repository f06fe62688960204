"""Chaos runs over real node processes.

Three seeds of 45 s each mix SIGKILLs (leader and random nodes), SIGSTOP pauses and
network partitions while clients run a recorded key-value workload; every check of the
harness must pass. A fourth run uses deliberately broken nodes (reads answered locally,
without ReadIndex) and must be caught: the harness has to be able to fail.

Everything waits for conditions; nothing here asserts timing.
"""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest

from josefine.chaos import ChaosConfig, ChaosReport, run_chaos
from josefine.chaos.config import DEFAULT_FAULTS
from josefine.chaos.cli import main as chaos_main

pytestmark = [pytest.mark.chaos, pytest.mark.cluster]

REPO_ROOT = Path(__file__).resolve().parents[2]


def _assert_no_node_left(out: Path) -> None:
    pids = json.loads((out / "pids.json").read_text())
    assert all(p is None for p in pids["nodes"].values()), f"node processes left: {pids}"


def _assert_chaos_passed(report: ChaosReport, out: Path) -> None:
    assert report.passed, report.format()
    assert {f["kind"] for f in report.faults} == set(DEFAULT_FAULTS), report.format()
    assert report.ok_operations > 0
    for name in ("converged", "linearizable", "same-sequence", "commit-monotonic",
                 "one-leader-per-term", "acked-writes", "no-crashes"):
        check = report.check(name)
        assert check is not None and check.passed, report.format()
    for f in ("history.jsonl", "status.jsonl", "report.json", "report.txt"):
        assert (out / f).is_file(), f
    for i in range(1, report.config["nodes"] + 1):
        assert (out / f"node-{i}" / "node.log").is_file()
    # the history the checks passed holds reads served by followers and forwarded writes
    served = next(n for n in report.notes if n.startswith("served at followers"))
    reads, writes = (int(w) for w in served.split() if w.isdigit())
    assert reads > 0 and writes > 0, served
    _assert_no_node_left(out)


@pytest.mark.timeout(200)
@pytest.mark.parametrize(("seed", "nodes", "clients"), [(101, 3, 4), (202, 3, 5)])
def test_chaos_seed_passes_every_check(tmp_path, seed, nodes, clients):
    out = tmp_path / "run"
    report = run_chaos(ChaosConfig(out=out, nodes=nodes, duration=45, seed=seed,
                                   clients=clients, keys=6))
    _assert_chaos_passed(report, out)


@pytest.mark.timeout(220)
def test_chaos_cli_five_nodes_passes_every_check(tmp_path, capsys):
    out = tmp_path / "run"
    code = chaos_main(["--nodes", "5", "--duration", "45", "--seed", "303", "--clients", "6",
                       "--keys", "6", "--faults", "kill,pause,partition", "--out", str(out)])
    text = capsys.readouterr().out
    data = json.loads((out / "report.json").read_text())
    assert code == 0, text
    assert data["passed"] and "josefine chaos: PASS" in text
    assert {f["kind"] for f in data["faults"]} == set(DEFAULT_FAULTS), text
    assert all(c["passed"] for c in data["checks"]) and len(data["checks"]) == 7
    assert data["ok_operations"] > 0 and data["longest_unavailability"]["duration"] >= 0
    _assert_no_node_left(out)


def _broken_node_cmd(config_path: Path) -> list[str]:
    code = ("import tests.chaos.broken_node_patch\n"
            "from josefine.launch.node import main\n"
            f"raise SystemExit(main(['--config', {str(config_path)!r}]))\n")
    return [sys.executable, "-c", code]


@pytest.mark.timeout(150)
def test_harness_catches_stale_local_reads_of_a_broken_node(tmp_path):
    out = tmp_path / "broken"
    path = os.pathsep.join(p for p in (str(REPO_ROOT), os.environ.get("PYTHONPATH")) if p)
    report = run_chaos(ChaosConfig(out=out, nodes=3, duration=15, seed=7, clients=4, keys=3,
                                   faults=["partition"], node_cmd=_broken_node_cmd,
                                   env={"PYTHONPATH": path}))
    assert not report.passed, report.format()
    lin = report.check("linearizable")
    assert lin is not None and not lin.passed and "VIOLATION" in lin.summary, report.format()
    assert "cannot be put in any order" in "\n".join(lin.details)
    assert "FAIL" in (out / "report.txt").read_text()
    _assert_no_node_left(out)
