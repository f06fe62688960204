"""The end-of-run checks of a chaos run. Each returns a `CheckOutcome`.

* linearizable      — the client history, by `josefine.check` (cas fail = compare failed);
* same-sequence     — every node's committed path (read from its LevelDB after the stop)
                      has the same block ids and digests at every height two nodes both
                      hold (a path starts at the node's base: genesis, or the block its
                      chain was compacted to, whose history a snapshot holds);
* commit-monotonic  — per node process, the sampled commit never moved backwards; no two
                      samples name different blocks at one height; every sampled commit is
                      on the final committed path;
* one-leader-per-term — from the status samples and the nodes' "became leader" log lines;
* acked-writes      — replaying the committed path (with the session table's exactly-once
                      rule): every acknowledged write / cas took effect, no definitely
                      refused write appears at all, no cas reported as compare-failed took
                      effect. A compacted path is replayed from the state its base's
                      snapshot holds (key values and client sessions); an acknowledged
                      write that is neither in that state nor after it was overwritten
                      below the base, where no chain is left to show it: such writes are
                      counted, and left to the linearizability check;
* no-crashes        — no node exited on its own or logged a fatal error.
"""
from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from josefine.chain.block import Block, BlockKind, decode_commands, genesis
from josefine.chain.leveldb import LevelDBStore
from josefine.check import check_history, format_result
from josefine.check.checker import CheckResult
from josefine.transport.codec import unpackb
from josefine.types import BlockId

__all__ = ["BaseState", "CheckOutcome", "drop_refused", "check_linearizable", "load_committed_paths",
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

def _walk(blocks: Mapping[BlockId, Block], top: BlockId, base: Block) -> list[Block] | None:
    """Blocks from the base (its header first) up to `top` (None if `top` or an ancestor
    is missing)."""
    path: list[Block] = []
    cur: BlockId | None = top
    while cur is not None and cur != base.id:
        b = blocks.get(cur)
        if b is None:
            return None
        path.append(b)
        cur = b.parent
    if cur != base.id:
        return None
    path.append(base)
    path.reverse()
    return path


def _at(path: Sequence[Block], height: int) -> Block | None:
    """The path's block at `height` (paths start at their base's height)."""
    i = height - path[0].id.height
    return path[i] if 0 <= i < len(path) else None


@dataclass
class BaseState:
    """What a node's snapshot at its base says about the history compacted below it."""

    data: dict[Any, Any]
    last_seq: dict[str, int]


def load_committed_paths(data_dirs: Mapping[int, Path], cluster_id: str,
                         applied: Mapping[int, BlockId] | None = None,
                         base_states: dict[int, BaseState] | None = None,
                         ) -> tuple[dict[int, list[Block]], list[str]]:
    """Each node's applied path, its base first, from its store (the node must be stopped).

    The path ends at `applied[node]` (the node's last reported applied block) when the
    store holds it, else at the store's commit marker. The marker is persisted lazily, so
    it may lag what the node applied; it never names an uncommitted block. A compacted
    node's path starts at its base; with `base_states`, the state its snapshot at the
    base holds is loaded into it (the snapshot is verified on the way).
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
        base = st.base if st.base is not None else genesis(cluster_id)
        top = st.commit
        want = (applied or {}).get(node)
        if want is not None and want in st.blocks and want.height >= top.height:
            top = want
        path = _walk(st.blocks, top, base)
        if path is None:
            errors.append(f"node {node}: path from {top} down to its base {base.id} is broken")
            continue
        if path[len(path) - 1 - (top.height - st.commit.height)].id != st.commit:
            errors.append(f"node {node}: stored commit {st.commit} is not on its applied path "
                          f"ending at {top}")
        paths[node] = path
        if base_states is not None and base.id.height > 0:
            try:
                base_states[node] = _base_state(Path(data_dir), node, cluster_id, base)
            except Exception as exc:  # noqa: BLE001 - an unusable snapshot is a finding
                errors.append(f"node {node}: no usable snapshot at its base {base.id}: "
                              f"{type(exc).__name__}: {exc}")
    return paths, errors


def _base_state(data_dir: Path, node: int, cluster_id: str, base: Block) -> BaseState:
    """The KV state and client sessions of the node's snapshot whose base is `base`."""
    from josefine.fsm.applier import Applier
    from josefine.fsm.kv import KVStateMachine
    from josefine.runtime.snapshots import SNAPSHOT_DIR, restore_from
    from josefine.snapshot.files import name_for
    kv = KVStateMachine()
    applier = Applier(kv)
    meta = restore_from(applier, data_dir / SNAPSHOT_DIR / name_for(base.id))
    if meta.base_digest != base.digest or meta.cluster_id != cluster_id:
        raise ValueError(f"snapshot of node {node} does not match its base {base.id}")
    return BaseState(dict(kv.items()), {s.client_id: s.last_seq for s in applier.sessions})


def check_same_sequence(paths: Mapping[int, list[Block]], load_errors: list[str]
                        ) -> CheckOutcome:
    problems = list(load_errors)
    if paths:
        h = min(p[-1].id.height for p in paths.values())
        lo = min(p[0].id.height for p in paths.values())
        for height in range(lo, h + 1):
            here = {n: _at(p, height) for n, p in paths.items()}
            ids = {n: (b.id, b.digest) for n, b in here.items() if b is not None}
            if len(set(ids.values())) > 1:
                problems.append(f"height {height}: " + ", ".join(
                    f"node {n} has {bid} digest {dg.hex()[:12]}" for n, (bid, dg) in ids.items()))
                break
        tops = ", ".join(f"node {n}: {p[0].id}..{p[-1].id}" for n, p in sorted(paths.items()))
    else:
        h, tops = -1, "no store readable"
    return _outcome("same-sequence", problems,
                    f"all {len(paths)} nodes applied the same blocks up to height {h} "
                    f"(base..top: {tops})",
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
    best_path = max(paths.values(), key=lambda p: p[-1].id.height) if paths else []
    best_top = best_path[-1].id.height if best_path else -1
    below_base = 0
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
        if height > best_top:
            problems.append(f"node {node} reported commit ({term},{height}) at t={t:.3f}, above "
                            f"the final applied height {best_top}")
            continue
        final_block = _at(best_path, height)
        if final_block is None:   # below the final path's base: compacted everywhere
            below_base += 1
        elif final_block.id != BlockId(term, height):
            problems.append(f"node {node} reported commit ({term},{height}) at t={t:.3f}, but "
                            f"the final committed block at that height is {final_block.id}")
    return _outcome("commit-monotonic", problems,
                    f"{n} commit samples: none moved backwards; all on the final path"
                    + (f" ({below_base} heights below its base not compared)"
                       if below_base else ""),
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

def replay_effects(path: Sequence[Block], start: BaseState | None = None
                   ) -> tuple[set[tuple[Any, Any]], set[tuple[Any, Any]]]:
    """(effective, present): (key, value) pairs that took effect / that appear in a command.

    Replays the KV semantics with the session table's rule (a (client, seq) applies only if
    seq is above that client's last applied seq), from `start` (the state at the path's
    base, whose pairs count as in effect) or from an empty state.
    """
    last_seq: dict[str, int] = dict(start.last_seq) if start is not None else {}
    data: dict[Any, Any] = dict(start.data) if start is not None else {}
    effective: set[tuple[Any, Any]] = set(data.items())
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


def check_writes(history: Sequence[Mapping[str, Any]], paths: Mapping[int, list[Block]],
                 base_states: Mapping[int, BaseState] | None = None) -> CheckOutcome:
    if not paths:
        return CheckOutcome("acked-writes", False, "no committed path could be read")
    # the path reaching lowest (most history), then highest
    node, path = min(paths.items(), key=lambda np: (np[1][0].id.height, -np[1][-1].id.height))
    compacted = path[0].id.height > 0
    start = (base_states or {}).get(node) if compacted else None
    if compacted and start is None:
        return CheckOutcome("acked-writes", False,
                            f"node {node}'s path starts at {path[0].id} but its snapshot "
                            "state could not be read")
    effective, present = replay_effects(path[1:] if compacted else path, start)
    invokes: dict[str, Mapping[str, Any]] = {}
    problems: list[str] = []
    counts = {"acked": 0, "refused": 0, "compare-failed": 0, "unknown-applied": 0, "unknown": 0,
              "below-base": 0}
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
                if compacted:
                    counts["below-base"] += 1   # overwritten where no chain is left
                else:
                    problems.append(f"acknowledged {what} is not in effect on the committed "
                                    "path")
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
               f"(committed path: {len(path) - 1} blocks from {path[0].id})")
    if counts["below-base"]:
        summary += (f"; {counts['below-base']} acknowledged writes were overwritten below "
                    "the base, where only the linearizability check sees them")
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
