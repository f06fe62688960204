"""The fault schedule of a chaos run (the "nemesis").

One thread, one fault at a time: a quiet gap, then a fault, held for a while, then healed.
The enabled kinds take turns (each once per round, in a seeded order), so any run of a few
faults mixes them. Choices come from `random.Random`s seeded by the run's seed; which node
is the leader at that moment is a fact of the run, not of the seed.

Faults (at most a minority of the nodes is ever down or paused, except a whole-cluster
power loss):

* kill       — SIGKILL one node or a minority (the leader on purpose half of the time),
               keep it down for the hold time, restart it from its disk;
* pause      — SIGSTOP one node or a minority (again often the leader), then SIGCONT;
* partition  — through each node's transport fault rules (admin "faults"), or, for a
               cluster launched with netns, by the kernel (`netns_faults`):
               isolate-leader, split (random minority / majority), bridge (two sides that
               cannot talk, one node talking to both), one-way (a node, often the leader,
               that can only send or only receive);
* powerloss  — SIGKILL and a power cut of the node's disk (a FUSE layer that then drops
               every write not yet fsynced, docs/powerloss.md), for a minority or, half
               of the time, the whole cluster at once; restarted from what survived;
* membership — one membership change through the launcher (`josefine.chaos.members`):
               add a fresh node (learner, then voter), remove a voter (often the leader),
               or replace one (removed with its directory wiped, then a fresh node under a
               new id); the voter count stays within ``min_voters..max_voters``. A change
               refused while the cluster has no leader is retried until
               ``member_timeout``; one that still fails is recorded (``error``) and
               reported, and the run goes on: a failed change is a finding about the
               change, not a failed check.

Every fault records its ``mechanism`` (signal, transport fault rules, kernel, or
"membership").

Every fault picks its targets among the current members (`MemberView`): after a
membership change the nemesis refreshes the view and the status sampler, so a removed node
is never targeted again and an added one can be. A node that left keeps its log for the
checks (`departed`; a wiped node's log is copied out before its directory goes).

No fault starts before every node answers status polls again: a restarted node can take
seconds to load its chain, and without this wait the next kill could take a majority down.
Kill and pause faults record ``serving_after``: seconds from the heal until all nodes
answered again.

Every fault is written to the history as two nemesis lines (phase "start" / "end", with
the wall-clock time for matching node logs).
"""
from __future__ import annotations

import random
import signal
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from josefine.chaos.config import ChaosConfig
from josefine.chaos.members import MemberView, choose_change
from josefine.chaos.netns_faults import KernelPartitioner
from josefine.chaos.powerfs import PowerLossFS
from josefine.chaos.sampler import StatusSampler
from josefine.check.history import HistoryRecorder
from josefine.client import admin_request
from josefine.launch.cluster import LaunchError, Launcher

__all__ = ["Nemesis", "partition_rules"]

_RETRIABLE = ("retry in a moment", "is in progress", "not committed yet",
              "no node of the cluster is leading", "not confirmed within", "timed out")
"""Parts of launcher errors after which nothing changed and the same change may be tried
again (no leader, another change or a transfer in flight, no answer in time)."""

Cut = set[tuple[int, int]]
"""Directed links (src, dst) whose messages are dropped."""


def partition_rules(nodes: list[int], cut: Cut) -> dict[int, dict[str, Any]]:
    """Per-node FaultRules dicts that drop every link in `cut` (at both of its ends)."""
    rules: dict[int, dict[str, Any]] = {}
    for i in nodes:
        out = sorted(d for s, d in cut if s == i)
        inn = sorted(s for s, d in cut if d == i)
        if out or inn:
            rules[i] = {"blocked_out": out, "blocked_in": inn, "links": {}}
    return rules


def _between(a: list[int], b: list[int]) -> Cut:
    return {(x, y) for x in a for y in b} | {(y, x) for x in a for y in b}


class Nemesis:
    """Runs the fault schedule in a thread; `stop()` ends it and heals everything."""

    def __init__(self, launcher: Launcher, sampler: StatusSampler, recorder: HistoryRecorder,
                 cfg: ChaosConfig, partitioner: KernelPartitioner | None = None,
                 power: Mapping[int, PowerLossFS] | None = None,
                 view: MemberView | None = None) -> None:
        self.launcher = launcher
        self.view = view if view is not None else MemberView(launcher)
        """The current members; refreshed after every membership change."""
        self.departed: dict[int, Path] = {}
        """Nodes that left the cluster during the run: their logs (kept for the checks)."""
        self.power = dict(power or {})
        """Each node's power-loss filesystem (its data dir), for the powerloss fault."""
        self.partitioner = partitioner
        """Makes partitions in the kernel instead of the transport, when given."""
        self.sampler = sampler
        self.recorder = recorder
        self.cfg = cfg
        # Separate streams: which kinds come when, and for how long, follow from the seed
        # alone; target choices (self.rng) may also depend on who leads at that moment.
        self.kind_rng = random.Random(f"{cfg.seed}/nemesis/kinds")
        self.timing = random.Random(f"{cfg.seed}/nemesis/timing")
        self.rng = random.Random(f"{cfg.seed}/nemesis/targets")
        self.member_rng = random.Random(f"{cfg.seed}/nemesis/members")
        self._member_turns = 0
        self.faults: list[dict[str, Any]] = []
        self.errors: list[str] = []
        self._stop = threading.Event()
        self._stopped = False
        self._thread = threading.Thread(target=self._run, name="chaos-nemesis", daemon=True)
        self._down: set[int] = set()
        self._paused: set[int] = set()
        self._lock = threading.Lock()

    @property
    def nodes(self) -> list[int]:
        """The current members: the only nodes a fault may target."""
        return self.view.ids()

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> None:
        if self.cfg.faults:
            self._thread.start()

    def stop(self) -> None:
        """End the schedule (the current fault is healed at once) and heal everything."""
        if self._stopped:
            return
        self._stopped = True
        self._stop.set()
        if self._thread.is_alive():
            # a membership change in flight is finished, not abandoned half-way
            self._thread.join(30 + (2 * self.cfg.member_timeout
                                    if "membership" in self.cfg.faults else 0))
        if self._thread.is_alive():
            self.errors.append("the fault schedule did not stop in time")
        self.heal_all()

    def _run(self) -> None:
        kinds = list(self.cfg.faults)
        if len(self.nodes) < 2 and "partition" in kinds:
            kinds.remove("partition")
        order: list[str] = []
        while kinds and not self._stop.wait(self.timing.uniform(*self.cfg.fault_gap)):
            # A restarted node may need seconds to load its chain before it serves: start
            # no fault until every node answers again, or "a minority down" would be a lie.
            if not self._wait_all_serving(time.monotonic()):
                break
            if not order:  # every kind once per round, in a seeded order
                order = self.kind_rng.sample(kinds, len(kinds))
            kind = order.pop(0)
            hold = self.timing.uniform(*self.cfg.fault_hold)
            try:
                getattr(self, f"_{kind}")(hold)
            except Exception as exc:  # noqa: BLE001 - a failed fault must not end the run
                self.errors.append(f"{kind}: {type(exc).__name__}: {exc}")
                self.heal_all()

    # ------------------------------------------------------------------ helpers
    def _wait_all_serving(self, since: float) -> bool:
        """Block until every node has answered a status poll after `since` (False: stopped)."""
        while not self._stop.is_set():
            snap = self.sampler.snapshot()
            if all(smp is not None and smp["t"] > since for smp in snap.values()):
                return True
            self._stop.wait(0.1)
        return False

    def _note_recovery(self, fault: dict[str, Any], healed: float) -> None:
        """Record how long after the heal every node answered again (restart / resume cost)."""
        if self._wait_all_serving(healed):
            fault["serving_after"] = round(time.monotonic() - healed, 2)

    def _leader(self) -> int | None:
        return self.sampler.leader()

    def _targets(self) -> tuple[list[int], str, int | None]:
        """A minority of nodes; with probability 1/2 it includes the current leader."""
        n = len(self.nodes)
        k = self.rng.randint(1, max(1, (n - 1) // 2))
        leader = self._leader()
        mode = self.rng.choice(["leader", "random"])
        if mode == "leader" and leader is not None:
            others = [i for i in self.nodes if i != leader]
            return [leader] + self.rng.sample(others, k - 1), mode, leader
        return sorted(self.rng.sample(self.nodes, k)), "random", leader

    def _begin(self, kind: str, variant: str, nodes: list[int], leader: int | None,
               **details: Any) -> dict[str, Any]:
        fault = {"id": len(self.faults) + 1, "kind": kind, "variant": variant,
                 "nodes": sorted(nodes), "leader": leader, "start": time.monotonic(),
                 "end": None, "mechanism": self._mechanism(kind), **details}
        self.faults.append(fault)
        self.recorder.nemesis(kind, phase="start", id=fault["id"], variant=variant,
                              nodes=sorted(nodes), leader=leader, wall=round(time.time(), 3),
                              mechanism=fault["mechanism"], **details)
        if self.cfg.verbose:
            print(f"nemesis: {kind} {variant} nodes={sorted(nodes)} leader={leader} {details}",
                  flush=True)
        return fault

    def _mechanism(self, kind: str) -> str:
        if kind == "kill":
            return "signal: SIGKILL"
        if kind == "powerloss":
            return "signal: SIGKILL + power cut (FUSE: unsynced writes dropped)"
        if kind == "pause":
            return "signal: SIGSTOP/SIGCONT"
        if kind == "membership":
            return "membership"
        return self.partitioner.mechanism if self.partitioner is not None else "transport fault rules"

    def _end(self, fault: dict[str, Any], **details: Any) -> None:
        fault["end"] = time.monotonic()
        self.recorder.nemesis(fault["kind"], phase="end", id=fault["id"],
                              variant=fault["variant"], nodes=fault["nodes"],
                              wall=round(time.time(), 3), mechanism=fault["mechanism"],
                              **details)

    def _hold(self, seconds: float) -> None:
        self._stop.wait(seconds)

    # ------------------------------------------------------------------ faults
    def _kill(self, hold: float) -> None:
        targets, mode, leader = self._targets()
        fault = self._begin("kill", mode, targets, leader)
        self._take_down(targets, fault)
        self._hold(hold)
        self._bring_up(targets, fault)

    def _take_down(self, targets: list[int], fault: dict[str, Any]) -> None:
        """SIGKILL the targets and keep them down (until `_bring_up`)."""
        for i in targets:
            pid = self.launcher.pid(i)
            with self._lock:
                self._down.add(i)
            self.launcher.kill(i, signal.SIGKILL)
            self.launcher.stop_node(i, grace_s=1.0)  # keep it down until start_node
            fault.setdefault("pids", []).append(pid)

    def _bring_up(self, targets: list[int], fault: dict[str, Any]) -> None:
        for i in targets:
            self.launcher.start_node(i)
            with self._lock:
                self._down.discard(i)
        self._end(fault)
        self._note_recovery(fault, fault["end"])

    def _powerloss(self, hold: float) -> None:
        """Power fails: the processes die (SIGKILL) and their disks forget every write they
        were not told to sync. Half of the time it hits the whole cluster at once (a lost
        rack): then only what a node synced survives anywhere, so a store that skips an
        fsync loses acknowledged data for good, and the checks see it."""
        if not self.power:
            raise RuntimeError("powerloss needs the nodes' data dirs on PowerLossFS mounts")
        if self.rng.random() < 0.5:
            targets, mode, leader = list(self.nodes), "all", self._leader()
        else:
            targets, mode, leader = self._targets()
        fault = self._begin("powerloss", mode, targets, leader)
        self._take_down(targets, fault)
        # only once the processes are gone: a cut under a live process proves nothing
        fault["dropped_bytes"] = sum(self.power[i].cut_power() for i in targets)
        self._hold(hold)
        self._bring_up(targets, fault)

    def _pause(self, hold: float) -> None:
        targets, mode, leader = self._targets()
        fault = self._begin("pause", mode, targets, leader)
        for i in targets:
            with self._lock:
                self._paused.add(i)
            self.launcher.pause(i)
        self._hold(hold)
        for i in targets:
            self.launcher.resume(i)
            with self._lock:
                self._paused.discard(i)
        self._end(fault)
        self._note_recovery(fault, fault["end"])

    def _partition(self, hold: float) -> None:
        nodes = list(self.nodes)
        n = len(nodes)
        leader = self._leader()
        variants = ["isolate-leader", "split", "one-way"] + (["bridge"] if n >= 3 else [])
        variant = self.rng.choice(variants)
        shuffled = self.rng.sample(nodes, n)
        details: dict[str, Any] = {}
        if variant == "isolate-leader":
            x = leader if leader is not None else shuffled[0]
            groups = [[x], sorted(i for i in nodes if i != x)]
            cut = _between(*groups)
            details["groups"] = groups
        elif variant == "split":
            m = self.rng.randint(1, max(1, (n - 1) // 2))
            groups = [sorted(shuffled[:m]), sorted(shuffled[m:])]
            cut = _between(*groups)
            details["groups"] = groups
        elif variant == "bridge":
            b = leader if leader is not None and self.rng.random() < 0.5 else shuffled[0]
            rest = [i for i in shuffled if i != b]
            left, right = sorted(rest[: len(rest) // 2]), sorted(rest[len(rest) // 2:])
            cut = _between(left, right)
            details.update(bridge=b, groups=[left, right])
        else:  # one-way: one node (often the leader) that can only send, or only receive
            x = leader if leader is not None and self.rng.random() < 0.6 else shuffled[0]
            direction = self.rng.choice(["mute", "deaf"])
            others = [i for i in nodes if i != x]
            cut = {(x, j) for j in others} if direction == "mute" else {(j, x) for j in others}
            details.update(node=x, direction=direction)
        involved = sorted({s for s, _ in cut} | {d for _, d in cut})
        fault = self._begin("partition", variant, involved, leader, **details)
        if self.partitioner is not None:
            self.partitioner.cut(cut)
        else:
            for i, rules in partition_rules(nodes, cut).items():
                self._admin(i, "faults", rules)
        self._hold(hold)
        if self.partitioner is not None:
            self.partitioner.heal()
        else:
            self._clear_faults()
        self._end(fault)

    # ------------------------------------------------------------------ membership
    def _membership(self, hold: float) -> None:
        """One membership change, chosen by `members.choose_change` from the configuration
        the leader reports. `hold` is unused: a change is not healed; the faults after it
        meet the new membership."""
        cfg = self.cfg
        t0 = time.monotonic()
        deadline = t0 + cfg.member_timeout
        config = self._member_config(deadline)
        leader = self._leader()
        run = self.view.ids()
        if config is None or sorted(config[0] + config[1]) != run:
            # Nothing is changed on a view we cannot trust; say so in the report.
            why = ("no leader reported its configuration within "
                   f"{cfg.member_timeout:g} s" if config is None else
                   f"the leader's members (voters {config[0]}, learners {config[1]}) are not "
                   f"the nodes the launcher runs {run}")
            fault = self._begin("membership", "skipped", [], leader, op=None)
            self._finish_change(fault, t0, {}, why)
            return
        voters, learners = config
        wanted = None
        if cfg.membership_ops:
            wanted = cfg.membership_ops[self._member_turns % len(cfg.membership_ops)]
        self._member_turns += 1
        change = choose_change(self.member_rng, voters, learners, leader, cfg.min_voters,
                               cfg.max_voters, wanted)
        target = change.target
        fault = self._begin("membership", change.op, [] if target is None else [target],
                            leader, op=change.op, picked=change.mode, voters_before=voters)
        done: dict[str, Any] = {"added": [], "removed": [], "promoted": []}
        error: str | None = None
        try:
            if change.op == "promote":
                assert target is not None
                done["members"] = self._retry(
                    fault, deadline, lambda t: self.launcher.promote_member(target, timeout=t))
                done["promoted"].append(target)
            if change.op in ("remove", "replace"):
                assert target is not None
                done["members"] = self._remove(fault, target, change.op == "replace",
                                               deadline)
                done["removed"].append(target)
                self._sync_members()
            if change.op in ("add", "replace"):
                self._add(fault, deadline, done)
        except Exception as exc:  # noqa: BLE001 - a failed change is reported, not fatal
            error = str(exc) if isinstance(exc, LaunchError) else f"{type(exc).__name__}: {exc}"
        finally:
            self._sync_members()
        self._finish_change(fault, t0, done, error)

    def _finish_change(self, fault: dict[str, Any], t0: float, done: dict[str, Any],
                       error: str | None) -> None:
        """Record what a membership change did (also when it failed) on the fault and its
        end line; a failure also goes to `errors`, so the report shows it."""
        members = done.pop("members", None)
        voters: list[int] | None
        if members is not None:
            voters = sorted(int(m["id"]) for m in members if m.get("role") == "voter")
        else:   # (the launcher's answer is the committed configuration; else the sampler's)
            now = self.sampler.members()
            voters = now[0] if now is not None else None
        changed = sorted(set(fault["nodes"]) | set(done.get("added", []))
                         | set(done.get("removed", [])))
        outcome = {**{k: v for k, v in done.items() if v}, "seconds": round(
            time.monotonic() - t0, 3), "voters_after": voters, "members_after": self.view.ids()}
        if fault.get("retries"):
            outcome["retries"] = fault["retries"]
            outcome["retried_on"] = fault["retried_on"]
        if error is not None:
            outcome["error"] = error
            self.errors.append(f"membership change #{fault['id']} ({fault['variant']}) "
                               f"failed: {error}")
        fault["nodes"] = changed
        fault.update(outcome)
        self._end(fault, **outcome)
        if self.cfg.verbose:
            print(f"nemesis: membership #{fault['id']} done: {outcome}", flush=True)

    def _member_config(self, deadline: float) -> tuple[list[int], list[int]] | None:
        """(voters, learners) as the leader reports them; waits for a leader until
        `deadline` (None: none, or the run is stopping). A configuration that does not
        match the nodes the launcher runs is waited out for a few seconds (a sample
        older than the last change), then returned as it is."""
        settle = min(deadline, time.monotonic() + 5.0)
        config = None
        while not self._stop.is_set() and time.monotonic() < deadline:
            config = self.sampler.members()
            if config is not None and (sorted(config[0] + config[1]) == self.view.ids()
                                       or time.monotonic() >= settle):
                return config
            self._stop.wait(0.1)
        return config

    def _sync_members(self) -> None:
        """After a change: the view, and with it the sampler, follow the launcher."""
        self.view.refresh()
        self.sampler.set_nodes(self.view.addresses(), self.view.credentials())

    def _retry(self, fault: dict[str, Any], deadline: float,
               call: Callable[[float], Any]) -> Any:
        """`call(timeout)` until it succeeds, retrying the refusals after which nothing
        changed (no leader yet, a change or transfer in flight, a leader's first moments)
        until `deadline`, or until the run stops; anything else propagates."""
        while True:
            remaining = deadline - time.monotonic()
            try:
                return call(max(1.0, remaining))
            except LaunchError as exc:
                msg = str(exc)
                if "joined as a learner" in msg or not any(f in msg for f in _RETRIABLE):
                    raise
                if self._stop.is_set():
                    raise LaunchError(f"{msg} (not retried: the run ended)") from None
                if deadline - time.monotonic() < 1.0:
                    raise LaunchError(f"{msg} (retried until the {self.cfg.member_timeout:g} s "
                                      "deadline)") from None
                fault["retries"] = fault.get("retries", 0) + 1
                fault["retried_on"] = msg
                self._stop.wait(0.3)

    def _add(self, fault: dict[str, Any], deadline: float, done: dict[str, Any]) -> None:
        """A fresh node joins as a learner and is promoted. If only its promotion fails, it
        is promoted again until the deadline (it stays a learner if that fails too, and the
        next membership turn promotes it)."""
        before = set(self.launcher.node_ids)
        try:
            result = self._retry(fault, deadline,
                                 lambda t: self.launcher.add_member(timeout=t))
        except LaunchError as exc:
            new = sorted(set(self.launcher.node_ids) - before)
            if not new or "joined as a learner" not in str(exc):
                raise
            done["added"].extend(new)
            done["learner"] = new[0]
            self.errors.append(f"membership change #{fault['id']}: node {new[0]} joined as "
                               f"a learner, promotion retried: {exc}")
            done["members"] = self._retry(
                fault, deadline, lambda t: self.launcher.promote_member(new[0], timeout=t))
            done["promoted"].append(new[0])
            done.pop("learner")
            return
        done["added"].append(int(result["id"]))
        done["members"] = result["members"]
        done["voter_s"] = result.get("voter_s")

    def _remove(self, fault: dict[str, Any], node: int, wipe: bool,
                deadline: float) -> list[dict[str, Any]]:
        """Remove voter `node` (with `wipe`, its directory goes too: a lost disk). Its log
        is kept for the checks: a wiped node's is copied out of the open file once the
        process is gone."""
        log = self.launcher.log_path(node)
        keep: Any = None
        if wipe:
            try:
                keep = open(log, "rb")   # noqa: SIM115 - read after the unlink, closed below
            except OSError:
                keep = None
        try:
            result = self._retry(fault, deadline,
                                 lambda t: self.launcher.remove_member(node, wipe=wipe,
                                                                       timeout=t))
            if keep is not None:
                dest = Path(self.cfg.out) / "departed" / f"node-{node}.log"
                dest.parent.mkdir(parents=True, exist_ok=True)
                dest.write_bytes(keep.read())
                log = dest
            self.departed[node] = log
            return list(result["members"])
        finally:
            if keep is not None:
                keep.close()

    # ------------------------------------------------------------------ healing
    def _admin(self, node: int, op: str, args: dict[str, Any] | None,
               attempts: int = 3) -> bool:
        last: Exception | None = None
        for _ in range(attempts):
            try:
                admin_request(self.launcher.address(node), self.launcher.cluster_id, op,
                              args, timeout=1.0,
                              credentials=self.view.credentials(admin=True))
                return True
            except Exception as exc:  # noqa: BLE001 - node down, paused or restarting
                last = exc
        self.errors.append(f"admin {op} on node {node} failed: {last}")
        return False

    def _clear_faults(self) -> None:
        for i in self.nodes:
            self._admin(i, "clear_faults", None)

    def heal_all(self) -> None:
        """Resume every node, restart every node we stopped, clear every fault rule."""
        with self._lock:
            paused, down = set(self._paused), set(self._down)
            self._paused.clear()
            self._down.clear()
        if self.partitioner is not None:
            try:
                self.partitioner.heal()
            except Exception as exc:  # noqa: BLE001 - heal the rest regardless
                self.errors.append(f"kernel heal failed: {exc}")
        for i in self.nodes:
            self.launcher.resume(i)  # harmless on a running node
        for i in sorted(down):
            try:
                self.launcher.start_node(i)
            except Exception as exc:  # noqa: BLE001
                self.errors.append(f"restart of node {i} failed: {exc}")
        for f in self.faults:
            if f["end"] is None:
                self._end(f)
        self.recorder.nemesis("heal", phase="final", resumed=sorted(paused),
                              restarted=sorted(down))
        deadline = time.monotonic() + 15
        pending = list(self.nodes)
        while pending and time.monotonic() < deadline:
            pending = [i for i in pending if not self._try_clear(i)]
            if pending:
                time.sleep(0.2)
        if pending:
            self.errors.append(f"could not clear fault rules on node(s) {pending}")

    def _try_clear(self, node: int) -> bool:
        try:
            admin_request(self.launcher.address(node), self.launcher.cluster_id,
                          "clear_faults", None, timeout=1.0,
                          credentials=self.view.credentials(admin=True))
            return True
        except Exception:  # noqa: BLE001
            return False
