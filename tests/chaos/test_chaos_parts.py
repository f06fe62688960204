"""The harness's parts without processes: configuration, CLI usage, history encoding,
the checks on synthetic inputs, the availability metric."""
from __future__ import annotations

import json
from types import SimpleNamespace

import pytest

from josefine.chain.block import BlockKind, Command, encode_commands, genesis, make_block
from josefine.chaos import ChaosConfig
from josefine.chaos.checks import (check_commits, check_crashes, check_leaders,
                                   check_linearizable, check_same_sequence, check_writes,
                                   drop_refused, replay_effects)
from josefine.chaos.cli import main
from josefine.chaos.nemesis import partition_rules
from josefine.chaos.report import longest_unavailability, operation_counts
from josefine.chaos.workload import ChaosRecorder
from josefine.check.history import load_history
from josefine.transport.codec import packb
from josefine.transport.faults import FaultRules

pytestmark = pytest.mark.timeout(60)


def test_config_validates(tmp_path):
    with pytest.raises(ValueError, match="unknown fault"):
        ChaosConfig(out=tmp_path, faults=["kill", "meteor"])
    with pytest.raises(ValueError, match="nodes"):
        ChaosConfig(out=tmp_path, nodes=0)
    assert ChaosConfig(out=tmp_path, faults=["pause", " "]).faults == ("pause",)


def test_cli_usage_errors_exit_2(tmp_path, capsys):
    assert main(["--faults", "kill,meteor", "--out", str(tmp_path)]) == 2
    assert "meteor" in capsys.readouterr().err
    assert main(["--nodes", "x"]) == 2
    assert main(["--help"]) == 0


def test_refused_cas_is_info_in_the_file_and_dropped_for_the_check(tmp_path):
    path = tmp_path / "h.jsonl"
    with ChaosRecorder(path) as rec:
        a = rec.invoke(1, "cas", "k", ["x", "y"])
        rec.complete(a, "info", refused=True, error="UnavailableError")
        b = rec.invoke(2, "read", "k")
        rec.complete(b, "ok", None)
        c = rec.invoke(1, "cas", "k", [None, "z"])
        rec.complete(c, "fail", error="CompareFailed")
    hist = load_history(path)
    assert hist[1]["type"] == "info" and hist[1]["refused"] is True
    assert "refused" not in hist[0]
    kept = drop_refused(hist)
    assert [r["process"] for r in kept] == [2, 2, 1, 1]
    counts = operation_counts(hist)
    assert counts["cas"] == {"ok": 0, "fail": 1, "info": 0, "refused": 1}
    out, _ = check_linearizable(hist, time_limit=10)
    # the cas expecting None failed its comparison although the register was empty: a
    # read of None came first and nothing wrote in between
    assert not out.passed


def _chain(cluster: str, ops: list[tuple[str, int, list]]) -> list:
    g = genesis(cluster)
    path = [g]
    for cid, seq, op in ops:
        b = make_block(path[-1], 1, BlockKind.NORMAL, encode_commands([Command(cid, seq, packb(op))]))
        path.append(b)
    return path


def test_replay_applies_session_rule_and_cas_semantics():
    path = _chain("c", [("a", 1, ["put", "k", "v1"]), ("a", 1, ["put", "k", "v1"]),
                        ("b", 1, ["cas", "k", "v1", "v2"]), ("b", 2, ["cas", "k", "v1", "v3"]),
                        ("a", 0, ["put", "k", "old"])])
    effective, present = replay_effects(path)
    assert effective == {("k", "v1"), ("k", "v2")}
    assert ("k", "v3") in present and ("k", "old") in present


def _hist(*ops):
    out = []
    for proc, f, key, value, typ, extra in ops:
        out.append({"process": proc, "type": "invoke", "f": f, "key": key, "value": value})
        out.append({"process": proc, "type": typ, "f": f, "key": key, "value": value, **extra})
    return out


def test_check_writes_finds_lost_and_phantom_writes():
    path = _chain("c", [("a", 1, ["put", "k", "v1"]), ("b", 1, ["cas", "k", "zz", "v9"])])
    good = _hist((1, "write", "k", "v1", "ok", {}), (2, "cas", "k", ["zz", "v9"], "fail", {}))
    assert check_writes(good, {1: path}).passed
    lost = _hist((1, "write", "k", "v2", "ok", {}))
    assert not check_writes(lost, {1: path}).passed
    phantom = _hist((1, "write", "k", "v1", "fail", {}))
    assert not check_writes(phantom, {1: path}).passed
    refused = _hist((2, "cas", "k", ["zz", "v9"], "info", {"refused": True}))
    assert not check_writes(refused, {1: path}).passed


def test_same_sequence_detects_divergence():
    a = _chain("c", [("a", 1, ["put", "k", "v1"])])
    b = _chain("c", [("a", 1, ["put", "k", "OTHER"])])
    assert check_same_sequence({1: a, 2: a[:1]}, []).passed
    out = check_same_sequence({1: a, 2: b}, [])
    assert not out.passed and "height 1" in out.details[0]


def _sample(node, pid, t, commit, role="follower", term=1):
    return {"node": node, "pid": pid, "t": t, "commit": commit, "role": role, "term": term}


def test_commit_check_within_a_process_and_across_restarts():
    path = _chain("c", [("a", i, ["put", "k", f"v{i}"]) for i in range(1, 5)])
    ok = [_sample(1, 10, 0.1, [1, 2]), _sample(1, 10, 0.2, [1, 3]),
          _sample(1, 11, 0.3, [1, 1]),  # restarted: the lazy marker lags, allowed
          _sample(1, 11, 0.4, [1, 4])]
    assert check_commits(ok, {1: path}).passed
    back = ok[:2] + [_sample(1, 10, 0.3, [1, 1])]
    assert "moved from" in check_commits(back, {1: path}).details[0]
    lagging_end = ok[:3]
    assert not check_commits(lagging_end, {1: path}).passed
    conflict = [_sample(1, 10, 0.1, [1, 2]), _sample(2, 20, 0.1, [2, 2])]
    assert not check_commits(conflict, {1: path}).passed


def test_leader_check_uses_samples_and_logs(tmp_path):
    log = tmp_path / "n2.log"
    log.write_text("x node2 INFO josefine.actors.role: node 2: became leader of term 3\n")
    samples = [_sample(1, 1, 0.1, [0, 0], role="leader", term=3)]
    out = check_leaders(samples, {2: log})
    assert not out.passed and "term 3: leaders [1, 2]" in out.details[0]
    assert check_leaders(samples, {}).passed


def test_crash_check(tmp_path):
    log = tmp_path / "n1.log"
    log.write_text("ok\n")
    killed = SimpleNamespace(node_id=1, exit_code=-9)
    assert check_crashes([killed], {1: log}, 1).passed
    crashed = SimpleNamespace(node_id=1, exit_code=3)
    assert not check_crashes([crashed], {1: log}, 0).passed
    log.write_text("node1 CRITICAL josefine.node: node 1: fatal error in role\n")
    assert not check_crashes([], {1: log}, 0).passed


def test_partition_rules_load_into_fault_rules():
    rules = partition_rules([1, 2, 3], {(1, 2), (1, 3), (3, 1)})
    assert rules[1] == {"blocked_out": [2, 3], "blocked_in": [3], "links": {}}
    assert rules[2] == {"blocked_out": [], "blocked_in": [1], "links": {}}
    fr = FaultRules.from_dict(json.loads(json.dumps(rules[1])))
    assert fr.outbound(2) is None and fr.inbound(3) is False and fr.inbound(2) is True


def test_longest_unavailability_names_the_overlapping_fault():
    s = 10**9
    hist = [{"process": 1, "type": "ok", "time": t * s} for t in (1, 2, 7, 8)]
    faults = [{"id": 1, "kind": "kill", "variant": "leader", "nodes": [2], "leader": 2,
               "start": 2.5, "end": 4.0},
              {"id": 2, "kind": "pause", "variant": "random", "nodes": [1], "leader": 2,
               "start": 8.5, "end": 9.0}]
    u = longest_unavailability(hist, 0, 10 * s, faults)
    assert (u["start"], u["end"], u["duration"]) == (2.0, 7.0, 5.0)
    assert len(u["causes"]) == 1 and "#1 kill" in u["causes"][0]


def _compacted(path: list, at: int) -> list:
    """The path as a node that compacted its chain up to height `at` holds it."""
    from josefine.chain.block import base_header
    return [base_header(path[at].id, path[at].digest)] + path[at + 1:]


def test_same_sequence_compares_only_heights_both_nodes_hold():
    a = _chain("c", [("a", i, ["put", "k", f"v{i}"]) for i in range(1, 6)])
    b = _chain("c", [("a", i, ["put", "k", f"v{i}"]) for i in range(1, 4)]
               + [("a", 4, ["put", "k", "OTHER"])])
    out = check_same_sequence({1: _compacted(a, 3), 2: a}, [])
    assert out.passed and "(1,3)..(1,5)" in out.summary
    bad = check_same_sequence({1: _compacted(a, 2), 2: b}, [])
    assert not bad.passed and "height 4" in bad.details[0]


def test_check_writes_replays_a_compacted_path_from_its_snapshot_state():
    from josefine.chaos.checks import BaseState
    ops = [("a", 1, ["put", "k", "v1"]), ("a", 2, ["put", "k", "v2"]),
           ("b", 1, ["put", "j", "w1"]), ("a", 3, ["put", "k", "v3"])]
    path = _compacted(_chain("c", ops), 3)
    state = BaseState({"k": "v2", "j": "w1"}, {"a": 2, "b": 1})
    hist = _hist((1, "write", "k", "v2", "ok", {}), (2, "write", "j", "w1", "ok", {}),
                 (1, "write", "k", "v3", "ok", {}), (1, "write", "k", "v1", "ok", {}))
    out = check_writes(hist, {1: path}, {1: state})
    assert out.passed, out.details
    assert "1 acknowledged writes were overwritten below the base" in out.summary
    lost_after = _hist((1, "write", "k", "v4", "ok", {}))
    assert check_writes(lost_after, {1: path}, {1: state}).passed, \
        "not on the chain after the base: it may have been overwritten below it"
    phantom = _hist((1, "write", "k", "v3", "fail", {}))
    assert not check_writes(phantom, {1: path}, {1: state}).passed
    assert not check_writes(hist, {1: path}, {}).passed, "a compacted path needs its state"
    # a replayed duplicate (same client, seq at or below its session) takes no effect
    dup = _compacted(_chain("c", ops + [("a", 2, ["put", "k", "again"])]), 3)
    eff, present = replay_effects(dup[1:], state)
    assert ("k", "again") in present and ("k", "again") not in eff
