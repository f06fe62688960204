"""The membership fault without processes: the choice of a change (voter bounds, targets),
the nemesis's own membership turns against an in-memory launcher (bounds kept over many
turns, removed nodes never targeted again by any fault, refusals retried, failures
recorded and reported), the sampler following the node set, convergence over the
leader's members, and the configuration errors."""
from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import pytest

from josefine.chaos import ChaosConfig, harness
from josefine.chaos.cli import main
from josefine.chaos.members import MEMBERSHIP_OPS, MemberView, allowed_ops, choose_change
from josefine.chaos.nemesis import Nemesis
from josefine.chaos.report import describe_membership_change, membership_line
from josefine.chaos.sampler import StatusSampler
from josefine.chaos.workload import ChaosRecorder
from josefine.check.history import load_history
from josefine.launch.cluster import LaunchError

pytestmark = pytest.mark.timeout(60)


# ---------------------------------------------------------------- the choice


@pytest.mark.parametrize("voters", [3, 4, 5])
def test_allowed_ops_keep_3_to_5_voters_at_every_step(voters):
    ops = allowed_ops(voters, 3, 5)
    after = {"add": [voters + 1], "remove": [voters - 1], "replace": [voters - 1, voters]}
    for op in ops:
        assert all(3 <= v <= 5 for v in after[op]), (voters, op)
    # and everything the bounds allow is offered
    assert set(ops) == {op for op in MEMBERSHIP_OPS if all(3 <= v <= 5 for v in after[op])}
    assert ops   # a change is always possible within 3..5


def test_no_change_when_the_bounds_leave_none():
    with pytest.raises(ValueError, match="no membership change"):
        choose_change(random.Random(1), [1, 2, 3], [], 1, 3, 3)


def test_choice_targets_only_voters_and_the_leader_about_half_of_the_time():
    picked_leader = 0
    for seed in range(400):
        rng = random.Random(seed)
        voters = sorted(rng.sample(range(1, 12), rng.randint(3, 5)))
        leader = rng.choice(voters + [None, 99])   # 99: a leader outside (stale sample)
        c = choose_change(rng, voters, [], leader, 3, 5)
        assert c.op in allowed_ops(len(voters), 3, 5)
        if c.op == "add":
            assert c.target is None
        else:
            assert c.target in voters
            picked_leader += c.mode == "leader"
            if c.mode == "leader":
                assert c.target == leader
    assert 60 < picked_leader < 250


def test_wanted_op_is_taken_when_allowed_else_a_seeded_choice():
    rng = random.Random(3)
    assert choose_change(rng, [1, 2, 3, 4], [], 1, 3, 5, "replace").op == "replace"
    # 3 voters: no remove or replace (a replace passes through 2)
    assert choose_change(rng, [1, 2, 3], [], 1, 3, 5, "remove").op == "add"
    assert choose_change(rng, [1, 2, 3, 4, 5], [], 1, 3, 5, "add").op in ("remove", "replace")
    # a learner left over is promoted before anything else
    c = choose_change(rng, [1, 2, 3], [7], 1, 3, 5, "add")
    assert (c.op, c.target) == ("promote", 7)


# ---------------------------------------------------------------- the nemesis's turns


class FakeLauncher:
    """The membership surface of `Launcher`, in memory: ids are never reused, a removed
    node is gone; `refuse` makes the next calls fail with the given messages."""

    insecure = True
    cluster_id = "fake"

    def __init__(self, tmp: Path, n: int = 3) -> None:
        self.tmp = tmp
        self.roles = {i: "voter" for i in range(1, n + 1)}
        self.ever = set(self.roles)
        self.removed: set[int] = set()
        self.refuse: list[str] = []
        self.calls: list[tuple[str, Any]] = []
        self.signals: list[tuple[int, str]] = []
        for i in self.roles:
            self.log_path(i).write_text(f"node {i}: became leader of term {i}\n")

    @property
    def node_ids(self) -> list[int]:
        return sorted(self.roles)

    def address(self, i: int) -> str:
        if i not in self.roles:
            raise LaunchError(f"no node {i!r}")
        return f"tcp://127.0.0.1:{40000 + i}"

    def log_path(self, i: int) -> Path:
        if i not in self.ever:
            raise LaunchError(f"no node {i!r}")
        return self.tmp / f"node-{i}.log"

    def members(self) -> list[dict[str, Any]]:
        return [{"id": i, "role": r} for i, r in sorted(self.roles.items())]

    def _maybe_refuse(self) -> None:
        if self.refuse:
            raise LaunchError(self.refuse.pop(0))

    def add_member(self, timeout: float = 60.0) -> dict[str, Any]:
        self.calls.append(("add", None))
        self._maybe_refuse()
        new = max(self.ever) + 1
        self.ever.add(new)
        self.roles[new] = "voter"
        self.log_path(new).write_text("")
        return {"id": new, "members": self.members(), "voter_s": 0.01}

    def remove_member(self, node: int, *, wipe: bool = False,
                      timeout: float = 30.0) -> dict[str, Any]:
        self.calls.append(("remove", node))
        assert node in self.roles, f"removing non-member {node}"
        self._maybe_refuse()
        del self.roles[node]
        self.removed.add(node)
        if wipe:
            self.log_path(node).unlink()
        return {"id": node, "members": self.members()}

    def promote_member(self, node: int, timeout: float = 30.0) -> list[dict[str, Any]]:
        self.calls.append(("promote", node))
        self._maybe_refuse()
        self.roles[node] = "voter"
        return self.members()

    # the other faults' surface
    def pid(self, i: int) -> int:
        assert i in self.roles, f"fault on non-member {i}"
        return 1000 + i

    def kill(self, i: int, sig: int = 9) -> bool:
        assert i in self.roles, f"fault on non-member {i}"
        self.signals.append((i, "kill"))
        return True

    def stop_node(self, i: int, grace_s: float = 5.0) -> None:
        assert i in self.roles

    def start_node(self, i: int) -> int:
        assert i in self.roles, f"restart of non-member {i}"
        return 1000 + i

    def pause(self, i: int) -> bool:
        assert i in self.roles, f"fault on non-member {i}"
        self.signals.append((i, "pause"))
        return True

    def resume(self, i: int) -> bool:
        assert i in self.roles, f"resume of non-member {i}"
        return True


class FakeSampler:
    """Every member serves; the leader is the lowest voter (or `leader`)."""

    def __init__(self, launcher: FakeLauncher) -> None:
        self.launcher = launcher
        self.nodes: set[int] = set(launcher.roles)
        self.leader_override: int | None = None
        self.no_leader = False

    def snapshot(self) -> dict[int, Any]:
        return {i: {"t": float("inf")} for i in self.nodes}

    def leader(self) -> int | None:
        if self.no_leader:
            return None
        voters = [i for i, r in self.launcher.roles.items() if r == "voter"]
        return self.leader_override if self.leader_override in voters else min(voters)

    def members(self) -> tuple[list[int], list[int]] | None:
        if self.no_leader:
            return None
        r = self.launcher.roles
        return sorted(i for i in r if r[i] == "voter"), sorted(i for i in r if r[i] != "voter")

    def set_nodes(self, addresses: dict[int, str], credentials: Any = None) -> None:
        self.nodes = set(addresses)


def _nemesis(tmp_path: Path, **cfg: Any) -> tuple[Nemesis, FakeLauncher, FakeSampler]:
    launcher = FakeLauncher(tmp_path)
    sampler = FakeSampler(launcher)
    recorder = ChaosRecorder(tmp_path / "history.jsonl")
    config = ChaosConfig(out=tmp_path, nodes=3, faults=["membership"], **cfg)
    view = MemberView(launcher)  # type: ignore[arg-type]
    nem = Nemesis(launcher, sampler, recorder, config, view=view)  # type: ignore[arg-type]
    nem._admin = lambda *a, **k: True  # type: ignore[method-assign]  # no sockets here
    return nem, launcher, sampler


def test_many_membership_turns_keep_the_bounds_and_never_touch_a_departed_node(tmp_path):
    nem, launcher, sampler = _nemesis(tmp_path, seed=5)
    ops = set()
    for turn in range(150):
        if turn % 7 == 3:   # the leader moves around, so "the leader on purpose" varies
            sampler.leader_override = random.Random(turn).choice(launcher.node_ids)
        before = set(launcher.roles)
        nem._membership(0.0)
        f = nem.faults[-1]
        assert not f.get("error"), f
        voters = [i for i, r in launcher.roles.items() if r == "voter"]
        assert 3 <= len(voters) <= 5, (turn, f)
        assert set(f.get("removed", [])) <= before, f      # only members were removed
        assert not set(f.get("added", [])) & launcher.removed
        ops.add(f["variant"])
        # every other fault now picks among the current members only
        for _ in range(5):
            targets, _, _ = nem._targets()
            assert set(targets) <= set(launcher.roles), (targets, launcher.roles)
        nem._pause(0.0)
        nem._kill(0.0)
        nem._partition(0.0)
        assert sampler.nodes == set(launcher.roles)          # the sampler follows
        assert nem.view.ids() == launcher.node_ids
    assert ops == {"add", "remove", "replace"}
    assert launcher.removed and not launcher.removed & set(launcher.roles)
    # (the fake launcher asserts that each kill, pause and restart names a member)
    assert {i for i, _ in launcher.signals} - {1, 2, 3}   # added nodes were targeted too
    # every change left nemesis start/end lines with mechanism "membership"
    nem.recorder.close()
    lines = [r["value"] for r in load_history(tmp_path / "history.jsonl")
             if r["process"] == "nemesis" and r["f"] == "membership"]
    assert len(lines) == 2 * 150
    assert all(v["mechanism"] == "membership" for v in lines)
    assert {v["phase"] for v in lines} == {"start", "end"}
    # departed nodes keep their logs (a wiped one's is copied out before its dir goes)
    assert set(nem.departed) == launcher.removed
    assert all(p.is_file() for p in nem.departed.values())
    wiped = [i for f in nem.faults if f["variant"] == "replace" for i in f["removed"]]
    assert wiped and all(nem.departed[i].parent.name == "departed" for i in wiped)
    first = [i for i in wiped if i <= 3]   # nodes 1..3 had a line in their log
    assert all(nem.departed[i].read_text().startswith(f"node {i}: became leader")
               for i in first)


def test_forced_order_add_replace_remove(tmp_path):
    nem, launcher, _ = _nemesis(tmp_path, membership_ops=("add", "replace", "remove"))
    for _ in range(3):
        nem._membership(0.0)
    assert [f["variant"] for f in nem.faults] == ["add", "replace", "remove"]
    add, rep, rem = nem.faults
    assert add["added"] == [4] and add["voters_after"] == [1, 2, 3, 4]
    assert len(rep["removed"]) == 1 and rep["added"] == [5]
    assert len(rep["voters_after"]) == 4 and rep["removed"][0] not in rep["voters_after"]
    assert len(rem["voters_after"]) == 3
    assert ("remove", rep["removed"][0]) in launcher.calls


def test_a_refusal_without_a_leader_is_retried_and_a_definite_one_is_reported(tmp_path):
    nem, launcher, _ = _nemesis(tmp_path, membership_ops=("add",))
    launcher.refuse = ["no node of the cluster is leading right now; retry in a moment"]
    nem._membership(0.0)
    f = nem.faults[-1]
    assert f["added"] == [4] and f["retries"] == 1 and "leading" in f["retried_on"]
    assert not f.get("error") and not nem.errors

    launcher.refuse = ["node 5 not added: address tcp://x is already node 2's"]
    nem._membership(0.0)
    f = nem.faults[-1]
    assert f["error"].startswith("node 5 not added") and not f.get("added")
    assert f["voters_after"] == [1, 2, 3, 4] and f["end"] is not None
    assert any("failed: node 5 not added" in e for e in nem.errors)
    assert "FAILED: node 5 not added" in describe_membership_change(f)
    nem.recorder.close()
    end = [r["value"] for r in load_history(tmp_path / "history.jsonl")
           if r["process"] == "nemesis" and r["value"].get("phase") == "end"][-1]
    assert end["error"].startswith("node 5 not added") and end["mechanism"] == "membership"


def test_refusals_until_the_deadline_fail_without_changing_anything(tmp_path):
    nem, launcher, _ = _nemesis(tmp_path, membership_ops=("remove",), member_timeout=1.5)
    launcher.roles[4] = "voter"   # 4 voters, so a remove is allowed
    nem.view.refresh()
    launcher.refuse = ["node 1 not removed: another membership change (block (2,9)) is not "
                       "committed yet"] * 100
    nem._membership(0.0)
    f = nem.faults[-1]
    assert "deadline" in f["error"] and f["retries"] >= 1
    assert len(launcher.roles) == 4 and not launcher.removed
    assert f["members_after"] == [1, 2, 3, 4]


def test_no_leader_means_a_skipped_change_that_is_reported(tmp_path):
    nem, launcher, sampler = _nemesis(tmp_path, member_timeout=0.5)
    sampler.no_leader = True
    nem._membership(0.0)
    f = nem.faults[-1]
    assert f["variant"] == "skipped" and "no leader" in f["error"]
    assert launcher.calls == [] and nem.errors


def test_membership_line_and_fault_line():
    f = {"id": 3, "variant": "replace", "leader": 2, "picked": "leader", "removed": [2],
         "added": [5], "voters_before": [1, 2, 3, 4], "voters_after": [1, 3, 4, 5],
         "seconds": 1.27, "retries": 1}
    text = describe_membership_change(f)
    assert "removed 2 (wiped, the leader on purpose); added 5" in text
    assert "[1, 2, 3, 4] -> [1, 3, 4, 5]" in text and "1 retry" in text
    line = membership_line({"changes": 3, "by_op": {"add": 1, "remove": 1, "replace": 1},
                            "failed": [], "initial": [1, 2, 3], "final": [1, 3, 5],
                            "departed": [2, 4]})
    assert line.startswith("membership: 3 change(s) (add 1, remove 1, replace 1; 0 failed)")
    assert "left (stores not compared): [2, 4]" in line


# ---------------------------------------------------------------- sampler, convergence


def test_sampler_follows_the_node_set(tmp_path):
    # nothing listens on these ports: the polls time out, which is all this needs
    s = StatusSampler({1: "tcp://127.0.0.1:9", 2: "tcp://127.0.0.1:10"}, "c",
                      tmp_path / "status.jsonl", interval=0.05, timeout=0.05)
    s.start()
    try:
        added, removed = s.set_nodes({2: "tcp://127.0.0.1:10", 3: "tcp://127.0.0.1:11"})
        assert (added, removed) == ([3], [1])
        assert sorted(s.snapshot()) == [2, 3]
        s._record(1, {"role": "leader", "term": 9})   # a late answer of a departed node
        assert 1 not in s.snapshot() and not s.samples
        s._record(3, {"role": "leader", "term": 2, "members": [
            {"id": 2, "role": "voter"}, {"id": 3, "role": "voter"}, {"id": 4, "role": "learner"}]})
        assert s.leader() == 3 and s.members() == ([2, 3], [4])
    finally:
        s.stop()


def _st(applied: int, role: str = "follower", members: list[int] | None = None) -> dict:
    st: dict[str, Any] = {"role": role, "applied": [1, applied], "commit": [1, applied],
                          "sm_digest": f"d{applied}", "term": 1}
    if members is not None:
        st["members"] = [{"id": i, "address": "", "role": "voter"} for i in members]
    return st


def test_convergence_compares_the_leaders_members_only(monkeypatch):
    polls = {1: _st(50, "leader", [1, 3]), 2: _st(20), 3: _st(50)}
    monkeypatch.setattr(harness, "poll_status", lambda *a, **k: dict(polls))
    ok, st, _ = harness.wait_converged({1: "a", 2: "b", 3: "c"}, "c", timeout=5)
    assert ok and sorted(st) == [1, 3]   # node 2 left the cluster: not a replica any more
    polls[1] = _st(50, "leader", [1, 3, 5])   # a member nobody runs never answers
    ok, st, _ = harness.wait_converged({1: "a", 2: "b", 3: "c"}, "c", timeout=1)
    assert not ok and st[5] is None


# ---------------------------------------------------------------- configuration


def test_membership_config_errors(tmp_path):
    assert "membership" in ChaosConfig(out=tmp_path, nodes=3, faults=["membership"]).faults
    with pytest.raises(ValueError, match="'membership' and 'powerloss' cannot be combined"):
        ChaosConfig(out=tmp_path, nodes=3, faults=["membership", "powerloss"])
    with pytest.raises(ValueError, match="nodes must lie in that range"):
        ChaosConfig(out=tmp_path, nodes=2, faults=["membership"])
    with pytest.raises(ValueError, match="nodes must lie in that range"):
        ChaosConfig(out=tmp_path, nodes=6, faults=["membership"])
    assert ChaosConfig(out=tmp_path, nodes=6, faults=["membership"], max_voters=7).nodes == 6
    with pytest.raises(ValueError, match="min_voters < max_voters"):
        ChaosConfig(out=tmp_path, nodes=3, faults=["membership"], min_voters=2)
    with pytest.raises(ValueError, match="netns"):
        ChaosConfig(out=tmp_path, nodes=3, faults=["membership"], netns=True)
    with pytest.raises(ValueError, match="membership_ops"):
        ChaosConfig(out=tmp_path, nodes=3, faults=["membership"], membership_ops=["grow"])
    # other kinds are unaffected by the membership settings
    assert ChaosConfig(out=tmp_path, nodes=1, faults=["kill"]).nodes == 1


def test_cli_membership_usage_errors(tmp_path, capsys):
    assert main(["--faults", "membership,powerloss", "--nodes", "3", "--out",
                 str(tmp_path)]) == 2
    assert "cannot be combined" in capsys.readouterr().err
    assert main(["--faults", "kill,membership", "--nodes", "5", "--max-voters", "4",
                 "--out", str(tmp_path)]) == 2
    assert "3..4" in capsys.readouterr().err
    main(["--help"])
    assert "membership" in capsys.readouterr().out


def test_a_failed_change_is_reported_but_fails_no_check(tmp_path):
    from josefine.chaos.checks import CheckOutcome
    from josefine.chaos.report import ChaosReport
    cfg = ChaosConfig(out=tmp_path, nodes=3, faults=["kill", "membership"])
    report = ChaosReport(config=cfg.describe(), out_dir=str(tmp_path))
    report.checks.append(CheckOutcome("converged", True, "ok"))
    faults = [{"id": 1, "kind": "membership", "variant": "add", "nodes": [], "leader": 1,
               "start": 1.0, "end": 2.0, "voters_before": [1, 2, 3],
               "voters_after": [1, 2, 3], "seconds": 30.0, "retries": 40,
               "error": "no node of the cluster is leading right now; retry in a moment "
                        "(retried until the 30 s deadline)"},
              {"id": 2, "kind": "membership", "variant": "remove", "nodes": [2], "leader": 1,
               "picked": "random", "start": 3.0, "end": 3.1, "removed": [2],
               "voters_before": [1, 2, 3, 4], "voters_after": [1, 3, 4], "seconds": 0.1}]
    report.faults = faults
    harness._membership_summary(cfg, report, faults, [1, 3, 4], [1, 3, 4],
                                {2: tmp_path / "node-2.log"}, None)
    assert report.passed   # a failed change is a finding about the change, not a check
    text = report.format()
    assert "membership: 2 change(s) (remove 1; 1 failed)" in text
    assert "FAILED: no node of the cluster is leading" in text
    assert report.to_dict()["membership"]["failed"][0]["op"] == "add"
    # the launcher and the cluster disagreeing is said out loud
    harness._membership_summary(cfg, report, faults, [1, 3], [1, 3, 4], {}, None)
    assert report.membership["mismatch"] == [4]
    assert "MISMATCH" in report.format() and any("differ" in n for n in report.notes)
