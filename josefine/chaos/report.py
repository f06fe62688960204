"""What a chaos run found: operation counts, faults, availability, check results.

`ChaosReport.passed` is True only if every check passed. The report is written to the run
directory as ``report.json`` (machine-readable) and ``report.txt`` (what the CLI prints).
Times in the report are seconds since the workload started.
"""
from __future__ import annotations

import json
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from itertools import pairwise
from pathlib import Path
from typing import Any

from josefine.chaos.checks import CheckOutcome

__all__ = ["ChaosReport", "describe_membership_change", "longest_unavailability",
           "membership_line", "operation_counts"]


def operation_counts(history: Sequence[Mapping[str, Any]]) -> dict[str, dict[str, int]]:
    """{f: {"ok": n, "fail": n, "info": n, "refused": n}} over completed client operations."""
    pending: dict[str, str] = {}
    counts: dict[str, Counter[str]] = {}
    for rec in history:
        if rec.get("process") == "nemesis":
            continue
        proc = repr(rec.get("process"))
        if rec.get("type") == "invoke":
            pending[proc] = str(rec.get("f"))
            continue
        f = pending.pop(proc, None)
        if f is None:
            continue
        outcome = "refused" if rec.get("refused") else str(rec.get("type"))
        counts.setdefault(f, Counter())[outcome] += 1
    return {f: {k: c.get(k, 0) for k in ("ok", "fail", "info", "refused")}
            for f, c in sorted(counts.items())}


def longest_unavailability(history: Sequence[Mapping[str, Any]], start_ns: int, end_ns: int,
                           faults: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """The longest stretch of [start_ns, end_ns] in which no operation completed ok.

    Returns {"start", "end", "duration"} (seconds since start_ns) and "causes": the faults
    active during the window, healed less than a second before it began, or whose nodes
    were still restarting / resuming (``serving_after``) when it began.
    """
    oks = sorted(int(r["time"]) for r in history
                 if r.get("type") == "ok" and r.get("process") not in ("nemesis", "final")
                 and start_ns <= int(r.get("time", 0)) <= end_ns)
    points = [start_ns] + oks + [end_ns]
    best = (0, start_ns, start_ns)
    for a, b in pairwise(points):
        if b - a > best[0]:
            best = (b - a, a, b)
    s, e = (best[1] - start_ns) / 1e9, (best[2] - start_ns) / 1e9
    causes = []
    for f in faults:
        fs = f["start"]
        fe = f["end"] if f["end"] is not None else e
        back = fe + (f.get("serving_after") or 0.0)
        if fs <= e and max(fe + 1.0, back) >= s:
            serving = f", all nodes serving again {back:.1f} s" if f.get("serving_after") else ""
            causes.append(f"#{f['id']} {f['kind']} {f['variant']} nodes {f['nodes']} "
                          f"(leader {f['leader']}) {fs:.1f}-{fe:.1f} s{serving}")
    return {"start": round(s, 3), "end": round(e, 3), "duration": round(e - s, 3),
            "causes": causes or ["no fault overlaps it (election, restart or load)"]}


def describe_membership_change(f: Mapping[str, Any]) -> str:
    """One fault line's tail for a membership change: what it did, how long it took, and
    its error if it failed."""
    parts = []
    if f.get("removed"):
        how = "wiped" if f["variant"] == "replace" else "kept its dir"
        lead = (", the leader on purpose" if f.get("picked") == "leader" else
                ", the leader" if f.get("leader") in f["removed"] else "")
        parts.append(f"removed {', '.join(map(str, f['removed']))} ({how}{lead})")
    if f.get("added"):
        parts.append(f"added {', '.join(map(str, f['added']))}")
    if f.get("promoted"):
        parts.append(f"promoted {', '.join(map(str, f['promoted']))}")
    if f.get("learner") is not None:
        parts.append(f"node {f['learner']} left a learner")
    done = "; ".join(parts) or "nothing changed"
    voters = f"voters {f.get('voters_before')} -> {f.get('voters_after')}"
    n = f.get("retries") or 0
    retries = f", {n} retr{'y' if n == 1 else 'ies'}" if n else ""
    tail = f" FAILED: {f['error']}" if f.get("error") else ""
    return (f"leader {f.get('leader')}: {done}; {voters}; {f.get('seconds', 0):.2f} s"
            f"{retries}{tail}")


def membership_line(m: Mapping[str, Any]) -> str:
    """The report's summary of the membership changes of a run."""
    ops = ", ".join(f"{op} {n}" for op, n in sorted(m.get("by_op", {}).items())) or "none"
    failed = m.get("failed") or []
    text = (f"membership: {m.get('changes', 0)} change(s) ({ops}; {len(failed)} failed); "
            f"members {m.get('initial')} -> {m.get('final')}")
    if m.get("departed"):
        text += f"; left (stores not compared): {m['departed']}"
    if m.get("mismatch"):
        text += f"; MISMATCH with the launcher's nodes: {m['mismatch']}"
    return text


@dataclass
class ChaosReport:
    config: dict[str, Any]
    out_dir: str
    checks: list[CheckOutcome] = field(default_factory=list)
    operations: dict[str, dict[str, int]] = field(default_factory=dict)
    faults: list[dict[str, Any]] = field(default_factory=list)
    workload_seconds: float = 0.0
    unavailability: dict[str, Any] = field(default_factory=dict)
    checker_seconds: float = 0.0
    notes: list[str] = field(default_factory=list)
    error: str | None = None
    membership: dict[str, Any] = field(default_factory=dict)
    """With membership faults: {"changes", "by_op", "failed", "initial", "final",
    "departed", "client_rebuilds"[, "mismatch"]}."""

    @property
    def passed(self) -> bool:
        return self.error is None and bool(self.checks) and all(c.passed for c in self.checks)

    def check(self, name: str) -> CheckOutcome | None:
        return next((c for c in self.checks if c.name == name), None)

    @property
    def ok_operations(self) -> int:
        return sum(c["ok"] for c in self.operations.values())

    @property
    def total_operations(self) -> int:
        return sum(sum(c.values()) for c in self.operations.values())

    @property
    def ops_per_second(self) -> float:
        return self.ok_operations / self.workload_seconds if self.workload_seconds else 0.0

    @property
    def faults_per_minute(self) -> float:
        return len(self.faults) * 60.0 / self.workload_seconds if self.workload_seconds else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {"passed": self.passed, "error": self.error, "config": self.config,
                "out_dir": self.out_dir, "workload_seconds": round(self.workload_seconds, 3),
                "operations": self.operations, "ok_operations": self.ok_operations,
                "total_operations": self.total_operations,
                "ops_per_second": round(self.ops_per_second, 2),
                "faults_per_minute": round(self.faults_per_minute, 2),
                "faults": self.faults, "longest_unavailability": self.unavailability,
                "checker_seconds": round(self.checker_seconds, 3),
                "checks": [c.to_dict() for c in self.checks], "notes": self.notes,
                **({"membership": self.membership} if self.membership else {})}

    def format(self) -> str:
        cfg = self.config
        lines = [f"josefine chaos: {'PASS' if self.passed else 'FAIL'}  (seed {cfg.get('seed')}, "
                 f"{cfg.get('nodes')} nodes, {cfg.get('clients')} clients, {cfg.get('keys')} keys, "
                 f"faults {','.join(cfg.get('faults', [])) or 'none'}; run dir {self.out_dir})"]
        if self.error:
            lines.append(f"run error: {self.error}")
        lines.append(f"operations in {self.workload_seconds:.1f} s: {self.total_operations} "
                     f"({self.ok_operations} ok, {self.ops_per_second:.1f} ok/s)")
        for op_name, tally in self.operations.items():
            lines.append(f"  {op_name:<6} ok {tally['ok']:>6}  fail {tally['fail']:>5}  "
                         f"info {tally['info']:>5}  refused {tally['refused']:>5}")
        lines.append(f"faults: {len(self.faults)} ({self.faults_per_minute:.1f}/min)")
        for f in self.faults:
            end = f"{f['end']:.1f}" if f["end"] is not None else "?"
            if f["kind"] == "membership":
                lines.append(f"  #{f['id']:<3} {f['start']:6.1f}-{end:>6} s  {f['kind']:<9} "
                             f"{f['variant']:<14} " + describe_membership_change(f))
                continue
            extra = {k: v for k, v in f.items()
                     if k not in ("id", "kind", "variant", "nodes", "leader", "start", "end")}
            lines.append(f"  #{f['id']:<3} {f['start']:6.1f}-{end:>6} s  {f['kind']:<9} "
                         f"{f['variant']:<14} nodes {f['nodes']} leader {f['leader']}"
                         + (f" {extra}" if extra else ""))
        if self.membership:
            lines.append(membership_line(self.membership))
        u = self.unavailability
        if u:
            lines.append(f"longest window without a successful operation: {u['duration']:.2f} s "
                         f"({u['start']:.1f}-{u['end']:.1f} s)")
            lines.extend(f"  during/after: {c}" for c in u["causes"])
        lines.append(f"checks (linearizability checker {self.checker_seconds:.2f} s):")
        for c in self.checks:
            lines.append(f"  [{'PASS' if c.passed else 'FAIL'}] {c.name}: {c.summary}")
            lines.extend(f"      {d}" for d in c.details)
        for n in self.notes:
            lines.append(f"note: {n}")
        return "\n".join(lines)

    def write(self, out_dir: str | Path) -> None:
        out = Path(out_dir)
        (out / "report.json").write_text(json.dumps(self.to_dict(), indent=2, default=repr) + "\n",
                                         encoding="utf-8")
        (out / "report.txt").write_text(self.format() + "\n", encoding="utf-8")
