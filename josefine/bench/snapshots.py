"""`josefine bench --snapshots`: what snapshots buy and cost, on a launched cluster under
full load (issue 11's measurements), in one invocation.

Four measurements:

1. **uptime**: load in phases up to each checkpoint (cumulative load minutes); at each, every
   node's data dir size (chain store, snapshot files, the rest) and RSS, then a full stop
   and a relaunch on the same directory, timed until every node has applied the highest
   commit any node reported before the stop. Load then resumes on the relaunched cluster.
2. **follower**: on that cluster, one follower is stopped for N minutes of load and started
   again while the load goes on; timed until it has applied the commit the leader reported
   when it was started, and its log is searched for "installed snapshot".
3. **on_off**: two fresh clusters, the same load for the same time, snapshots at the given
   (default: the node's) thresholds and snapshots off; writes/s of both and their ratio
   (with `rounds` > 1, that many pairs, the order alternating, and the ratio of the means).
   From the first "on" run, the latency of writes that completed within `AROUND_S` of a snapshot
   being written on any node (the nodes log "snapshot of ... written in X s": the window is
   [end - X - AROUND_S, end + AROUND_S]) against all the other writes.
4. **memory**: every node's RSS about once a second over the uptime run (the bench's
   `ProcSampler`), on a time axis of load seconds; the first and last minute's mean and the
   least-squares slope. A relaunch at each checkpoint starts fresh processes, so the slope of
   the last segment (the longest uninterrupted stretch with the default checkpoints) is
   reported on its own too (first and last minute and slope).

Nothing here judges the figures against targets: it measures and reports.
"""
from __future__ import annotations

import contextlib
import multiprocessing as mp
import os
import re
import tempfile
import threading
import time
from array import array
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Callable, ContextManager

from josefine.bench.runner import (BenchResult, ProcSampler, _get_result, _split, _wait_leader,
                                   percentile, summarize)
from josefine.launch.ports import free_port_block

AROUND_S = 1.0
"""A write is "around a snapshot" if it completed this close to one being written."""

CATCH_UP_TIMEOUT_S = 300.0
"""Longest wait for a relaunched cluster or a restarted follower to catch up; past it the
time is reported as None (not caught up)."""

_MIB = 1024 * 1024

_SNAPSHOT_LINE = re.compile(
    r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) node(\d+) \S+ \S+ node \d+: snapshot of "
    r".*? written in ([0-9.]+) s")


@dataclass(frozen=True)
class Load:
    """The client side of every load phase: the bench's pipelined raw workers."""

    clients: int = 8
    pipeline: int = 256
    payload: int = 10
    procs: int = 0
    """Worker processes (0: min(clients, 4), as `josefine bench`)."""


@dataclass
class LoadRun:
    """One load phase's raw results."""

    t_start: float
    t_end: float
    done_t: list[float] = field(default_factory=list)
    """Monotonic completion time of every write."""
    lat_us: list[float] = field(default_factory=list)
    errors: int = 0
    rss: dict[str, list[tuple[float, float]]] = field(default_factory=dict)
    """Per node: (seconds since t_start, RSS MiB)."""

    @property
    def seconds(self) -> float:
        return self.t_end - self.t_start


class Cluster:
    """A launched cluster that can be stopped and relaunched on the same directory and ports
    (a `Launcher` starts once; each relaunch is a new one)."""

    def __init__(self, nodes: int, directory: Path, fsync: bool,
                 settings: dict[str, Any]) -> None:
        self.nodes = nodes
        self.directory = directory
        self.fsync = fsync
        self.settings = settings
        self.port = free_port_block(nodes)
        self.launcher: Any = None
        self.pids_seen: set[int] = set()

    def launch(self) -> None:
        from josefine.launch.cluster import Launcher
        self.launcher = Launcher(self.nodes, self.directory, self.port, fsync=self.fsync,
                                 out=None, **self.settings)
        self.launcher.start()
        self._note_pids()

    def stop(self) -> None:
        if self.launcher is not None:
            self._note_pids()
            self.launcher.stop()

    def _note_pids(self) -> None:
        self.pids_seen.update(p for p in self.launcher.pids().values() if p)

    @property
    def ids(self) -> list[int]:
        return list(range(1, self.nodes + 1))

    def addresses(self) -> dict[int, str]:
        return {i: self.launcher.address(i) for i in self.ids}

    def status(self, node: int, timeout: float = 1.0) -> dict | None:
        from josefine.client import query_status
        try:
            return query_status(self.launcher.address(node), self.launcher.cluster_id, timeout,
                                credentials=self.launcher.credentials())
        except Exception:   # down, starting, or too busy to answer in time
            return None

    def statuses(self, nodes: list[int] | None = None) -> dict[int, dict | None]:
        ids = nodes or self.ids
        with ThreadPoolExecutor(len(ids)) as ex:
            return dict(zip(ids, ex.map(self.status, ids), strict=True))

    def wait_leader(self) -> int:
        return _wait_leader(self.addresses(), self.launcher.cluster_id,
                            self.launcher.credentials(), timeout=60)

    def wait_applied(self, nodes: list[int], height: int, t0: float,
                     timeout: float = CATCH_UP_TIMEOUT_S) -> dict[int, float | None]:
        """Seconds from `t0` until each node reported an applied height >= `height` (None:
        not within `timeout`). Each node is polled from its own thread, so one that is slow
        to answer does not delay noticing the others."""
        deadline = t0 + timeout

        def one(node: int) -> float | None:
            while time.monotonic() < deadline:
                st = self.status(node, timeout=0.25)
                if st is not None:
                    if st.get("pid"):
                        self.pids_seen.add(st["pid"])
                    if st.get("applied") and st["applied"][1] >= height:
                        return time.monotonic() - t0
                time.sleep(0.05)
            return None
        with ThreadPoolExecutor(len(nodes)) as ex:
            return dict(zip(nodes, ex.map(one, nodes), strict=True))

    def data_dir(self, node: int) -> Path:
        return Path(self.launcher.node_config(node).data_dir)


def run_load(cluster: Cluster, load: Load, seconds: float, warmup: float = 0.0,
             during: Callable[[float, float], float | None] | None = None) -> LoadRun:
    """Drive `cluster` with `load` for `seconds` (after `warmup`, plus one second for the
    worker processes to start), sampling every node's RSS; `during(t_start, t_end)` runs in
    this thread once the measured window has begun. If it returns a monotonic time before
    `t_end`, the load ends then instead (at once if that time has passed): a phase that
    lasts until something under load has finished need not budget for its worst case."""
    from josefine.bench.load import josefine_worker
    launcher = cluster.launcher
    addrs = cluster.addresses()
    creds = launcher.credentials()
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    t_start = time.monotonic() + 1.0 + warmup
    t_end = t_start + seconds
    end_at = ctx.RawValue("d", t_end)
    ps = []
    for w, n in enumerate(_split(load.clients, load.procs or min(load.clients, 4))):
        if n:
            p = ctx.Process(target=josefine_worker,
                            args=(w, addrs, launcher.cluster_id, n * load.pipeline, load.payload,
                                  t_start, t_end, q, creds, end_at))
            p.start()
            ps.append(p)
    run = LoadRun(t_start, t_end)
    sampler = ProcSampler(lambda: {f"node{i}": launcher.pid(i) for i in cluster.ids})
    sampling = False
    try:
        _sleep_until(t_start)
        sampler.start()
        sampling = True
        if during is not None:
            try:
                sooner = during(t_start, t_end)
            except BaseException:
                run.t_end = end_at.value = time.monotonic()   # the workers stop too
                raise
            if sooner is not None and sooner < t_end:
                run.t_end = end_at.value = max(sooner, time.monotonic())
        _sleep_until(run.t_end)
    finally:
        scratch = BenchResult("josefine", "", cluster.nodes, load.clients, load.pipeline,
                              load.payload, run.seconds, cluster.fsync)
        if sampling:
            sampler.stop(run.seconds, scratch)
            run.rss = scratch.rss_timeline
        results = [_get_result(q, ps) for _ in ps]
        for p in ps:
            p.join(10)
    for r in results:
        a, b = array("d"), array("d")
        a.frombytes(r["done_t"])
        b.frombytes(r["lat_us"])
        run.done_t.extend(a)
        run.lat_us.extend(b)
        run.errors += r["errors"]
    return run


def _sleep_until(t: float) -> None:
    while (left := t - time.monotonic()) > 0:
        time.sleep(min(0.2, left))


def dir_bytes(path: Path) -> int:
    """Sum of the sizes of the files under `path` (0 if it does not exist). LevelDB deletes
    files while it compacts; one that vanishes between listing and stat counts 0."""
    total = 0
    for root, _, files in os.walk(path):
        for f in files:
            try:
                total += os.stat(os.path.join(root, f)).st_size
            except FileNotFoundError:
                pass
    return total


def data_dir_sizes(data_dir: Path) -> dict[str, int]:
    """A node's data dir in bytes: its chain store, its snapshot files, and everything."""
    return {"chain_bytes": dir_bytes(data_dir / "chain"),
            "snapshot_bytes": dir_bytes(data_dir / "snapshots"),
            "data_bytes": dir_bytes(data_dir)}


def snapshot_windows(log_text: str, margin: float = AROUND_S,
                     wall_minus_mono: float | None = None) -> list[tuple[float, float]]:
    """The monotonic-clock windows around each snapshot a node log reports written:
    [end - seconds - margin, end + margin]. Log times are wall-clock with millisecond
    resolution; `wall_minus_mono` maps them (default: this machine's offset now)."""
    off = time.time() - time.monotonic() if wall_minus_mono is None else wall_minus_mono
    out = []
    for line in log_text.splitlines():
        m = _SNAPSHOT_LINE.match(line)
        if m is None:
            continue
        end = datetime.strptime(m.group(1), "%Y-%m-%d %H:%M:%S,%f").timestamp() - off
        out.append((end - float(m.group(3)) - margin, end + margin))
    return out


def split_around(done_t: list[float], lat_us: list[float],
                 windows: list[tuple[float, float]]) -> dict[str, Any]:
    """p99 and p99.9 latency (ms) of the writes that completed inside any window against
    the others, with their counts and the p99.9 ratio (around / others)."""
    near: list[float] = []
    rest: list[float] = []
    ws = sorted(windows)
    for t, us in zip(done_t, lat_us, strict=True):
        (near if any(a <= t <= b for a, b in ws) else rest).append(us / 1000.0)
    near.sort()
    rest.sort()

    def q(vals: list[float], p: float) -> float | None:
        return round(percentile(vals, p), 3) if vals else None
    out = {"around_writes": len(near), "other_writes": len(rest),
           "around_p99_ms": q(near, 0.99), "around_p99.9_ms": q(near, 0.999),
           "other_p99_ms": q(rest, 0.99), "other_p99.9_ms": q(rest, 0.999)}
    a, o = out["around_p99.9_ms"], out["other_p99.9_ms"]
    out["p99.9_ratio"] = round(a / o, 3) if a is not None and o else None
    return out


def memory_stats(timeline: list[tuple[float, float]],
                 segment_starts: list[float]) -> dict[str, Any]:
    """First and last minute's mean RSS (MiB) and the least-squares slope (MiB per minute)
    over all samples, and the same over the samples since the last of `segment_starts` (a
    relaunch): processes restart there, so only a segment shows one process's growth."""
    out: dict[str, Any] = _minutes_and_slope(timeline)
    since = max((s for s in segment_starts if timeline and s <= timeline[-1][0]), default=0.0)
    out["last_segment"] = {"from_s": since,
                           **_minutes_and_slope([(t, m) for t, m in timeline if t >= since])}
    return out


def _minutes_and_slope(timeline: list[tuple[float, float]]) -> dict[str, float | None]:
    if not timeline:
        return {"first_minute_mib": None, "last_minute_mib": None, "slope_mib_per_min": None}
    first = [m for t, m in timeline if t < timeline[0][0] + 60]
    last = [m for t, m in timeline if t > timeline[-1][0] - 60]
    return {"first_minute_mib": round(sum(first) / len(first), 1),
            "last_minute_mib": round(sum(last) / len(last), 1),
            "slope_mib_per_min": _slope(timeline)}


def _slope(points: list[tuple[float, float]]) -> float | None:
    """Least-squares slope in MiB per minute of (seconds, MiB) points."""
    if len(points) < 2:
        return None
    n = len(points)
    mt = sum(t for t, _ in points) / n
    mm = sum(m for _, m in points) / n
    var = sum((t - mt) ** 2 for t, _ in points)
    if var == 0:
        return None
    return round(sum((t - mt) * (m - mm) for t, m in points) / var * 60, 3)


def _height(pair: list[int] | None) -> int | None:
    return None if pair is None else pair[1]


def _node_state(cluster: Cluster, statuses: dict[int, dict | None]) -> dict[str, dict]:
    out = {}
    for i in cluster.ids:
        st = statuses.get(i) or {}
        rss = st.get("rss_bytes")
        out[f"node{i}"] = {**data_dir_sizes(cluster.data_dir(i)),
                           "rss_mib": None if rss is None else round(rss / _MIB, 1),
                           "commit": st.get("commit"), "applied": st.get("applied"),
                           "base": st.get("base"), "snapshot": st.get("snapshot")}
    return out


def measure_uptime(cluster: Cluster, load: Load, minutes_at: list[float],
                   say: Callable[[str], None]) -> tuple[list[dict], dict[str, list], list[float]]:
    """Part 1. Returns the checkpoints, the RSS timeline per node on the load-seconds axis,
    and the load second at which each relaunch happened."""
    checkpoints = []
    rss: dict[str, list] = {}
    relaunched_at: list[float] = []
    done_s = 0.0
    cluster.launch()
    cluster.wait_leader()
    for minutes in minutes_at:
        seconds = minutes * 60 - done_s
        say(f"uptime: {seconds:.0f} s of load, to {minutes:g} load minutes")
        run = run_load(cluster, load, seconds)
        for name, samples in run.rss.items():
            rss.setdefault(name, []).extend((round(done_s + t, 1), m) for t, m in samples)
        done_s += run.seconds
        sts = cluster.statuses()
        state = _node_state(cluster, sts)
        commits = [h for s in sts.values() if s and (h := _height(s.get("commit"))) is not None]
        target = max(commits, default=0)
        say(f"uptime: relaunching at commit {target}")
        cluster.stop()
        t0 = time.monotonic()
        cluster.launch()
        per_node = cluster.wait_applied(cluster.ids, target, t0)
        relaunched_at.append(done_s)
        times = list(per_node.values())
        checkpoints.append({
            "load_minutes": round(done_s / 60, 3), "writes": len(run.done_t),
            "writes_per_s": round(len(run.done_t) / run.seconds, 1), "errors": run.errors,
            "commit_before_stop": target, "nodes": state,
            "relaunch_s": None if None in times else round(max(t or 0.0 for t in times), 3),
            "relaunch_per_node_s": {f"node{i}": None if t is None else round(t, 3)
                                    for i, t in per_node.items()}})
    return checkpoints, rss, relaunched_at


def measure_follower(cluster: Cluster, load: Load, down_minutes: float, catchup_s: float,
                     say: Callable[[str], None]) -> dict[str, Any]:
    """Part 2, on a running cluster: a follower down for `down_minutes` of load, started
    again while the load goes on for another `catchup_s` seconds (longer if it needs)."""
    leader = cluster.wait_leader()
    follower = next(i for i in cluster.ids if i != leader)
    before = cluster.status(follower) or {}
    say(f"follower: stopping node {follower} for {down_minutes:g} load minutes")
    cluster.launcher.stop_node(follower)
    log_path = cluster.launcher.log_path(follower)
    out: dict[str, Any] = {"node": follower, "leader": leader, "down_minutes": down_minutes,
                           "applied_before": _height(before.get("applied"))}

    def restart(t_start: float, t_end: float) -> None:
        _sleep_until(t_start + down_minutes * 60)
        others = cluster.statuses([i for i in cluster.ids if i != follower])
        commits = [h for s in others.values() if s and (h := _height(s.get("commit"))) is not None]
        bases = [h for s in others.values() if s and (h := _height(s.get("base"))) is not None]
        out["leader_commit_at_restart"] = target = max(commits, default=0)
        out["leader_base_at_restart"] = max(bases, default=None)
        offset = log_path.stat().st_size if log_path.exists() else 0
        say(f"follower: starting node {follower}; target commit {target}")
        t0 = time.monotonic()
        cluster.launcher.start_node(follower)
        took = cluster.wait_applied([follower], target, t0)[follower]
        out["catch_up_s"] = None if took is None else round(took, 3)
        out["load_while_catching_up"] = time.monotonic() < t_end
        with open(log_path, "rb") as f:
            f.seek(offset)
            out["installed_snapshot"] = b"installed snapshot" in f.read()

    run = run_load(cluster, load, down_minutes * 60 + catchup_s, during=restart)
    after = cluster.status(follower) or {}
    out.update(writes=len(run.done_t), writes_per_s=round(len(run.done_t) / run.seconds, 1),
               base_after=after.get("base"), snapshot_after=after.get("snapshot"))
    return out


def cluster_dir(prefix: str, workdir: Path | None) -> ContextManager[str]:
    """A temporary directory for one cluster, deleted afterwards; under `workdir`, a new
    directory that is kept (its node logs and data, to look into a run afterwards)."""
    if workdir is None:
        return tempfile.TemporaryDirectory(prefix=prefix)
    workdir.mkdir(parents=True, exist_ok=True)
    return contextlib.nullcontext(tempfile.mkdtemp(prefix=prefix, dir=workdir))


def measure_on_off(nodes: int, load: Load, seconds: float, warmup: float, fsync: bool,
                   on_settings: dict[str, Any], say: Callable[[str], None],
                   pids: set[int], workdir: Path | None = None,
                   rounds: int = 1) -> dict[str, Any]:
    """Part 3: the same load on fresh clusters, snapshots on and off, `rounds` pairs.

    Why rounds: one on-then-off pair is at the mercy of the machine's drift (measured here:
    writes/s of identical runs moved 45k -> 53k over half an hour, more than snapshots
    cost). Each round reverses the order of the one before (on, off, off, on, ...), and the
    ratio is of the means over all rounds. "on" and "off" keep the first round's details."""
    out: dict[str, Any] = {}
    off = {"snapshot_blocks": 0, "snapshot_bytes": 0, "snapshot_on_stop_blocks": 0}
    per_round: list[dict[str, Any]] = []
    for r in range(rounds):
        pair = (("on", on_settings), ("off", off))
        got: dict[str, float] = {}
        for mode, settings in (pair if r % 2 == 0 else pair[::-1]):
            got[mode] = _on_off_run(nodes, load, seconds, warmup, fsync, mode, settings, say,
                                    pids, workdir, out if r == 0 else None)
        per_round.append({"on_writes_per_s": got["on"], "off_writes_per_s": got["off"],
                          "ratio": round(got["on"] / got["off"], 3) if got["off"] else None})
    on = sum(x["on_writes_per_s"] for x in per_round) / rounds
    off_mean = sum(x["off_writes_per_s"] for x in per_round) / rounds
    out["throughput_on_over_off"] = round(on / off_mean, 3) if off_mean else None
    out["rounds"] = per_round
    return out


def _on_off_run(nodes: int, load: Load, seconds: float, warmup: float, fsync: bool, mode: str,
                settings: dict[str, Any], say: Callable[[str], None], pids: set[int],
                workdir: Path | None, out: dict[str, Any] | None) -> float:
    """One fresh cluster under load; its details into out[mode] if `out`; its writes/s."""
    say(f"on/off: {seconds:g} s with snapshots {mode}")
    with cluster_dir(f"josefine-snap-{mode}-", workdir) as d:
        cluster = Cluster(nodes, Path(d), fsync, settings)
        try:
            cluster.launch()
            cluster.wait_leader()
            run = run_load(cluster, load, seconds, warmup)
            sizes = {f"node{i}": data_dir_sizes(cluster.data_dir(i)) for i in cluster.ids}
            windows: list[tuple[float, float]] = []
            for i in cluster.ids:
                windows += snapshot_windows(
                    cluster.launcher.log_path(i).read_text(errors="replace"))
        finally:
            cluster.stop()
            pids |= cluster.pids_seen
    res = BenchResult("josefine", f"snapshots-{mode}", nodes, load.clients, load.pipeline,
                      load.payload, seconds, fsync, errors=run.errors)
    summarize(res, run.done_t, run.lat_us, run.t_start)
    res.rss_timeline = run.rss
    inside = [w for w in windows if w[1] >= run.t_start and w[0] <= run.t_end]
    if out is not None:
        out[mode] = {"result": res.to_dict(), "nodes": sizes,
                     "snapshots_written": len(inside),
                     "around_snapshot": split_around(run.done_t, run.lat_us, inside)}
    return float(res.to_dict()["writes_per_s"])


def run_snapshot_bench(nodes: int = 3, load: Load | None = None,
                       minutes_at: tuple[float, ...] = (1, 5, 10), follower_down: float = 5,
                       catchup_s: float = 30, on_off_s: float = 60, warmup: float = 2,
                       fsync: bool = True, settings: dict[str, Any] | None = None,
                       say: Callable[[str], None] = lambda _: None,
                       workdir: Path | None = None, on_off_rounds: int = 1) -> dict[str, Any]:
    """All four measurements; `settings` are NodeConfig keys for every cluster with snapshots
    on (e.g. snapshot_blocks), the node defaults if None; `workdir`: keep the clusters'
    directories there. The JSON `--snapshots --json` prints."""
    load = load or Load()
    settings = dict(settings or {})
    pids: set[int] = set()
    with cluster_dir("josefine-snap-uptime-", workdir) as d:
        cluster = Cluster(nodes, Path(d), fsync, settings)
        try:
            checkpoints, rss, relaunched_at = measure_uptime(cluster, load, list(minutes_at), say)
            follower = (measure_follower(cluster, load, follower_down, catchup_s, say)
                        if follower_down > 0 and nodes > 1 else None)
        finally:
            cluster.stop()
            pids |= cluster.pids_seen
    on_off = measure_on_off(nodes, load, on_off_s, warmup, fsync, settings, say, pids, workdir,
                            on_off_rounds)
    # the last relaunch has no samples after it (part 2 is not sampled): not a segment
    memory = {name: {**memory_stats(tl, relaunched_at[:-1]), "samples": len(tl)}
              for name, tl in sorted(rss.items())}
    return {"version": 1, "kind": "snapshots",
            "settings": {"nodes": nodes, "clients": load.clients, "pipeline": load.pipeline,
                         "payload": load.payload, "fsync": fsync, "minutes_at": list(minutes_at),
                         "follower_down_minutes": follower_down, "catchup_s": catchup_s,
                         "on_off_s": on_off_s, "on_off_rounds": on_off_rounds,
                         "node_settings": settings,
                         "around_s": AROUND_S},
            "uptime": checkpoints, "follower": follower, "on_off": on_off,
            "memory": memory, "rss_timeline": rss, "node_pids": sorted(pids)}


def format_report(doc: dict[str, Any]) -> str:
    """The human table of `run_snapshot_bench`'s result."""
    s = doc["settings"]
    lines = [f"snapshots bench: {s['nodes']} nodes, {s['clients']} clients x {s['pipeline']} "
             f"in flight, payload {s['payload']} B, fsync {'on' if s['fsync'] else 'off'}, "
             f"node settings {s['node_settings'] or 'defaults'}", "",
             "disk and restart vs uptime (MiB per node; relaunch: stop all, start all, until "
             "every node applied the pre-stop commit)",
             f"{'load min':>8} {'writes/s':>9} {'commit':>8}  {'chain MiB':<20} "
             f"{'snapshots MiB':<20} {'RSS MiB':<17} {'relaunch s':>10}"]

    def per_node(nodes: dict, key: str, scale: float = _MIB, fmt: str = "{:.1f}") -> str:
        vals = [n.get(key) for n in nodes.values()]
        return " ".join("-" if v is None else fmt.format(v / scale) for v in vals)
    for c in doc["uptime"]:
        rel = c["relaunch_s"]
        lines.append(f"{c['load_minutes']:8.2f} {c['writes_per_s']:9.0f} "
                     f"{c['commit_before_stop']:8d}  {per_node(c['nodes'], 'chain_bytes'):<20} "
                     f"{per_node(c['nodes'], 'snapshot_bytes'):<20} "
                     f"{per_node(c['nodes'], 'rss_mib', 1, '{:.0f}'):<17} "
                     f"{'timeout' if rel is None else f'{rel:.2f}':>10}")
    f = doc["follower"]
    if f is not None:
        took = f.get("catch_up_s")
        lines += ["", f"follower catch-up: node {f['node']} down {f['down_minutes']:g} load "
                      f"minutes (applied {f['applied_before']} when stopped); leader commit "
                      f"{f.get('leader_commit_at_restart')} base {f.get('leader_base_at_restart')} "
                      f"at restart; caught up in "
                      f"{'timeout' if took is None else f'{took:.2f} s'}; installed snapshot: "
                      f"{'yes' if f.get('installed_snapshot') else 'no'}"]
    oo = doc["on_off"]
    lines += ["", f"snapshots on vs off, {s['on_off_s']:g} s each (fresh cluster each)"]
    for mode in ("on", "off"):
        r = oo[mode]["result"]
        lat = r["latency_ms"]
        disk = per_node(oo[mode]["nodes"], "data_bytes")
        lines.append(f"  {mode:3} {r['writes_per_s']:9.0f} w/s  p50 {lat['p50']:7.2f} p99 "
                     f"{lat['p99']:7.2f} p99.9 {lat['p99.9']:7.2f} ms  snapshots written "
                     f"{oo[mode]['snapshots_written']}  data MiB [{disk}]")
    rounds = oo.get("rounds") or []
    per = ", ".join(f"{x['ratio']}" for x in rounds)
    lines.append(f"  throughput on/off: {oo['throughput_on_over_off']}"
                 + (f" (mean of {len(rounds)} rounds, order alternating; per round: {per})"
                    if len(rounds) > 1 else ""))
    a = oo["on"]["around_snapshot"]
    lines.append(f"  p99.9 within {s['around_s']:g} s of a snapshot: {a['around_p99.9_ms']} ms "
                 f"({a['around_writes']} writes); elsewhere: {a['other_p99.9_ms']} ms "
                 f"({a['other_writes']} writes); ratio {a['p99.9_ratio']}")
    lines += ["", "memory over the uptime run (RSS MiB; relaunches start fresh processes)"]
    for name, m in doc["memory"].items():
        seg = m["last_segment"]
        lines.append(f"  {name}: first minute {m['first_minute_mib']}, last minute "
                     f"{m['last_minute_mib']}, slope {m['slope_mib_per_min']} MiB/min; since "
                     f"the relaunch at {seg['from_s']:g} s: first minute "
                     f"{seg['first_minute_mib']}, last minute {seg['last_minute_mib']}, slope "
                     f"{seg['slope_mib_per_min']} MiB/min; {m['samples']} samples")
    return "\n".join(lines)


def say_to_stderr(enabled: bool) -> Callable[[str], None]:
    """Timestamped phase lines on stderr, so a long run shows where it is."""
    import sys
    lock = threading.Lock()

    def say(msg: str) -> None:
        if enabled:
            with lock:
                print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)
    return say
