"""Chaos with membership changes (issue 12): the nemesis adds, removes and replaces nodes
of a launched 3-node cluster while clients run the recorded workload, alone and mixed
with kills and partitions; every check must pass, and the history and report must show
the changes. The order of the changes is forced (add, replace, remove, ...) so each kind
happens in a short run whatever the timing; the targets still follow the seed and who
leads."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from josefine.chaos import ChaosConfig, ChaosReport, run_chaos
from josefine.check.history import load_history

pytestmark = [pytest.mark.chaos, pytest.mark.cluster]

CHECKS = ("converged", "linearizable", "same-sequence", "commit-monotonic",
          "one-leader-per-term", "acked-writes", "no-crashes")


def _changes(report: ChaosReport) -> list[dict[str, Any]]:
    return [f for f in report.faults if f["kind"] == "membership"]


def _assert_membership_run(report: ChaosReport, out: Path) -> list[dict[str, Any]]:
    assert report.passed, report.format()
    for name in CHECKS:
        check = report.check(name)
        assert check is not None and check.passed, report.format()
    changes = _changes(report)
    done = {f["variant"] for f in changes if not f.get("error")}
    assert {"add", "remove", "replace"} <= done, report.format()
    assert report.ok_operations > 0

    # the history holds a start and an end line for every change, mechanism "membership"
    lines = [r["value"] for r in load_history(out / "history.jsonl")
             if r["process"] == "nemesis" and r["f"] == "membership"]
    starts = {v["id"]: v for v in lines if v["phase"] == "start"}
    ends = {v["id"]: v for v in lines if v["phase"] == "end"}
    assert set(starts) == set(ends) == {f["id"] for f in changes}
    assert all(v["mechanism"] == "membership" for v in lines)
    for f in changes:
        end = ends[f["id"]]
        assert end["seconds"] >= 0 and end.get("added", []) == f.get("added", [])
        if f["variant"] in ("add", "replace") and not f.get("error"):
            assert len(end["added"]) == 1 and end["added"][0] > 3
        if f["variant"] in ("remove", "replace") and not f.get("error"):
            assert len(end["removed"]) == 1 and end["removed"][0] in starts[f["id"]][
                "voters_before"]
        if f.get("voters_after") is not None:
            assert 3 <= len(f["voters_after"]) <= 5, f

    # the report's summary, and the nodes on disk, agree with the changes
    m = report.membership
    added = {i for f in changes for i in f.get("added", [])}
    removed = {i for f in changes for i in f.get("removed", [])}
    assert m["final"] == sorted(({1, 2, 3} | added) - removed), report.format()
    assert m["departed"] == sorted(removed) and "mismatch" not in m
    assert m["client_rebuilds"] > 0   # the clients followed the changes
    assert "membership:" in (out / "report.txt").read_text()
    for f in changes:
        if f["variant"] == "replace" and not f.get("error"):
            gone = f["removed"][0]
            assert not (out / f"node-{gone}").exists()          # wiped
            assert (out / "departed" / f"node-{gone}.log").is_file()  # its log kept
    # a node that joined late answered the sampler, and was compared at the end
    samples = [json.loads(ln) for ln in (out / "status.jsonl").read_text().splitlines()]
    assert added & {s["node"] for s in samples}
    same = report.check("same-sequence")
    assert same is not None and f"all {len(m['final'])} nodes" in same.summary

    # no fault of another kind targeted a node that had left by then
    left: set[int] = set()
    for f in sorted(report.faults, key=lambda f: f["start"]):
        if f["kind"] == "membership":
            left |= set(f.get("removed", []))
        else:
            assert not set(f["nodes"]) & left, (f, left)
    pids = json.loads((out / "pids.json").read_text())
    assert all(p is None for p in pids["nodes"].values()), pids
    return changes


@pytest.mark.timeout(200)
def test_membership_only_chaos_passes_every_check(tmp_path):
    out = tmp_path / "run"
    report = run_chaos(ChaosConfig(out=out, nodes=3, duration=30, seed=11, clients=4, keys=4,
                                   faults=["membership"], fault_gap=(1.0, 2.5),
                                   membership_ops=("add", "replace", "remove")))
    changes = _assert_membership_run(report, out)
    assert len(changes) >= 4, report.format()


@pytest.mark.timeout(200)
def test_kill_partition_membership_chaos_passes_every_check(tmp_path):
    out = tmp_path / "run"
    report = run_chaos(ChaosConfig(out=out, nodes=3, duration=40, seed=12, clients=4, keys=4,
                                   faults=["kill", "partition", "membership"],
                                   fault_gap=(0.5, 1.5), fault_hold=(0.5, 2.0),
                                   membership_ops=("add", "replace", "remove")))
    _assert_membership_run(report, out)
    kinds = {f["kind"] for f in report.faults}
    assert kinds == {"kill", "partition", "membership"}, report.format()
