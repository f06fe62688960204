"""`josefine bench`: throughput and latency of a fresh local cluster, optionally beside
PySyncObj in the same invocation.

    josefine bench --nodes 3 --clients C --duration S --payload BYTES [--pipeline P]
                   [--no-fsync] [--compare pysyncobj] [--json] [--plot FILE.png]
                   [--failover [--trials N]] [--embedded | --client-api]

JSON output (stable): {"version": 1, "results": [BenchResult...], "ratios": {...}, "floor":
{"durable": {...}, "no-fsync": {...}} with --floor (else null),
"failover": {...} | null}; each result has system, mode, nodes, clients, pipeline, payload,
duration_s, fsync, writes, writes_per_s, latency_ms{p50,p90,p99,p99.9,max},
cpu_per_node{nodeN: cpu s per s}, peak_rss_mib{nodeN}, errors, timeline[[t, n, p50]],
rss_timeline{nodeN: [[t, MiB], ...]} (current RSS about once a second).

    josefine bench --snapshots [--minutes-at 1,5,10] [--follower-down-minutes 5]
                   [--catchup-seconds 30] [--on-off-seconds 60] [--on-off-rounds 1]
                   [--snapshot-blocks N] [--snapshot-bytes N] [--clients 8] [--pipeline 256] [--json]

measures what issue 11 asks of snapshots (josefine.bench.snapshots says how); its JSON is
{"version": 1, "kind": "snapshots", "settings", "uptime": [checkpoint...], "follower",
"on_off": {"on", "off", "throughput_on_over_off", "rounds"}, "memory", "rss_timeline", "node_pids"}.

    josefine bench --membership [--load-minutes 5] [--window-seconds 10] [--clients 8]
                   [--pipeline 256] [--json]

measures what a membership change costs (josefine.bench.membership says how, and documents
its JSON: {"version": 1, "kind": "membership", "settings", "empty", "under_load",
"node_pids"}).

With --failover, "failover" holds the unplanned trials (SIGKILL of the leader) as always:
{"trials", "samples_ms", "median_ms", "min_ms", "max_ms", "election_timeout_ms",
"median_in_election_timeouts"}, and under "planned" the same trials with the leader
stopped by SIGTERM (it hands leadership over first): {"samples_ms", "median_ms", "min_ms",
"max_ms", "median_in_election_timeouts", "stopped", "successors", "handed_to"}
(josefine.bench.failover).
"""
from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import Any

from tqdm import tqdm

from josefine.bench.runner import BenchResult, run_josefine, run_pysyncobj


class _Progress:
    """A progress bar on stderr (tqdm), shown only on a terminal; called with the fraction
    done, from 0.0 to 1.0."""

    def __init__(self, label: str, enabled: bool) -> None:
        self.bar = tqdm(total=100, desc=f"{label:32}", unit="%", leave=True,
                        disable=not (enabled and sys.stderr.isatty()),
                        bar_format="{desc} {bar:30} {n:3.0f}%")

    def __call__(self, frac: float) -> None:
        n = round(min(1.0, max(0.0, frac)) * 100)
        if n > self.bar.n:
            self.bar.update(n - self.bar.n)
        if n >= 100:
            self.bar.close()


def _fmt(r: BenchResult) -> str:
    lat = r.latency_ms
    cpu = " ".join(f"{v:.2f}" for v in r.cpu_per_node.values())
    rss = " ".join(f"{v:.0f}" for v in r.peak_rss_mib.values())
    return (f"{r.system:9} {r.mode:9} {r.writes_per_s:10.0f} w/s  p50 {lat['p50']:7.2f} "
            f"p90 {lat['p90']:7.2f} p99 {lat['p99']:7.2f} p99.9 {lat['p99.9']:7.2f} ms  "
            f"cpu/node [{cpu}]  peak RSS MiB [{rss}]  errors {r.errors}"
            + (f"  first leader {lat['first_leader']:.0f} ms after launch"
               if "first_leader" in lat else ""))


def _ratios(results: list[BenchResult]) -> dict[str, Any]:
    jose = next((r for r in results if r.system == "josefine"), None)
    pso = [r for r in results if r.system == "pysyncobj"]
    if jose is None:
        return {}

    def variant(suffix: str) -> BenchResult | None:
        """The second Josefine run of a --compare (its mode ends with `suffix`)."""
        return next((r for r in results if r.system == "josefine" and r is not jose
                     and r.mode.endswith(suffix)), None)

    def pair(a: BenchResult, b: BenchResult, name: str) -> dict[str, Any]:
        """a's throughput over b's and a's p50 minus b's, under `name`."""
        return {f"throughput_{name}": _ratio(a.writes_per_s, b.writes_per_s),
                f"p50_{name.replace('_vs_', '_minus_')}_ms":
                    round(a.latency_ms["p50"] - b.latency_ms["p50"], 3)}
    measured = variant("-metrics")
    if measured is not None:
        return pair(measured, jose, "metrics_vs_off")
    plain = variant("-insecure")
    if plain is not None:
        return pair(jose, plain, "curve_vs_insecure")
    if not pso:
        return {}
    best = max(pso, key=lambda r: r.writes_per_s)
    nob = next((r for r in pso if r.mode == "no-batch"), None)
    out = {"throughput_vs_pysyncobj_best": _ratio(jose.writes_per_s, best.writes_per_s),
           "pysyncobj_best_mode": best.mode}
    if nob is not None:
        out["p50_vs_pysyncobj_nobatch"] = _ratio(jose.latency_ms["p50"], nob.latency_ms["p50"])
    for r in pso:
        out[f"throughput_vs_pysyncobj_{r.mode}"] = _ratio(jose.writes_per_s, r.writes_per_s)
    return out


def _ratio(a: float, b: float) -> float | None:
    return round(a / b, 3) if b and not math.isnan(a) and not math.isnan(b) else None


def _plot(results: list[BenchResult], path: str) -> None:
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise SystemExit(
            "josefine bench: --plot needs matplotlib (pip install 'josefine[bench]')") from None
    fig, (a1, a2) = plt.subplots(2, 1, figsize=(9, 7), sharex=True)
    for r in results:
        ts = [t for t, _, _ in r.timeline]
        a1.plot(ts, [n / 0.5 for _, n, _ in r.timeline], label=f"{r.system} {r.mode}")
        a2.plot(ts, [p for _, _, p in r.timeline], label=f"{r.system} {r.mode}")
    a1.set_ylabel("writes/s")
    a2.set_ylabel("p50 latency (ms)")
    a2.set_yscale("log")
    a2.set_xlabel("seconds into the measured window")
    a1.legend()
    a1.set_title("josefine bench")
    fig.tight_layout()
    fig.savefig(path)


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="josefine bench", description=__doc__.split("\n")[0])
    ap.add_argument("--nodes", type=int, default=3, help="cluster size (default 3)")
    ap.add_argument("--clients", type=int, default=None,
                    help="client streams, each in its own worker (default 1; 8 with "
                         "--snapshots)")
    ap.add_argument("--pipeline", type=int, default=None,
                    help="writes each client keeps outstanding (default 1: sequential; 256 "
                         "with --snapshots)")
    ap.add_argument("--duration", type=float, default=10.0, help="measured seconds")
    ap.add_argument("--warmup", type=float, default=None, help="seconds before measuring")
    ap.add_argument("--payload", type=int, default=10, help="value bytes per write")
    ap.add_argument("--no-fsync", action="store_true", help="Josefine without fsync")
    ap.add_argument("--compare", choices=["pysyncobj", "insecure", "metrics"], default=None,
                    help="pysyncobj: the same load on PySyncObj; insecure: the same load on "
                         "Josefine without Curve, for the cost of encryption; metrics: the "
                         "same load with Prometheus metrics on (scraped once a second), for "
                         "their cost")
    ap.add_argument("--insecure", action="store_true",
                    help="Josefine without Curve (plaintext, unauthenticated)")
    ap.add_argument("--json", action="store_true", help="print JSON on stdout")
    ap.add_argument("--plot", metavar="FILE.png", default=None,
                    help="write throughput and p50 over time of every system run here")
    ap.add_argument("--failover", action="store_true",
                    help="also measure leader kill (SIGKILL) and planned leader stop "
                         "(SIGTERM: it hands leadership over) to the first write committed "
                         "by its successor")
    ap.add_argument("--trials", type=int, default=5, help="failover trials")
    ap.add_argument("--client-api", action="store_true",
                    help="drive Josefine through the public Client from --clients threads "
                         "(one process) instead of pipelined raw workers")
    ap.add_argument("--embedded", action="store_true",
                    help="generate Josefine's load inside node 1's process through the "
                         "embedding API (Node.propose), as PySyncObj's load runs inside its "
                         "leader: the like-for-like latency comparison")
    ap.add_argument("--floor", action="store_true",
                    help="also run the bare commit loop (josefine.bench.bare_loop: the same "
                         "processes' replication and LevelDB writes without Raft or actors) "
                         "sequentially, durable and without fsync, in the same run, and print "
                         "Josefine's p50 as a multiple of each")
    ap.add_argument("--no-progress", action="store_true", help="no progress bars on stderr")
    snap = ap.add_argument_group(
        "snapshots", "--snapshots measures disk, relaunch time, follower catch-up, throughput "
                     "and latency with snapshots on and off, and memory, under full load "
                     "(josefine.bench.snapshots); it replaces the normal run")
    snap.add_argument("--snapshots", action="store_true",
                      help="run the snapshot measurements instead of the normal bench")
    snap.add_argument("--minutes-at", type=_minutes, default=[1.0, 5.0, 10.0],
                      metavar="M1,M2,...",
                      help="checkpoints in cumulative load minutes: disk, RSS, and a full "
                           "relaunch timed until caught up (default 1,5,10)")
    snap.add_argument("--follower-down-minutes", type=float, default=5.0, metavar="M",
                      help="load minutes a stopped follower misses before it is started "
                           "again (default 5; 0 skips this part)")
    snap.add_argument("--catchup-seconds", type=float, default=30.0, metavar="S",
                      help="load that goes on after the follower is started (default 30)")
    snap.add_argument("--on-off-seconds", type=float, default=60.0, metavar="S",
                      help="measured seconds of each run with snapshots on and off "
                           "(default 60)")
    snap.add_argument("--on-off-rounds", type=int, default=1, metavar="N",
                      help="pairs of on and off runs, the order reversed each round; the "
                           "ratio is of the means (default 1)")
    snap.add_argument("--snapshot-blocks", type=int, default=None, metavar="N",
                      help="node setting snapshot_blocks with snapshots on (default: the "
                           "node's default)")
    snap.add_argument("--snapshot-bytes", type=int, default=None, metavar="N",
                      help="node setting snapshot_bytes with snapshots on (default: the "
                           "node's default)")
    snap.add_argument("--workdir", default=None, metavar="DIR",
                      help="keep every cluster's directory (node logs, data) under DIR "
                           "instead of deleting it (also with --membership)")
    mem = ap.add_argument_group(
        "membership", "--membership times member add until the new node is a voter, and "
                      "member remove, on an idle cluster and under full load, with writes/s "
                      "and latency before, during and after each change "
                      "(josefine.bench.membership); it replaces the normal run")
    mem.add_argument("--membership", action="store_true",
                     help="run the membership measurements instead of the normal bench")
    mem.add_argument("--load-minutes", type=float, default=5.0, metavar="M",
                     help="minutes of full load before the add under load (default 5)")
    mem.add_argument("--window-seconds", type=float, default=10.0, metavar="S",
                     help="seconds of load compared before and after each change (default "
                          "10)")
    return ap


def _minutes(text: str) -> list[float]:
    try:
        vals = [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a list of minutes: {text!r}") from None
    if not vals or any(v <= 0 for v in vals) or vals != sorted(set(vals)):
        raise argparse.ArgumentTypeError(
            f"{text!r}: give increasing positive minutes, e.g. 1,5,10")
    return vals


def main(argv: list[str] | None = None) -> int:
    ap = build_parser()
    a = ap.parse_args(argv)
    if a.snapshots and a.membership:
        ap.error("--snapshots and --membership are separate runs: choose one")
    if a.snapshots:
        return run_snapshots_cli(ap, a)
    if a.membership:
        return run_membership_cli(ap, a)
    a.clients = 1 if a.clients is None else a.clients
    a.pipeline = 1 if a.pipeline is None else a.pipeline
    if a.nodes < 1 or a.clients < 1 or a.pipeline < 1 or a.duration <= 0 or a.payload < 0:
        ap.error("--nodes, --clients, --pipeline must be >= 1, --duration > 0, --payload >= 0")
    warm = a.warmup if a.warmup is not None else min(2.0, a.duration / 2)
    show = not a.no_progress
    label = "josefine " + ("no-fsync" if a.no_fsync else "durable")
    if a.client_api and a.embedded:
        ap.error("--client-api and --embedded are different load modes: choose one")
    if a.embedded:
        from josefine.bench.embedded import run_josefine_embedded
        results = [run_josefine_embedded(a.nodes, a.clients, a.pipeline, a.duration, a.payload,
                                         not a.no_fsync, warm,
                                         progress=_Progress(label + " (embedded)", show))]
    elif a.client_api:
        from josefine.bench.runner import run_client_api
        results = [run_client_api(a.nodes, a.clients, a.duration, a.payload, not a.no_fsync,
                                  warm, progress=_Progress(label + " (Client)", show))]
    else:
        results = [run_josefine(a.nodes, a.clients, a.pipeline, a.duration, a.payload,
                                not a.no_fsync, warm, progress=_Progress(label, show),
                                insecure=a.insecure)]
        if a.compare == "metrics":
            results.append(run_josefine(a.nodes, a.clients, a.pipeline, a.duration,
                                        a.payload, not a.no_fsync, warm,
                                        progress=_Progress(label + " metrics", show),
                                        insecure=a.insecure, metrics=True))
        if a.compare == "insecure" and not a.insecure:
            results.append(run_josefine(a.nodes, a.clients, a.pipeline, a.duration,
                                        a.payload, not a.no_fsync, warm,
                                        progress=_Progress(label + " insecure", show),
                                        insecure=True))
    if a.compare == "pysyncobj":
        try:
            import pysyncobj  # noqa: F401
        except ImportError:
            print("josefine bench: --compare pysyncobj needs PySyncObj "
                  "(pip install 'josefine[bench]')", file=sys.stderr)
            return 2
        for batch in (True, False):
            results.append(run_pysyncobj(a.nodes, a.clients, a.pipeline, a.duration, a.payload,
                                         batch, warm, progress=_Progress(
                                             f"pysyncobj {'batch' if batch else 'no-batch'}",
                                             show)))
    failover = run_failover_cli(a, show) if a.failover else None
    ratios = _ratios(results)
    floor = None
    if a.floor:
        floor = run_floor(a.nodes, a.duration, a.payload, warm)
        ratios.update(_floor_ratios(results[0], floor))
    if a.plot:
        _plot(results, a.plot)
    if a.json:
        print(json.dumps({"version": 1, "results": [r.to_dict() for r in results],
                          "ratios": ratios, "failover": failover, "floor": floor},
                         indent=1))
    else:
        for r in results:
            print(_fmt(r))
        for mode, bare in (floor or {}).items():
            lat = bare["commit_latency_ms"] or {}
            p50, p99 = lat.get("p50"), lat.get("p99")
            print(f"bare loop {mode:<9} {bare['proposals_per_s']:>10,.0f} w/s  p50 "
                  f"{'-' if p50 is None else f'{p50:7.2f}'} p99 "
                  f"{'-' if p99 is None else f'{p99:7.2f}'} ms  (batch 1, window 1)")
        for k, v in ratios.items():
            print(f"{k}: {v}")
        if failover:
            print(f"failover: median {failover['median_ms']} ms "
                  f"({failover['median_in_election_timeouts']} election timeouts), "
                  f"samples {failover['samples_ms']}")
            planned = failover.get("planned")
            if planned:
                print(f"planned failover (SIGTERM, leadership handed over): median "
                      f"{planned['median_ms']} ms "
                      f"({planned['median_in_election_timeouts']} election timeouts), "
                      f"samples {planned['samples_ms']}")
    return 0


def run_floor(nodes: int, duration: float, payload: int, warmup: float) -> dict[str, dict]:
    """The floor under Josefine's sequential latency: the bare loop, one write at a time,
    durable and without fsync, on this machine in this run."""
    from josefine.bench.bare_loop import run_bare
    return {mode: run_bare(nodes=nodes, batch=1, window=1, duration=duration,
                           payload=payload, fsync=fsync, warmup=warmup)
            for mode, fsync in (("durable", True), ("no-fsync", False))}


def _floor_ratios(jose: BenchResult, floor: dict[str, dict]) -> dict[str, Any]:
    """Josefine's p50 over each floor's p50 (the issue's target: <= 1.5x the durable
    floor for a durable sequential run)."""
    out: dict[str, Any] = {}
    p50 = jose.latency_ms.get("p50")
    for mode, r in floor.items():
        lat = r.get("commit_latency_ms") or {}
        key = f"p50_over_bare_{mode.replace('-', '_')}"
        out[key] = (round(p50 / lat["p50"], 2)
                    if p50 is not None and lat.get("p50") else None)
    return out


def _standalone_load(ap: argparse.ArgumentParser, a: argparse.Namespace,
                     mode: str) -> tuple[int, int]:
    """For a mode that replaces the normal bench: refuse the flags of the normal one, and
    return (clients, pipeline) with that mode's full-load defaults (8 x 256)."""
    others = [flag for flag, on in (("--compare", a.compare), ("--embedded", a.embedded),
                                    ("--client-api", a.client_api), ("--failover", a.failover),
                                    ("--floor", a.floor), ("--plot", a.plot),
                                    ("--insecure", a.insecure)) if on]
    if others:
        ap.error(f"{mode} runs on its own: drop {', '.join(others)}")
    return (8 if a.clients is None else a.clients, 256 if a.pipeline is None else a.pipeline)


def run_snapshots_cli(ap: argparse.ArgumentParser, a: argparse.Namespace) -> int:
    from josefine.bench.snapshots import Load, format_report, run_snapshot_bench, say_to_stderr
    clients, pipeline = _standalone_load(ap, a, "--snapshots")
    if a.nodes < 1 or clients < 1 or pipeline < 1 or a.payload < 0 or a.on_off_seconds <= 0 \
            or a.on_off_rounds < 1 \
            or a.follower_down_minutes < 0 or a.catchup_seconds < 0:
        ap.error("--nodes, --clients, --pipeline must be >= 1, --payload >= 0, "
                 "--on-off-seconds > 0, --on-off-rounds >= 1, --follower-down-minutes and "
                 "--catchup-seconds >= 0")
    settings = {k: v for k, v in (("snapshot_blocks", a.snapshot_blocks),
                                  ("snapshot_bytes", a.snapshot_bytes)) if v is not None}
    warm = a.warmup if a.warmup is not None else min(2.0, a.on_off_seconds / 2)
    doc = run_snapshot_bench(a.nodes, Load(clients, pipeline, a.payload), tuple(a.minutes_at),
                             a.follower_down_minutes, a.catchup_seconds, a.on_off_seconds,
                             warm, not a.no_fsync, settings,
                             say=say_to_stderr(not a.no_progress),
                             workdir=None if a.workdir is None else Path(a.workdir),
                             on_off_rounds=a.on_off_rounds)
    print(json.dumps(doc, indent=1) if a.json else format_report(doc))
    return 0


def run_membership_cli(ap: argparse.ArgumentParser, a: argparse.Namespace) -> int:
    from josefine.bench.membership import format_report, run_membership_bench
    from josefine.bench.snapshots import Load, say_to_stderr
    clients, pipeline = _standalone_load(ap, a, "--membership")
    if a.nodes < 1 or clients < 1 or pipeline < 1 or a.payload < 0 or a.load_minutes <= 0 \
            or a.window_seconds <= 0:
        ap.error("--nodes, --clients, --pipeline must be >= 1, --payload >= 0, "
                 "--load-minutes and --window-seconds > 0")
    doc = run_membership_bench(a.nodes, Load(clients, pipeline, a.payload), a.load_minutes,
                               a.window_seconds, not a.no_fsync,
                               say=say_to_stderr(not a.no_progress),
                               workdir=None if a.workdir is None else Path(a.workdir))
    print(json.dumps(doc, indent=1) if a.json else format_report(doc))
    return 0


def run_failover_cli(a: argparse.Namespace, show: bool) -> dict:
    from josefine.bench.failover import run_failover
    return run_failover(a.nodes, a.trials, progress=_Progress("failover", show), planned=True)


if __name__ == "__main__":
    sys.exit(main())
