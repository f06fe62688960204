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
               of the time, the whole cluster at once; restarted from what survived.

Every fault records its ``mechanism`` (signal, transport fault rules, or kernel).

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
from collections.abc import Mapping
from typing import Any

from josefine.chaos.config import ChaosConfig
from josefine.chaos.netns_faults import KernelPartitioner
from josefine.chaos.powerfs import PowerLossFS
from josefine.chaos.sampler import StatusSampler
from josefine.check.history import HistoryRecorder
from josefine.client import admin_request
from josefine.launch.cluster import Launcher

__all__ = ["Nemesis", "partition_rules"]

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
                 power: Mapping[int, PowerLossFS] | None = None) -> None:
        self.launcher = launcher
        self.power = dict(power or {})
        """Each node's power-loss filesystem (its data dir), for the powerloss fault."""
        self.partitioner = partitioner
        """Makes partitions in the kernel instead of the transport, when given."""
        self.sampler = sampler
        self.recorder = recorder
        self.cfg = cfg
        self.nodes = list(launcher.node_ids)
        # Separate streams: which kinds come when, and for how long, follow from the seed
        # alone; target choices (self.rng) may also depend on who leads at that moment.
        self.kind_rng = random.Random(f"{cfg.seed}/nemesis/kinds")
        self.timing = random.Random(f"{cfg.seed}/nemesis/timing")
        self.rng = random.Random(f"{cfg.seed}/nemesis/targets")
        self.faults: list[dict[str, Any]] = []
        self.errors: list[str] = []
        self._stop = threading.Event()
        self._stopped = False
        self._thread = threading.Thread(target=self._run, name="chaos-nemesis", daemon=True)
        self._down: set[int] = set()
        self._paused: set[int] = set()
        self._lock = threading.Lock()

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
            self._thread.join(30)
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
        return self.partitioner.mechanism if self.partitioner is not None else "transport fault rules"

    def _end(self, fault: dict[str, Any]) -> None:
        fault["end"] = time.monotonic()
        self.recorder.nemesis(fault["kind"], phase="end", id=fault["id"],
                              variant=fault["variant"], nodes=fault["nodes"],
                              wall=round(time.time(), 3))

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

    # ------------------------------------------------------------------ healing
    def _admin(self, node: int, op: str, args: dict[str, Any] | None,
               attempts: int = 3) -> bool:
        last: Exception | None = None
        for _ in range(attempts):
            try:
                admin_request(self.launcher.address(node), self.launcher.cluster_id, op,
                              args, timeout=1.0,
                              credentials=self.launcher.credentials(admin=True))
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
                          credentials=self.launcher.credentials(admin=True))
            return True
        except Exception:  # noqa: BLE001
            return False
