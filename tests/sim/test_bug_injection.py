"""Proof that the simulation can fail: known protocol bugs, injected into the core by
monkeypatching in this test (never by flags in shipping code), must each be caught within
the default budget of seeds.
"""
from __future__ import annotations

import pytest

from josefine.messages import AppendResp, InstallSnapshotResp
from josefine.raft.core import RaftCore
from josefine.sim.simulation import SimConfig, Simulation, SimulationFailure

pytestmark = pytest.mark.timeout(600)

BUDGET = 500   # the default simulation run covers 500 seeds


def _first_failure(cfg: SimConfig | None = None) -> tuple[int, str]:
    for seed in range(BUDGET):
        try:
            Simulation(seed, cfg).run()
        except SimulationFailure as exc:
            return seed, str(exc)
    pytest.fail(f"the injected bug went unnoticed for {BUDGET} seeds")


def _commit_by_counting_replicas(self: RaftCore) -> None:
    """Bug: commit the quorum-replicated height even if its block is from an older term."""
    hs = [self.durable_head.height] + [self.prog[v].match.height if self.prog[v].match
                                       else -1 for v in self.peers]
    hs.sort(reverse=True)
    h = hs[self.quorum - 1]
    if h > self.commit.height:
        self._set_commit(self.tree.at(h))


def test_committing_a_previous_term_block_by_counting_replicas_is_caught(monkeypatch):
    """Raft §5.4.2 / Figure 8."""
    monkeypatch.setattr(RaftCore, "_leader_advance_commit", _commit_by_counting_replicas)
    seed, report = _first_failure()
    assert "B12" in report or "B11" in report or "B14" in report, report


def test_granting_a_vote_without_the_up_to_date_check_is_caught(monkeypatch):
    """Raft §5.4.1 election restriction (pre-vote uses the same check)."""
    monkeypatch.setattr(RaftCore, "_is_up_to_date", lambda self, head: True)
    seed, report = _first_failure()
    assert any(c in report for c in ("B14", "B11", "B15", "B17")), report


def test_acknowledging_an_append_before_its_sync_is_caught(monkeypatch):
    """docs/protocol.md A.3: an ack moved to the messages that may leave before the fsync."""
    orig = RaftCore._on_append

    def ack_early(self, m):  # noqa: ANN001
        orig(self, m)
        msgs = self._r.messages
        for a in [x for x in msgs if type(x) is AppendResp and x.success]:
            msgs.remove(a)
            self._r.eager.append(a)
    monkeypatch.setattr(RaftCore, "_on_append", ack_early)
    seed, report = _first_failure()
    assert "B4" in report or "B11" in report or "B13" in report, report


def test_forgetting_the_vote_on_restart_is_caught(monkeypatch):
    """Raft Figure 2: votedFor is persistent state."""
    orig = RaftCore.__init__

    def forgetful(self, *a, **kw):  # noqa: ANN001, ANN003
        kw["voted_for"] = None
        orig(self, *a, **kw)
    monkeypatch.setattr(RaftCore, "__init__", forgetful)
    seed, report = _first_failure()
    assert "B4" in report or "B2" in report or "B1" in report, report


def test_moving_the_head_backwards_on_a_stale_append_is_caught(monkeypatch):
    """docs/protocol.md A.7 head rule (seed defect D.5)."""
    orig = RaftCore._on_append

    def always_move(self, m):  # noqa: ANN001
        orig(self, m)
        last = self._r.messages[-1] if self._r.messages else None
        if type(last) is AppendResp and last.success and self.tree.head != last.match:
            self.tree.set_head(last.match)
            self._r.head = last.match
    monkeypatch.setattr(RaftCore, "_on_append", always_move)
    seed, report = _first_failure()
    assert any(c in report for c in ("B19", "B8", "B10")), report


def test_reads_served_without_confirming_leadership_are_caught(monkeypatch):
    """Thesis §6.4: a ReadIndex read needs a heartbeat round from a quorum; a deposed
    leader answering from its own state returns stale values (B17, linearizability)."""
    def unconfirmed(self, read_id, at_follower=True):  # noqa: ANN001
        from josefine.messages import Status
        from josefine.raft.ready import Outcome
        if self.role.name != "LEADER":
            self._r.outcomes.append(Outcome("read", read_id, Status.NOT_LEADER, self.leader))
            return
        self._r.reads.append((read_id, self.applied))
    monkeypatch.setattr(RaftCore, "_read_index", unconfirmed)
    seed, report = _first_failure(SimConfig(check_quorum=False))
    assert "B17" in report, report


def test_a_follower_serving_reads_at_its_own_commit_is_caught(monkeypatch):
    """A.10, reads at followers: a follower's own commit may lag the leader's (it is cut
    off, or simply behind), so serving a read there without the leader's read index
    returns values older than writes already acknowledged (B17, linearizability)."""
    def local_read(self, read_id):  # noqa: ANN001
        self._r.reads.append((read_id, self.applied))
    monkeypatch.setattr(RaftCore, "_forward_read", local_read)
    seed, report = _first_failure()
    assert "B17" in report, report


# Bugs in the runtime's executor, which the simulation shares with the production actors
# (josefine/runtime/executor.py): each must be caught like a bug in the core.

def test_a_planner_that_never_asks_for_sync_is_caught(monkeypatch):
    """A.3: what an ack or a vote promises must be synced. The simulated disk keeps unsynced
    writes in a volatile buffer that a crash may lose, as an OS page cache does."""
    from josefine.runtime.executor import StoreWrite, WritePlanner
    orig = WritePlanner.plan

    def never_sync(self, items):  # noqa: ANN001, ANN202
        plan = orig(self, items)
        w = plan.write
        if w is not None:
            plan.write = StoreWrite(w.hard_state, w.blocks, w.head, w.commit, w.delete, False)
        return plan
    monkeypatch.setattr(WritePlanner, "plan", never_sync)
    seed, report = _first_failure()
    assert any(c in report for c in ("B4", "B1", "B2", "B11", "B13")), report


def test_a_router_that_sends_promises_before_the_write_is_caught(monkeypatch):
    """A.3: acks and votes of a Ready that needs a sync leave only after the write. Here the
    router hands them out with the eager messages, which leave at once."""
    from josefine.runtime.executor import ReadyRouter, Route
    orig = ReadyRouter.route

    def promise_early(self, r, backlog):  # noqa: ANN001, ANN202
        routed = orig(self, r, backlog)
        if routed.route is Route.QUEUE and r.needs_sync and r.messages:
            routed.eager = list(routed.eager) + r.messages
            r.messages = []
        return routed
    monkeypatch.setattr(ReadyRouter, "route", promise_early)
    seed, report = _first_failure()
    assert any(c in report for c in ("B4", "B1", "B2", "B11", "B13")), report


def test_a_leader_counting_itself_before_its_own_write_is_caught(monkeypatch):
    """A.3/A.8: a leader counts itself toward a commit quorum only after `Persisted`. Counting
    its head instead commits blocks a quorum has not made durable (B13, checked the moment
    the committed path C grows)."""
    def count_head(self):  # noqa: ANN001, ANN202
        hs = [self.tree.head.height]
        for v in self.peers:
            m = self.prog[v].match
            hs.append(m.height if m is not None else -1)
        hs.sort(reverse=True)
        h = hs[self.quorum - 1]
        if h > self.commit.height:
            c = self.tree.at(h)
            if c.term == self.term:
                self._set_commit(c)
                self._release_deferred_reads()
    monkeypatch.setattr(RaftCore, "_leader_advance_commit", count_head)
    seed, report = _first_failure()
    assert "B13" in report, report


def test_acknowledging_an_install_before_its_sync_is_caught(monkeypatch):
    """docs/protocol.md A.14: the InstallSnapshotResp leaves only once snapshot, base and
    head are durable; moved to the messages that leave before the write, it is caught."""
    orig = RaftCore._on_install_snapshot

    def ack_early(self, m):  # noqa: ANN001
        orig(self, m)
        msgs = self._r.messages
        for a in [x for x in msgs if type(x) is InstallSnapshotResp and x.success]:
            msgs.remove(a)
            self._r.eager.append(a)
    monkeypatch.setattr(RaftCore, "_on_install_snapshot", ack_early)
    seed, report = _first_failure(SimConfig(steps=2000, snapshot_rate=0.03))
    assert "B4" in report, report


MEMBERSHIP = SimConfig(steps=2000, nodes=3, spares=2, membership_rate=0.02, snapshot_rate=0.02)


def test_two_membership_changes_at_once_are_caught(monkeypatch):
    """docs/protocol.md A.12: one change at a time. The leader forgets its uncommitted
    CONFIG block when it checks, so a second change goes on top of it."""
    orig = RaftCore._change_config

    def forgetful(self, m):  # noqa: ANN001
        saved = self._cfgs
        self._cfgs = [x for x in saved if x[0].height <= self.commit.height]
        try:
            orig(self, m)
        finally:
            added = self._cfgs[len([x for x in saved if x[0].height <= self.commit.height]):]
            self._cfgs = saved + added
    monkeypatch.setattr(RaftCore, "_change_config", forgetful)
    seed, report = _first_failure(MEMBERSHIP)
    assert "B18" in report or "B1:" in report or "B11" in report, report
