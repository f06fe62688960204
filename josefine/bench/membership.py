"""`josefine bench --membership`: what a membership change costs on a launched cluster (issue
12's measurements), in one invocation.

Two parts, on one cluster of `nodes` launched by a `Launcher` (the object `josefine launch`
runs), each change made by the launcher exactly as `josefine member add/remove` makes it:

1. **empty**: on the fresh cluster, no load: `Launcher.add_member` of a new node (its
   directory, keys and process; it joins as a learner and is promoted once caught up),
   timed until the promotion is committed; then `Launcher.remove_member` of that node.
2. **under_load**: full load (`Load`, by default 8 clients x 256 writes in flight) for
   `load_minutes`; with the load still running, another new node is added the same way,
   then, `2 * window_s` seconds after that add returned, removed again (a voter by then);
   the load ends `window_s` seconds after the removal returned. For each change, the
   writes that completed in the `window_s` seconds before it began, while it ran, and in
   the `window_s` seconds after it returned (windows by completion time, clipped to the
   load), side by side: writes/s, p50, p99 and max latency, the longest stretch without a
   completed write, and the during/before and after/before ratios of writes/s and p99.
   The window after the add ends where the window before the removal begins.

Nothing here judges the figures against targets: it measures and reports.

JSON (`--membership --json`; stable keys):

    {"version": 1, "kind": "membership",
     "settings": {"nodes", "clients", "pipeline", "payload", "fsync", "load_minutes",
                  "window_s"},
     "empty": {"add": ADD, "remove": REMOVE},
     "under_load": {"load_s_before_add", "load_s" (the whole load), "writes",
                    "writes_per_s", "errors",
                    "add": ADD + {"windows": WINDOWS},
                    "remove": REMOVE + {"windows": WINDOWS}},
     "node_pids": [every node pid seen]}

    ADD = {"node": id, "seconds": the add_member call, "learner_s": until the learner was
           committed, "voter_s": until the promotion was committed (both from the
           launcher, counted from the start of the call), "role": the role add_member
           reported, "leader_role": the new node's role in the leader's configuration
           right after, "pid", "error": null or the launcher's one-line message}
    REMOVE = {"node", "seconds": the remove_member call, "committed_s": until the removal
              was committed, "done_s": until its process was stopped and the files
              updated, "member_after": whether the leader still lists it,
              "process_stopped": whether its process is gone, "error"}
    WINDOWS = {"before" | "during" | "after": {"from_s", "to_s" (relative to the change's
               start), "seconds", "writes", "writes_per_s", "p50_ms", "p99_ms", "max_ms",
               "longest_gap_ms"},
               "during_over_before" | "after_over_before": {"writes_per_s", "p99_ms"}}

A part that failed has null where it measured nothing (a change that was refused has
"error" set, and a remove that was never tried is null).
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Callable

from josefine.bench.runner import percentile
from josefine.bench.snapshots import Cluster, Load, _sleep_until, cluster_dir, run_load

WINDOW_S = 10.0
"""Seconds of load compared before and after each change."""

ADD_TIMEOUT_S = 300.0
"""Longest a `member add` may take (under full load the learner has to catch up with a
leader that keeps writing)."""

REMOVE_TIMEOUT_S = 60.0


def window_stats(done_t: list[float], lat_us: list[float], start: float, end: float,
                 origin: float = 0.0) -> dict[str, Any]:
    """The writes that completed in [start, end): their count, rate, p50/p99/max latency
    (ms) and the longest stretch (ms) without a completion, the window's edges included (an
    empty window is one gap). `from_s`/`to_s` are the edges relative to `origin`."""
    seconds = end - start
    times: list[float] = []
    lat: list[float] = []
    for t, us in zip(done_t, lat_us, strict=True):
        if start <= t < end:
            times.append(t)
            lat.append(us / 1000.0)
    times.sort()
    lat.sort()
    edges = [start, *times, end]
    gap = max((b - a for a, b in zip(edges[:-1], edges[1:], strict=True)), default=0.0)

    def q(p: float) -> float | None:
        return round(percentile(lat, p), 3) if lat else None
    return {"from_s": round(start - origin, 3), "to_s": round(end - origin, 3),
            "seconds": round(seconds, 3), "writes": len(times),
            "writes_per_s": round(len(times) / seconds, 1) if seconds > 0 else None,
            "p50_ms": q(0.50), "p99_ms": q(0.99), "max_ms": round(lat[-1], 3) if lat else None,
            "longest_gap_ms": round(max(gap, 0.0) * 1000, 1)}


def change_windows(load_start: float, load_end: float, began: float, ended: float,
                   window_s: float) -> dict[str, tuple[float, float]]:
    """The windows before, during and after a change that ran from `began` to `ended`
    while a load ran from `load_start` to `load_end`: `window_s` each side, clipped to the
    load."""
    return {"before": (max(load_start, began - window_s), began),
            "during": (began, ended),
            "after": (ended, max(ended, min(load_end, ended + window_s)))}


def compare_windows(done_t: list[float], lat_us: list[float], load_start: float,
                    load_end: float, began: float, ended: float,
                    window_s: float) -> dict[str, Any]:
    """`window_stats` of each of `change_windows`, times relative to `began`, and the
    during/before and after/before ratios of writes/s and p99."""
    out: dict[str, Any] = {
        name: window_stats(done_t, lat_us, a, b, origin=began)
        for name, (a, b) in change_windows(load_start, load_end, began, ended,
                                           window_s).items()}
    for name in ("during", "after"):
        out[f"{name}_over_before"] = {
            key: _ratio(out[name][key], out["before"][key]) for key in ("writes_per_s", "p99_ms")}
    return out


def _ratio(a: float | None, b: float | None) -> float | None:
    return round(a / b, 3) if a is not None and b else None


def leader_roles(cluster: Cluster, ids: list[int]) -> dict[int, str] | None:
    """{id: role} of the configuration of the node among `ids` that leads (newest term),
    or None when none of them answers as leader."""
    best: tuple[int, dict] | None = None
    for st in cluster.statuses(ids).values():
        if st is not None and st.get("role") == "leader" and (
                best is None or (st.get("term") or 0) > best[0]):
            best = (int(st.get("term") or 0), st)
    if best is None:
        return None
    return {int(m["id"]): str(m["role"]) for m in best[1].get("members") or []}


def _alive(pid: int | None) -> bool:
    if not pid:
        return False
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return b"josefine" in f.read()
    except OSError:
        return False


def _roles_now(cluster: Cluster, extra: int) -> dict[int, str] | None:
    """The leader's roles, asked a few times (a leader may be changing under load)."""
    ids = [*cluster.ids, extra]
    for _ in range(20):
        roles = leader_roles(cluster, ids)
        if roles is not None:
            return roles
        time.sleep(0.1)
    return None


def add_node(cluster: Cluster,
             timeout: float = ADD_TIMEOUT_S) -> tuple[dict[str, Any], tuple[float, float]]:
    """Add a new node through the launcher, timed: ADD in the module docstring, and when
    the launcher's call began and returned (monotonic)."""
    from josefine.launch.cluster import LaunchError
    launcher = cluster.launcher
    node = launcher.next_free_id()
    out: dict[str, Any] = {"node": node, "seconds": None, "learner_s": None, "voter_s": None,
                           "role": None, "leader_role": None, "pid": None, "error": None}
    t0 = time.monotonic()
    try:
        r = launcher.add_member(node, timeout=timeout)
    except LaunchError as exc:
        out["error"] = str(exc)
    else:
        out.update(learner_s=r["learner_s"], voter_s=r["voter_s"], role=r["role"])
    t1 = time.monotonic()
    out["seconds"] = round(t1 - t0, 3)
    if node in launcher.node_ids:
        out["pid"] = launcher.pid(node)
        if out["pid"]:
            cluster.pids_seen.add(out["pid"])
    roles = _roles_now(cluster, node)
    out["leader_role"] = None if roles is None else roles.get(node)
    return out, (t0, t1)


def remove_node(cluster: Cluster, node: int, pid: int | None,
                timeout: float = REMOVE_TIMEOUT_S) -> tuple[dict[str, Any], tuple[float, float]]:
    """Remove `node` through the launcher, timed: REMOVE in the module docstring, and when
    the launcher's call began and returned (monotonic)."""
    from josefine.launch.cluster import LaunchError
    out: dict[str, Any] = {"node": node, "seconds": None, "committed_s": None, "done_s": None,
                           "member_after": None, "process_stopped": None, "error": None}
    t0 = time.monotonic()
    try:
        r = cluster.launcher.remove_member(node, timeout=timeout)
    except LaunchError as exc:
        out["error"] = str(exc)
    else:
        out.update(committed_s=r["committed_s"], done_s=r["done_s"])
    t1 = time.monotonic()
    out["seconds"] = round(t1 - t0, 3)
    roles = _roles_now(cluster, node)
    out["member_after"] = None if roles is None else node in roles
    out["process_stopped"] = not _alive(pid)
    return out, (t0, t1)


def _changed(add: dict[str, Any]) -> bool:
    """Whether an add left its node a member (fully, or as a learner): then it is removed."""
    return add["error"] is None or add["leader_role"] is not None


def measure_empty(cluster: Cluster, say: Callable[[str], None]) -> dict[str, Any]:
    """Part 1: add a node to the idle cluster, then remove it."""
    say("empty: adding a node")
    add, _ = add_node(cluster)
    say(f"empty: node {add['node']}: {_add_line(add)}")
    remove = None
    if _changed(add):
        remove, _ = remove_node(cluster, add["node"], add["pid"])
        say(f"empty: node {add['node']}: {_remove_line(remove)}")
    return {"add": add, "remove": remove}


def measure_under_load(cluster: Cluster, load: Load, load_minutes: float, window_s: float,
                       say: Callable[[str], None]) -> dict[str, Any]:
    """Part 2: `load_minutes` of load, then an add and a remove with the load running."""
    load_s = load_minutes * 60
    budget = load_s + ADD_TIMEOUT_S + 3 * window_s + REMOVE_TIMEOUT_S + 30
    marks: dict[str, Any] = {}

    def changes(t_start: float, t_end: float) -> float:
        _sleep_until(t_start + load_s)
        say(f"under load: adding a node after {load_minutes:g} load minutes")
        add, marks["add_at"] = add_node(cluster)
        marks["add"] = add
        ended = marks["add_at"][1]
        say(f"under load: node {add['node']}: {_add_line(add)}")
        if not _changed(add):
            return ended + window_s
        _sleep_until(ended + 2 * window_s)
        say(f"under load: removing node {add['node']}")
        remove, marks["remove_at"] = remove_node(cluster, add["node"], add["pid"])
        marks["remove"] = remove
        say(f"under load: node {add['node']}: {_remove_line(remove)}")
        return marks["remove_at"][1] + window_s

    say(f"under load: {load_minutes:g} load minutes before the add")
    run = run_load(cluster, load, budget, during=changes)
    out: dict[str, Any] = {"load_s_before_add": round(load_s, 3),
                           "load_s": round(run.seconds, 3), "writes": len(run.done_t),
                           "writes_per_s": round(len(run.done_t) / run.seconds, 1),
                           "errors": run.errors, "add": None, "remove": None}
    for what in ("add", "remove"):
        if what in marks:
            began, ended = marks[f"{what}_at"]
            out[what] = {**marks[what], "windows": compare_windows(
                run.done_t, run.lat_us, run.t_start, run.t_end, began, ended, window_s)}
    return out


def run_membership_bench(nodes: int = 3, load: Load | None = None, load_minutes: float = 5.0,
                         window_s: float = WINDOW_S, fsync: bool = True,
                         say: Callable[[str], None] = lambda _: None,
                         workdir: Path | None = None) -> dict[str, Any]:
    """Both parts on one launched cluster; the JSON `--membership --json` prints.
    `workdir`: keep the cluster's directory (logs, data) there."""
    load = load or Load()
    with cluster_dir("josefine-members-", workdir) as d:
        cluster = Cluster(nodes, Path(d), fsync, {})
        try:
            cluster.launch()
            cluster.wait_leader()
            empty = measure_empty(cluster, say)
            under = measure_under_load(cluster, load, load_minutes, window_s, say)
        finally:
            cluster.stop()
    return {"version": 1, "kind": "membership",
            "settings": {"nodes": nodes, "clients": load.clients, "pipeline": load.pipeline,
                         "payload": load.payload, "fsync": fsync,
                         "load_minutes": load_minutes, "window_s": window_s},
            "empty": empty, "under_load": under, "node_pids": sorted(cluster.pids_seen)}


def _s(v: float | None) -> str:
    return "-" if v is None else f"{v:.2f} s"


def _add_line(a: dict[str, Any]) -> str:
    if a["error"] is not None:
        return f"add failed after {_s(a['seconds'])}: {a['error']}"
    return (f"learner committed {_s(a['learner_s'])}, voter {_s(a['voter_s'])} "
            f"(leader says {a['leader_role']})")


def _remove_line(r: dict[str, Any]) -> str:
    if r["error"] is not None:
        return f"remove failed after {_s(r['seconds'])}: {r['error']}"
    return (f"removal committed {_s(r['committed_s'])}, process stopped {_s(r['done_s'])}"
            f"{' (still listed!)' if r['member_after'] else ''}")


def format_report(doc: dict[str, Any]) -> str:
    """The human table of `run_membership_bench`'s result."""
    s = doc["settings"]
    lines = [f"membership bench: {s['nodes']} nodes, {s['clients']} clients x "
             f"{s['pipeline']} in flight, payload {s['payload']} B, fsync "
             f"{'on' if s['fsync'] else 'off'}; changes after {s['load_minutes']:g} load "
             f"minutes, windows of {s['window_s']:g} s", "",
             "member add until voter, and remove (seconds from the launcher's call)"]
    u = doc["under_load"]
    for label, part in (("empty cluster", doc["empty"]),
                        (f"after {s['load_minutes']:g} load min", u)):
        a, r = part["add"], part["remove"]
        if a is None:
            lines.append(f"  {label:<19} not reached")
            continue
        lines.append(f"  {label:<19} add node {a['node']}: {_add_line(a)}")
        if r is not None:
            lines.append(f"  {'':<19} remove node {r['node']}: {_remove_line(r)}")
    lines += ["", f"writes under load around each change (by completion time; load overall "
                  f"{u['writes_per_s']:.0f} w/s, {u['errors']} errors)",
              f"  {'change':<7} {'window':<7} {'s':>6} {'writes/s':>9} {'p50 ms':>8} "
              f"{'p99 ms':>8} {'max ms':>8} {'longest gap ms':>15}"]

    def num(v: float | None, fmt: str) -> str:
        return "-" if v is None else fmt.format(v)
    for what in ("add", "remove"):
        part = u[what]
        if part is None:
            continue
        ws = part["windows"]
        for i, name in enumerate(("before", "during", "after")):
            w = ws[name]
            lines.append(f"  {what if i == 0 else '':<7} {name:<7} {w['seconds']:6.1f} "
                         f"{num(w['writes_per_s'], '{:.0f}'):>9} {num(w['p50_ms'], '{:.2f}'):>8} "
                         f"{num(w['p99_ms'], '{:.2f}'):>8} {num(w['max_ms'], '{:.2f}'):>8} "
                         f"{w['longest_gap_ms']:15.1f}")
        d, f = ws["during_over_before"], ws["after_over_before"]
        lines.append(f"  {'':<7} during/before: writes/s x{d['writes_per_s']}, p99 "
                     f"x{d['p99_ms']}; after/before: writes/s x{f['writes_per_s']}, p99 "
                     f"x{f['p99_ms']}")
    return "\n".join(lines)
