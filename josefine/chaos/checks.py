"""The end-of-run checks of a chaos run. Each returns a `CheckOutcome`.

* linearizable      — the client history, by `josefine.check` (cas fail = compare failed);
* same-sequence     — every node's committed path (read from its LevelDB after the stop)
                      has the same block ids and digests up to the smallest commit height;
* commit-monotonic  — per node process, the sampled commit never moved backwards; no two
                      samples name different blocks at one height; every sampled commit is
                      on the final committed path;
* one-leader-per-term — from the status samples and the nodes' "became leader" log lines;
* acked-writes      — replaying the committed path (with the session table's exactly-once
                      rule): every acknowledged write / cas took effect, no definitely
                      refused write appears at all, no cas reported as compare-failed took
                      effect;
* no-crashes        — no node exited on its own or logged a fatal error.
"""
from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from josefine.chain.block import Block, BlockKind, decode_commands
from josefine.chain.leveldb import LevelDBStore
from josefine.check import check_history, format_result
from josefine.check.checker import CheckResult
from josefine.transport.codec import unpackb
from josefine.types import BlockId

__all__ = ["CheckOutcome", "drop_refused", "check_linearizable", "load_committed_paths",
           "check_same_sequence", "check_commits", "check_leaders", "check_writes",
           "check_crashes"]

_MAX_DETAILS = 20


@dataclass
class CheckOutcome:
    name: str
    passed: bool
    summary: str
    details: list[str] = field(default_factory=list)
    elapsed: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "passed": self.passed, "summary": self.summary,
                "details": self.details, "elapsed": round(self.elapsed, 3)}


def _outcome(name: str, problems: list[str], ok_summary: str, bad_summary: str) -> CheckOutcome:
    if problems:
        more = len(problems) - _MAX_DETAILS
        details = problems[:_MAX_DETAILS] + ([f"... and {more} more"] if more > 0 else [])
        return CheckOutcome(name, False, bad_summary.format(n=len(problems)), details)
    return CheckOutcome(name, True, ok_summary)


# ---------------------------------------------------------------- linearizability

def drop_refused(history: Sequence[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    """The history without operations completed with ``"refused": true`` (never happened)."""
    pending: dict[Any, int] = {}
    drop: set[int] = set()
    for i, rec in enumerate(history):
        proc = repr(rec.get("process"))
        if rec.get("process") == "nemesis":
            continue
        if rec.get("type") == "invoke":
            pending[proc] = i
        else:
            start = pending.pop(proc, None)
            if rec.get("refused") and start is not None:
                drop.update((start, i))
    return [rec for i, rec in enumerate(history) if i not in drop]


def check_linearizable(history: Sequence[Mapping[str, Any]],
                       time_limit: float | None) -> tuple[CheckOutcome, CheckResult]:
    result = check_history(drop_refused(history), cas_fail_is_compare_failure=True,
                           time_limit=time_limit)
    text = format_result(result)
    lines = text.splitlines()
    if result.verdict == "ok":
        out = CheckOutcome("linearizable", True, lines[0])
    else:
        out = CheckOutcome("linearizable", False, lines[0],
                           [ln for ln in lines[1:] if ln.strip() and not ln.startswith("  key ")])
    out.elapsed = result.elapsed
    return out, result


# ---------------------------------------------------------------- chains on disk

def _walk(blocks: Mapping[BlockId, Block], top: BlockId) -> list[Block] | None:
    """Blocks from genesis up to `top` (None if `top` or an ancestor is missing)."""
    path: list[Block] = []
    cur: BlockId | None = top
    while cur is not None:
        b = blocks.get(cur)
        if b is None:
            return None
        path.append(b)
        cur = b.parent
    path.reverse()
    return path


def load_committed_paths(data_dirs: Mapping[int, Path], cluster_id: str,
                         applied: Mapping[int, BlockId] | None = None
                         ) -> tuple[dict[int, list[Block]], list[str]]:
    """Each node's applied path, genesis first, from its store (the node must be stopped).

    The path ends at `applied[node]` (the node's last reported applied block) when the
    store holds it, else at the store's commit marker. The marker is persisted lazily, so
    it may lag what the node applied; it never names an uncommitted block.
    """
    paths: dict[int, list[Block]] = {}
    errors: list[str] = []
    for node, data_dir in data_dirs.items():
        try:
            with LevelDBStore(Path(data_dir) / "chain", cluster_id) as store:
                st = store.load()
        except Exception as exc:  # noqa: BLE001 - a corrupt store is itself a finding
            errors.append(f"node {node}: cannot load its store: {type(exc).__name__}: {exc}")
            continue
        top = st.commit
        want = (applied or {}).get(node)
        if want is not None and want in st.blocks and want.height >= top.height:
            top = want
        path = _walk(st.blocks, top)
        if path is None:
            errors.append(f"node {node}: path from {top} down to genesis is broken")
            continue
        if path[len(path) - 1 - (top.height - st.commit.height)].id != st.commit:
            errors.append(f"node {node}: stored commit {st.commit} is not on its applied path "
                          f"ending at {top}")
        paths[node] = path
    return paths, errors


def check_same_sequence(paths: Mapping[int, list[Block]], load_errors: list[str]
                        ) -> CheckOutcome:
    problems = list(load_errors)
    if paths:
        h = min(len(p) for p in paths.values()) - 1
        for height in range(h + 1):
            ids = {n: (p[height].id, p[height].digest) for n, p in paths.items()}
            if len(set(ids.values())) > 1:
                problems.append(f"height {height}: " + ", ".join(
                    f"node {n} has {bid} digest {dg.hex()[:12]}" for n, (bid, dg) in ids.items()))
                break
        tops = ", ".join(f"node {n}: {p[-1].id}" for n, p in sorted(paths.items()))
    else:
        h, tops = -1, "no store readable"
    return _outcome("same-sequence", problems,
                    f"all {len(paths)} nodes applied the same blocks up to height {h} ({tops})",
                    "{n} problem(s) with the applied paths")


# ---------------------------------------------------------------- status samples

def check_commits(samples: Iterable[Mapping[str, Any]], paths: Mapping[int, list[Block]]
                  ) -> CheckOutcome:
    """Commit never moves back within a process; the last sample of every node is at least
    any commit it reported before (across restarts too); no two samples name different
    blocks at one height; every sampled commit is on the final path."""
    problems: list[str] = []
    last: dict[tuple[int, Any], tuple[int, int]] = {}
    top: dict[int, tuple[int, float]] = {}
    final: dict[int, tuple[int, float]] = {}
    at_height: dict[int, tuple[int, int, float]] = {}
    best_path = max(paths.values(), key=len) if paths else []
    n = 0
    for s in samples:
        c = s.get("commit")
        if not c:
            continue
        n += 1
        node, term, height = int(s["node"]), int(c[0]), int(c[1])
        key = (node, s.get("pid"))
        prev = last.get(key)
        if prev is not None and (height < prev[1] or (height == prev[1] and term != prev[0])):
            problems.append(f"node {node} (pid {s.get('pid')}): commit moved from "
                            f"({prev[0]},{prev[1]}) to ({term},{height}) at t={s['t']:.3f}")
        last[key] = (term, height)
        if height > top.get(node, (-1, 0.0))[0]:
            top[node] = (height, s["t"])
        final[node] = (height, s["t"])
        seen = at_height.get(height)
        if seen is None:
            at_height[height] = (term, node, s["t"])
        elif seen[0] != term:
            problems.append(f"height {height} committed as term {seen[0]} by node {seen[1]} "
                            f"but as term {term} by node {node}")
    for node, (height, _t) in sorted(final.items()):
        if height < top[node][0]:
            problems.append(f"node {node}: last reported commit height {height} is below the "
                            f"{top[node][0]} it reported at t={top[node][1]:.3f}")
    for height, (term, node, t) in sorted(at_height.items()):
        if height >= len(best_path):
            problems.append(f"node {node} reported commit ({term},{height}) at t={t:.3f}, above "
                            f"the final applied height {len(best_path) - 1}")
        elif best_path[height].id != BlockId(term, height):
            problems.append(f"node {node} reported commit ({term},{height}) at t={t:.3f}, but "
                            f"the final committed block at that height is {best_path[height].id}")
    return _outcome("commit-monotonic", problems,
                    f"{n} commit samples: none moved backwards; all on the final path",
                    "{n} commit regression(s) or conflict(s)")


_LEADER_LINE = re.compile(r"node (\d+): became leader (?:at|of) term (\d+)")


def check_leaders(samples: Iterable[Mapping[str, Any]], logs: Mapping[int, Path]) -> CheckOutcome:
    leaders: dict[int, set[int]] = defaultdict(set)
    for s in samples:
        if s.get("role") == "leader":
            leaders[int(s["term"])].add(int(s["node"]))
    from_logs = 0
    for path in logs.values():
        try:
            text = Path(path).read_text(encoding="utf-8", errors="replace")
        except OSError:
            continue
        for m in _LEADER_LINE.finditer(text):
            leaders[int(m.group(2))].add(int(m.group(1)))
            from_logs += 1
    problems = [f"term {t}: leaders {sorted(ids)}" for t, ids in sorted(leaders.items())
                if len(ids) > 1]
    return _outcome("one-leader-per-term", problems,
                    f"{len(leaders)} term(s) with a leader, one each "
                    f"(samples + {from_logs} log lines)",
                    "{n} term(s) with more than one leader")


# ---------------------------------------------------------------- writes vs. the chain

def replay_effects(path: Sequence[Block]) -> tuple[set[tuple[Any, Any]], set[tuple[Any, Any]]]:
    """(effective, present): (key, value) pairs that took effect / that appear in a command.

    Replays the KV semantics with the session table's rule (a (client, seq) applies only if
    seq is above that client's last applied seq).
    """
    last_seq: dict[str, int] = {}
    data: dict[Any, Any] = {}
    effective: set[tuple[Any, Any]] = set()
    present: set[tuple[Any, Any]] = set()
    for b in path:
        if b.kind != BlockKind.NORMAL:
            continue
        for cmd in decode_commands(b.payload):
            try:
                op = unpackb(cmd.data)
            except Exception:  # noqa: BLE001 - not ours
                continue
            if not isinstance(op, list) or len(op) < 3:
                continue
            fresh = cmd.seq > last_seq.get(cmd.client_id, -1)
            if fresh:
                last_seq[cmd.client_id] = cmd.seq
            if op[0] == "put" and len(op) == 3:
                present.add((op[1], op[2]))
                if fresh:
                    data[op[1]] = op[2]
                    effective.add((op[1], op[2]))
            elif op[0] == "cas" and len(op) == 4:
                present.add((op[1], op[3]))
                if fresh and data.get(op[1]) == op[2]:
                    data[op[1]] = op[3]
                    effective.add((op[1], op[3]))
            elif op[0] == "delete" and len(op) == 2 and fresh:
                data.pop(op[1], None)
    return effective, present


def check_writes(history: Sequence[Mapping[str, Any]], paths: Mapping[int, list[Block]]
                 ) -> CheckOutcome:
    if not paths:
        return CheckOutcome("acked-writes", False, "no committed path could be read")
    path = max(paths.values(), key=len)
    effective, present = replay_effects(path)
    invokes: dict[str, Mapping[str, Any]] = {}
    problems: list[str] = []
    counts = {"acked": 0, "refused": 0, "compare-failed": 0, "unknown-applied": 0, "unknown": 0}
    for rec in history:
        proc = repr(rec.get("process"))
        if rec.get("process") == "nemesis":
            continue
        if rec.get("type") == "invoke":
            invokes[proc] = rec
            continue
        inv = invokes.pop(proc, None)
        if inv is None or inv.get("f") not in ("write", "cas"):
            continue
        key = inv.get("key")
        value: Any = inv.get("value")   # JSON: a cas's is [expected, new]
        new = value[1] if inv["f"] == "cas" else value
        what = f"{inv['f']} {key}={new!r} by process {rec.get('process')}"
        t = rec.get("type")
        if t == "ok":
            counts["acked"] += 1
            if (key, new) not in effective:
                problems.append(f"acknowledged {what} is not in effect on the committed path")
        elif (t == "fail" and inv["f"] == "write") or rec.get("refused"):
            counts["refused"] += 1
            if (key, new) in present:
                problems.append(f"{what} was reported refused but is on the committed path")
        elif t == "fail":
            counts["compare-failed"] += 1
            if (key, new) in effective:
                problems.append(f"{what} was reported compare-failed but took effect")
        else:
            counts["unknown"] += 1
            if (key, new) in effective:
                counts["unknown-applied"] += 1
    summary = (f"{counts['acked']} acknowledged writes all in effect; {counts['refused']} refused "
               f"and {counts['compare-failed']} compare-failed never took effect; "
               f"{counts['unknown-applied']}/{counts['unknown']} unknown outcomes took effect "
               f"(committed path: {len(path) - 1} blocks)")
    return _outcome("acked-writes", problems, summary, "{n} write(s) contradict the chain")


# ---------------------------------------------------------------- node health

_FATAL = re.compile(r"CRITICAL|fatal error|SafetyViolation|Traceback")


def check_crashes(restart_events: Iterable[Any], logs: Mapping[int, Path],
                  killed_by_us: int) -> CheckOutcome:
    problems = [f"node {e.node_id} exited with status {e.exit_code}"
                for e in restart_events if e.exit_code != -9]
    for node, path in logs.items():
        try:
            lines = Path(path).read_text(encoding="utf-8", errors="replace").splitlines()
        except OSError:
            continue
        bad = [ln for ln in lines if _FATAL.search(ln)]
        problems.extend(f"node {node} log: {ln.strip()[:300]}" for ln in bad[:5])
    return _outcome("no-crashes", problems,
                    f"no node exited on its own ({killed_by_us} SIGKILLs by the nemesis)",
                    "{n} unexpected exit(s) or fatal log line(s)")
