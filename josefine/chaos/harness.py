"""`run_chaos`: a local cluster, a recorded client workload, a fault schedule, the checks.

Steps of one run (all files in ``cfg.out``):

1. launch ``cfg.nodes`` node processes with fault injection on (``cluster.toml``,
   ``node-<i>/node.log``, ``node-<i>/data``), wait for a leader;
2. start the status sampler (``status.jsonl``), the client workload (``history.jsonl``)
   and the nemesis; run for ``cfg.duration`` seconds;
3. stop the workload, heal everything, wait until every node answers with the same
   applied block and state-machine digest, read every key once more;
4. stop the cluster, read every node's committed path from its LevelDB, run the checks,
   write ``report.json`` / ``report.txt``.

With membership faults the node set changes during the run: the sampler, the clients and
the nemesis follow a `MemberView`; convergence and the chain checks cover the members at
the end (the leader's configuration), so a removed node's store is not counted as a
diverging replica, while its samples and its log (kept under ``departed/`` when its
directory was wiped) still feed the commit, leader and crash checks.
"""
from __future__ import annotations

import time
import traceback
from pathlib import Path
from typing import Any

import zmq

from josefine.chaos import checks
from josefine.chaos.config import ChaosConfig, find_free_ports
from josefine.chaos.members import MemberView
from josefine.chaos.nemesis import Nemesis
from josefine.chaos.powerfs import PowerLossFS
from josefine.chaos.netns_faults import KernelPartitioner
from josefine.chaos.report import ChaosReport, longest_unavailability, operation_counts
from josefine.chaos.sampler import StatusSampler, poll_status
from josefine.chaos.workload import ChaosRecorder, Workload
from josefine.check.history import load_history
from josefine.launch.cluster import Launcher
from josefine.runtime.snapshots import SNAPSHOT_DIR
from josefine.types import BlockId

__all__ = ["MEMBER_PORTS", "run_chaos", "wait_converged"]

MEMBER_PORTS = 32
"""Ports kept free above the initial nodes' when membership faults may add nodes (node i
listens on base_port + i - 1, and ids are never reused)."""


def _say(cfg: ChaosConfig, msg: str) -> None:
    if cfg.verbose:
        print(f"chaos: {msg}", flush=True)


def wait_converged(addresses: dict[int, str], cluster_id: str, timeout: float,
                   credentials: Any = None) -> tuple[bool, dict[int, dict[str, Any] | None], float]:
    """Wait until every member answers, one leader leads, and all applied the same blocks.

    "Same" means equal applied id and state-machine digest, equal to the leader's commit,
    seen in two consecutive polls. The members are those of the leader's configuration: a
    node of `addresses` outside it (it left the cluster) is not compared, and a member
    missing from `addresses` never answers. Returns (converged, last statuses of the
    members, seconds waited); before a leader is known, the statuses of all `addresses`.
    """
    started = time.monotonic()
    ctx = zmq.Context()
    stable = 0
    st: dict[int, dict[str, Any] | None] = {}
    try:
        while time.monotonic() - started < timeout:
            st = poll_status(ctx, addresses, cluster_id, timeout=1.0, credentials=credentials)
            leaders = [s for s in st.values() if s and s.get("role") == "leader"]
            if len(leaders) == 1 and leaders[0].get("members"):
                ids = sorted(int(m["id"]) for m in leaders[0]["members"])
                st = {i: st.get(i) for i in ids}
            good = None not in st.values()
            if good:
                applied = {tuple(s["applied"]) for s in st.values() if s}
                digests = {s.get("sm_digest") for s in st.values() if s}
                good = (len(leaders) == 1 and len(applied) == 1 and len(digests) == 1
                        and tuple(leaders[0]["commit"]) in applied)
            stable = stable + 1 if good else 0
            if stable >= 2:
                return True, st, time.monotonic() - started
            time.sleep(0.3)
        return False, st, time.monotonic() - started
    finally:
        ctx.term()


def _served_at_followers(samples: list[dict[str, Any]]) -> str:
    """How much of the workload followers served: the counters of each node process's last
    sample, summed over processes (a restarted node counts from zero again)."""
    last: dict[tuple[Any, Any], dict[str, Any]] = {}
    for smp in samples:
        last[(smp["node"], smp.get("pid"))] = smp
    reads = sum(int(s.get("follower_reads") or 0) for s in last.values())
    writes = sum(int(s.get("forwarded_writes") or 0) for s in last.values())
    return f"served at followers: {reads} reads (read index from the leader), {writes} " \
           "writes forwarded to the leader"


def _describe_statuses(st: dict[int, dict[str, Any] | None]) -> list[str]:
    out = []
    for i, s in sorted(st.items()):
        if s is None:
            out.append(f"node {i}: no answer")
        else:
            out.append(f"node {i}: {s.get('role')} term {s.get('term')} commit {s.get('commit')} "
                       f"applied {s.get('applied')} digest {str(s.get('sm_digest'))[:12]}")
    return out


def run_chaos(cfg: ChaosConfig) -> ChaosReport:
    """Run one chaos experiment; see the module docstring. Never leaves processes behind."""
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    history_path = out / "history.jsonl"
    if history_path.exists():
        raise FileExistsError(f"{history_path} exists: use a fresh --out directory per run")
    # Nodes added during the run listen on base_port + id - 1: keep a block free for them.
    spare = MEMBER_PORTS if "membership" in cfg.faults else 0
    base_port = cfg.base_port or find_free_ports(cfg.nodes + spare)
    launcher = Launcher(cfg.nodes, out, base_port, restart=True, fault_injection=True,
                        fsync=cfg.fsync, node_cmd=cfg.node_cmd, env=cfg.env,
                        out=None, netns=cfg.netns, netns_subnet=cfg.netns_subnet,
                        **dict(cfg.node_settings))
    power = _mount_power(cfg, launcher) if "powerloss" in cfg.faults else {}
    try:
        return _run(cfg, launcher, power, base_port)
    finally:
        for fs in power.values():
            fs.unmount()


def _mount_power(cfg: ChaosConfig, launcher: Launcher) -> dict[int, PowerLossFS]:
    """Each node's data dir on its own power-loss filesystem over ``node-<i>/disk``. Snapshot
    files sit in a strict subtree, where a rename counts only after a directory fsync (the
    discipline snapshots follow); LevelDB beside it runs with names durable at once
    (docs/powerloss.md: LevelDB itself leaves a new log's name to a later sync)."""
    mounts: dict[int, PowerLossFS] = {}
    try:
        for i in launcher.node_ids:
            data = Path(launcher.node_config(i).data_dir)
            disk = data.parent / "disk"
            data.mkdir(parents=True, exist_ok=True)
            disk.mkdir(parents=True, exist_ok=True)
            mounts[i] = PowerLossFS.mount(disk, data, strict_dirs=[SNAPSHOT_DIR])
    except BaseException:
        for fs in mounts.values():
            fs.unmount()
        raise
    return mounts


def _run(cfg: ChaosConfig, launcher: Launcher, power: dict[int, PowerLossFS],
         base_port: int) -> ChaosReport:
    out = Path(cfg.out)
    recorder = ChaosRecorder(out / "history.jsonl")
    report = ChaosReport(config=cfg.describe(), out_dir=str(out))
    sampler: StatusSampler | None = None
    nemesis: Nemesis | None = None
    workload: Workload | None = None
    view: MemberView | None = None
    members: list[int] | None = None
    t0 = t_end = time.monotonic_ns()
    converge: checks.CheckOutcome | None = None
    applied: dict[int, BlockId] = {}
    try:
        launcher.start()
        view = MemberView(launcher)
        addresses = view.addresses()
        _say(cfg, f"cluster {launcher.cluster_id} on ports {base_port}..; waiting for a leader")
        creds = view.credentials()
        sampler = StatusSampler(addresses, launcher.cluster_id, out / "status.jsonl",
                                interval=cfg.sample_interval, credentials=creds)
        sampler.start()
        deadline = time.monotonic() + cfg.startup_timeout
        while sampler.leader() is None:
            if time.monotonic() > deadline:
                raise RuntimeError(f"no leader within {cfg.startup_timeout} s of the start")
            time.sleep(0.1)
        workload = Workload(recorder, addresses, launcher.cluster_id, cfg, creds, view)
        plan = launcher.netns_plan
        partitioner = None if plan is None else KernelPartitioner(
            plan, {i: launcher.node_config(i).port for i in launcher.node_ids})
        nemesis = Nemesis(launcher, sampler, recorder, cfg, partitioner, power, view)
        _say(cfg, f"running {cfg.duration} s of workload and faults")
        t0 = time.monotonic_ns()
        workload.start()
        nemesis.start()
        time.sleep(cfg.duration)
        workload.stop()
        t_end = time.monotonic_ns()
        _say(cfg, "healing and waiting for convergence")
        nemesis.stop()
        view.refresh()   # (the nemesis did after each change; this is cheap and certain)
        addresses, creds = view.addresses(), view.credentials()
        ok, st, waited = wait_converged(addresses, launcher.cluster_id, cfg.converge_timeout,
                                        creds)
        if ok:
            members = sorted(st)
        applied = {i: BlockId(*s["applied"]) for i, s in st.items() if s and s.get("applied")}
        final: dict[str, Any] = {}
        if ok:
            final = workload.final_reads()
        passed = ok and len(final) == cfg.keys
        summary = (f"converged {waited:.1f} s after the heal; final reads of {len(final)}/"
                   f"{cfg.keys} keys succeeded" if ok else
                   f"no convergence within {cfg.converge_timeout} s of the heal")
        converge = checks.CheckOutcome("converged", passed, summary,
                                       [] if passed else _describe_statuses(st))
    except Exception as exc:  # noqa: BLE001 - reported; cleanup below
        report.error = f"{type(exc).__name__}: {exc}"
        report.notes.append(traceback.format_exc(limit=5))
    finally:
        if workload is not None:
            workload.stop()
        if nemesis is not None:
            nemesis.stop()
        if sampler is not None:
            sampler.stop()
            # A block may still commit after the convergence poll (a late election's
            # no-op): the applied path must reach the last commit any sample shows.
            for smp in sampler.samples:
                a = smp.get("applied")
                if a and (smp["node"] not in applied or a[1] > applied[smp["node"]].height):
                    applied[smp["node"]] = BlockId(*a)
        restart_events = launcher.restart_events
        launcher.stop()
        recorder.close()
    if t_end == t0:
        t_end = time.monotonic_ns()
    try:
        _analyse(cfg, launcher, report, converge, sampler, nemesis, workload, restart_events,
                 applied, t0, t_end, members)
    except Exception as exc:  # noqa: BLE001 - a broken analysis must still produce a report
        report.error = report.error or f"analysis failed: {type(exc).__name__}: {exc}"
        report.notes.append(traceback.format_exc(limit=8))
    report.write(out)
    return report


def _analyse(cfg: ChaosConfig, launcher: Launcher, report: ChaosReport,
             converge: checks.CheckOutcome | None, sampler: StatusSampler | None,
             nemesis: Nemesis | None, workload: Workload | None, restart_events: list,
             applied: dict[int, BlockId], t0: int, t_end: int,
             members: list[int] | None = None) -> None:
    history = load_history(Path(cfg.out) / "history.jsonl")
    report.workload_seconds = (t_end - t0) / 1e9
    report.operations = operation_counts(history)
    faults = []
    for f in (nemesis.faults if nemesis is not None else []):
        g = dict(f)
        g["start"] = round(f["start"] - t0 / 1e9, 3)
        g["end"] = None if f["end"] is None else round(f["end"] - t0 / 1e9, 3)
        faults.append(g)
    report.faults = faults
    report.unavailability = longest_unavailability(history, t0, t_end, faults)
    if converge is not None:
        report.checks.append(converge)
    _say(cfg, "checking")
    lin, _ = checks.check_linearizable(history, cfg.check_time_limit)
    report.checker_seconds = lin.elapsed
    report.checks.append(lin)
    run_by_launcher = sorted(launcher.node_ids)
    if members is None:   # no convergence: compare what the launcher runs
        members = run_by_launcher
    departed = dict(nemesis.departed) if nemesis is not None else {}
    _membership_summary(cfg, report, faults, members, run_by_launcher, departed, workload)
    data_dirs = {i: Path(launcher.node_config(i).data_dir) for i in members
                 if i in run_by_launcher}
    base_states: dict[int, checks.BaseState] = {}
    paths, errors = checks.load_committed_paths(data_dirs, launcher.cluster_id, applied,
                                                base_states)
    report.checks.append(checks.check_same_sequence(paths, errors))
    samples = sampler.samples if sampler is not None else []
    report.checks.append(checks.check_commits(samples, paths))
    logs = {**departed, **{i: launcher.log_path(i) for i in run_by_launcher}}
    report.checks.append(checks.check_leaders(samples, logs))
    report.checks.append(checks.check_writes(history, paths, base_states))
    kills = sum(len(f["nodes"]) for f in faults if f["kind"] in ("kill", "powerloss"))
    report.notes.append(_served_at_followers(samples))
    report.checks.append(checks.check_crashes(restart_events, logs, kills))
    if workload is not None:
        report.notes.extend(workload.errors)
    if nemesis is not None:
        report.notes.extend(f"nemesis: {e}" for e in nemesis.errors[:20])


def _membership_summary(cfg: ChaosConfig, report: ChaosReport, faults: list[dict[str, Any]],
                        members: list[int], run_by_launcher: list[int],
                        departed: dict[int, Path], workload: Workload | None) -> None:
    """What the membership faults did, for the report: the changes by op, the failures
    (each also a note), the members at the start and the end. A disagreement between the
    cluster's members and the nodes the launcher runs is reported, never hidden."""
    if "membership" not in cfg.faults:
        return
    changes = [f for f in faults if f["kind"] == "membership"]
    done = [f for f in changes if not f.get("error")]
    by_op: dict[str, int] = {}
    for f in done:
        by_op[f["variant"]] = by_op.get(f["variant"], 0) + 1
    report.membership = {
        "changes": len(changes), "by_op": by_op,
        "failed": [{"id": f["id"], "op": f["variant"], "error": f["error"]}
                   for f in changes if f.get("error")],
        "initial": list(range(1, cfg.nodes + 1)), "final": members,
        "departed": sorted(departed),
        "client_rebuilds": workload.rebuilds if workload is not None else 0}
    strangers = sorted(set(run_by_launcher) ^ set(members))
    if strangers:
        report.membership["mismatch"] = strangers
        report.notes.append(f"membership: the cluster's members {members} differ from the "
                            f"nodes the launcher runs {run_by_launcher}")
