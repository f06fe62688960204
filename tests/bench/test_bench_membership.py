"""`josefine bench --membership` and the planned failover of `--failover`: the window
arithmetic computes what it claims, and tiny real runs measure every part and report it in
the documented shape.

No figure is judged against a target here (shared, noisy machines): only that each change
really happened (the node became a voter in the leader's configuration, was removed, its
process stopped), that writes were measured around it, and that nothing outlives the run.
"""
from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest

from josefine.bench.cli import main
from josefine.bench.membership import (change_windows, compare_windows, format_report,
                                       window_stats)

CLI = [sys.executable, "-m", "josefine.launch.cli", "bench"]


@pytest.mark.timeout(30)
def test_window_stats_counts_rates_percentiles_and_the_longest_gap():
    # completions at 10.0 .. 10.9 (100 ms apart, 1..10 ms latency), then nothing until 13.0
    done = [10.0 + i / 10 for i in range(10)] + [13.0, 20.0]
    lat_us = [1000.0 * (i + 1) for i in range(10)] + [50_000.0, 1.0]
    w = window_stats(done, lat_us, 10.0, 14.0, origin=12.0)
    assert w["from_s"] == -2.0 and w["to_s"] == 2.0 and w["seconds"] == 4.0
    assert w["writes"] == 11 and w["writes_per_s"] == 2.8   # 11 / 4, to 0.1
    assert w["p50_ms"] == 6.0 and w["p99_ms"] == 50.0 and w["max_ms"] == 50.0
    assert w["longest_gap_ms"] == pytest.approx(2100.0)     # 10.9 -> 13.0
    # end is exclusive; the window's edges count as gaps
    assert window_stats(done, lat_us, 13.0, 20.0)["writes"] == 1
    edge = window_stats(done, lat_us, 13.0, 20.0)
    assert edge["longest_gap_ms"] == pytest.approx(7000.0)  # 13.0 -> 20.0 (the end)
    empty = window_stats(done, lat_us, 15.0, 16.5)
    assert empty["writes"] == 0 and empty["writes_per_s"] == 0.0
    assert empty["p99_ms"] is None and empty["max_ms"] is None
    assert empty["longest_gap_ms"] == pytest.approx(1500.0)
    assert window_stats([], [], 1.0, 1.0)["writes_per_s"] is None


@pytest.mark.timeout(30)
def test_change_windows_are_clipped_to_the_load():
    assert change_windows(0.0, 100.0, 50.0, 53.0, 10.0) == {
        "before": (40.0, 50.0), "during": (50.0, 53.0), "after": (53.0, 63.0)}
    # a change soon after the load began, and one that outlasted the load
    assert change_windows(45.0, 100.0, 50.0, 53.0, 10.0)["before"] == (45.0, 50.0)
    assert change_windows(0.0, 55.0, 50.0, 53.0, 10.0)["after"] == (53.0, 55.0)
    assert change_windows(0.0, 52.0, 50.0, 53.0, 10.0)["after"] == (53.0, 53.0)


@pytest.mark.timeout(30)
def test_compare_windows_ratios_during_and_after_over_before():
    # before [0, 10): 10 writes/s at 2 ms; during [10, 12): 2 writes/s at 20 ms;
    # after [12, 22): 10 writes/s at 2 ms
    done, lat = [], []
    for i in range(100):
        done.append(i / 10)
        lat.append(2000.0)
    for i in range(4):
        done.append(10 + i / 2)
        lat.append(20_000.0)
    for i in range(100):
        done.append(12 + i / 10)
        lat.append(2000.0)
    w = compare_windows(done, lat, 0.0, 30.0, 10.0, 12.0, 10.0)
    assert w["before"]["writes_per_s"] == 10.0 and w["before"]["p99_ms"] == 2.0
    assert w["during"]["writes_per_s"] == 2.0 and w["during"]["p99_ms"] == 20.0
    assert (w["during"]["from_s"], w["during"]["to_s"]) == (0.0, 2.0)
    assert (w["after"]["from_s"], w["after"]["to_s"]) == (2.0, 12.0)
    assert w["during_over_before"] == {"writes_per_s": 0.2, "p99_ms": 10.0}
    assert w["after_over_before"] == {"writes_per_s": 1.0, "p99_ms": 1.0}
    # nothing before (the load had not begun): no ratio rather than a division by zero
    none = compare_windows(done, lat, 10.0, 30.0, 10.0, 12.0, 10.0)
    assert none["before"]["writes"] == 0
    assert none["during_over_before"] == {"writes_per_s": None, "p99_ms": None}


def _doc_for_report() -> dict:
    done = [i / 100 for i in range(3000)]
    lat = [1500.0] * len(done)
    add = {"node": 5, "seconds": 1.5, "learner_s": 0.4, "voter_s": 1.49, "role": "voter",
           "leader_role": "voter", "pid": 1, "error": None}
    rem = {"node": 5, "seconds": 0.8, "committed_s": 0.1, "done_s": 0.79,
           "member_after": False, "process_stopped": True, "error": None}
    return {"version": 1, "kind": "membership",
            "settings": {"nodes": 3, "clients": 8, "pipeline": 256, "payload": 10,
                         "fsync": True, "load_minutes": 0.1, "window_s": 2.0},
            "empty": {"add": {**add, "node": 4, "error": None},
                      "remove": {**rem, "node": 4}},
            "under_load": {"load_s_before_add": 6.0, "load_s": 14.0, "writes": 3000,
                           "writes_per_s": 214.3, "errors": 0,
                           "add": {**add, "windows": compare_windows(
                               done, lat, 0.0, 30.0, 6.0, 7.5, 2.0)},
                           "remove": {**rem, "windows": compare_windows(
                               done, lat, 0.0, 30.0, 11.5, 12.3, 2.0)}},
            "node_pids": [1]}


@pytest.mark.timeout(30)
def test_report_shows_both_parts_and_every_window():
    text = format_report(_doc_for_report())
    assert "empty cluster" in text and "after 0.1 load min" in text
    assert "add node 4: learner committed 0.40 s, voter 1.49 s" in text
    assert "remove node 5: removal committed 0.10 s, process stopped 0.79 s" in text
    assert sum(1 for ln in text.splitlines() if ln.split()[:2] in (["add", "before"],
                                                                   ["remove", "before"])) == 2
    assert text.count("during/before: writes/s x") == 2
    doc = _doc_for_report()
    doc["under_load"]["add"]["error"] = "node 5 not added: no leader"
    doc["under_load"]["remove"] = None
    assert "add failed after 1.50 s: node 5 not added: no leader" in format_report(doc)


@pytest.mark.timeout(30)
@pytest.mark.parametrize("argv, word", [
    (["--membership", "--load-minutes", "0"], "--load-minutes"),
    (["--membership", "--window-seconds", "-1"], "--window-seconds"),
    (["--membership", "--failover"], "--failover"),
    (["--membership", "--snapshots"], "--membership"),
])
def test_bad_membership_arguments_are_refused(argv, word, capsys):
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    assert word in capsys.readouterr().err


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return b"josefine.launch.node" in f.read()
    except OSError:
        return False


def _check_add(add: dict, node: int) -> None:
    assert add["error"] is None, add
    assert add["node"] == node
    assert add["role"] == "voter" and add["leader_role"] == "voter", add
    assert 0 < add["learner_s"] <= add["voter_s"] <= add["seconds"]
    assert add["pid"] > 0


def _check_remove(rem: dict, node: int) -> None:
    assert rem["error"] is None, rem
    assert rem["node"] == node
    assert rem["member_after"] is False and rem["process_stopped"] is True, rem
    assert 0 < rem["committed_s"] <= rem["done_s"] <= rem["seconds"]


@pytest.mark.cluster
@pytest.mark.timeout(420)
def test_tiny_membership_bench_adds_a_voter_and_removes_it_idle_and_under_load():
    out = subprocess.run(
        CLI + ["--membership", "--load-minutes", "0.1", "--window-seconds", "2",
               "--clients", "2", "--pipeline", "32", "--no-fsync", "--json", "--no-progress"],
        capture_output=True, text=True, timeout=400)
    assert out.returncode == 0, out.stderr[-3000:]
    doc = json.loads(out.stdout)
    assert doc["version"] == 1 and doc["kind"] == "membership"
    assert doc["settings"] == {"nodes": 3, "clients": 2, "pipeline": 32, "payload": 10,
                               "fsync": False, "load_minutes": 0.1, "window_s": 2.0}

    # idle: node 4 became a voter, then left and its process stopped
    _check_add(doc["empty"]["add"], 4)
    _check_remove(doc["empty"]["remove"], 4)

    # under load: node 5 (ids are never reused), the same, with writes around each change
    u = doc["under_load"]
    assert u["load_s_before_add"] == pytest.approx(6.0)
    assert u["writes"] > 0 and u["errors"] == 0
    add, rem = u["add"], u["remove"]
    _check_add(add, 5)
    _check_remove(rem, 5)
    for change in (add, rem):
        ws = change["windows"]
        assert ws["before"]["to_s"] == 0.0 and ws["during"]["from_s"] == 0.0
        assert ws["before"]["seconds"] == pytest.approx(2.0, abs=0.01)
        assert ws["during"]["seconds"] == pytest.approx(change["seconds"], abs=0.01)
        assert ws["after"]["from_s"] == ws["during"]["to_s"]
        assert ws["before"]["writes"] > 0 and ws["after"]["writes"] > 0
        assert ws["before"]["p99_ms"] > 0 and ws["during_over_before"]["writes_per_s"] \
            is not None
    # the load ended one window after the removal, not at the end of its worst-case budget
    assert rem["windows"]["after"]["seconds"] == pytest.approx(2.0, abs=0.05)
    assert u["load_s"] < 6.0 + add["seconds"] + rem["seconds"] + 3 * 2.0 + 10
    # the window after the add ends where the one before the removal begins (2 windows on)
    gap = (add["windows"]["after"]["seconds"] + rem["windows"]["before"]["seconds"])
    assert gap == pytest.approx(4.0, abs=0.5)

    # every node process it started, added ones included, is gone
    pids = doc["node_pids"]
    assert {add["pid"], doc["empty"]["add"]["pid"]} <= set(pids)
    deadline = time.monotonic() + 10
    while any(_alive(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not [p for p in pids if _alive(p)]
    assert "add node 5" in format_report(doc)


@pytest.mark.cluster
@pytest.mark.timeout(300)
def test_failover_reports_planned_stops_next_to_kills():
    """`--failover`: the unplanned figures keep their keys; "planned" holds the SIGTERM
    trials, each timed to a write committed by a node other than the stopped leader, the
    node that leader's log says it handed leadership to."""
    out = subprocess.run(
        CLI + ["--nodes", "3", "--duration", "1", "--warmup", "0.5", "--failover",
               "--trials", "2", "--json", "--no-progress"],
        capture_output=True, text=True, timeout=280)
    assert out.returncode == 0, out.stderr[-3000:]
    fo = json.loads(out.stdout)["failover"]
    assert {"trials", "samples_ms", "median_ms", "min_ms", "max_ms", "election_timeout_ms",
            "median_in_election_timeouts", "planned"} <= set(fo)
    assert fo["trials"] == 2 and len(fo["samples_ms"]) == 2
    assert all(s > 0 for s in fo["samples_ms"])
    p = fo["planned"]
    assert len(p["samples_ms"]) == 2 and all(s > 0 for s in p["samples_ms"])
    assert p["median_ms"] > 0 and p["min_ms"] <= p["median_ms"] <= p["max_ms"]
    assert len(p["stopped"]) == len(p["successors"]) == len(p["handed_to"]) == 2
    for stopped, successor, handed in zip(p["stopped"], p["successors"], p["handed_to"],
                                          strict=True):
        assert successor is not None and successor != stopped
        assert handed == successor, p
