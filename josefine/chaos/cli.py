"""``josefine chaos``: run a chaos experiment against a local cluster and check it.

Exit status: 0 every check passed, 1 a check failed (or the run broke), 2 bad usage.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
from collections.abc import Sequence

from josefine.chaos.config import DEFAULT_FAULTS, FAULT_KINDS, ChaosConfig
from josefine.chaos.harness import run_chaos

__all__ = ["main", "build_parser"]


def _range(text: str) -> tuple[float, float]:
    try:
        lo, _, hi = text.partition(",")
        return float(lo), float(hi or lo)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected LO,HI seconds, got {text!r}") from None


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="josefine chaos",
        description="Start a local cluster, run a recorded key-value workload while killing, "
                    "pausing and partitioning nodes (and, if asked, cutting their power or "
                    "adding, removing and replacing them), then heal and check "
                    "linearizability, "
                    "identical committed chains, monotonic commit, one leader per term and "
                    "that no acknowledged write was lost.")
    p.add_argument("--nodes", type=int, default=5, help="cluster size (default 5)")
    p.add_argument("--duration", type=float, default=60.0, help="seconds of workload + faults")
    p.add_argument("--seed", type=int, default=0, help="seeds the operations and fault schedule")
    p.add_argument("--clients", type=int, default=8, help="concurrent client threads")
    p.add_argument("--keys", type=int, default=8,
                   help="distinct keys the workload reads and writes (default 8)")
    p.add_argument("--faults", default=",".join(DEFAULT_FAULTS),
                   help=f"comma-separated subset of {','.join(FAULT_KINDS)} (default "
                        f"{','.join(DEFAULT_FAULTS)}; powerloss puts every node's data dir on "
                        "a FUSE layer that drops unsynced writes: root and /dev/fuse; "
                        "membership adds a fresh node, removes a voter (often the leader) or "
                        "replaces one by a fresh node, keeping 3..--max-voters voters; it "
                        "cannot be combined with powerloss or --netns); "
                        "'none' for no faults")
    p.add_argument("--max-voters", type=int, default=5,
                   help="with membership faults: never more voters than this (default 5; "
                        "never fewer than 3)")
    p.add_argument("--out", default=None,
                   help="run directory (history.jsonl, node logs, report); default: a new temp dir")
    p.add_argument("--base-port", type=int, default=None, help="default: a free block")
    p.add_argument("--op-timeout", type=float, default=2.0, help="per-operation deadline (s)")
    p.add_argument("--fault-gap", type=_range, default=(1.0, 3.0), metavar="LO,HI",
                   help="quiet seconds before each fault (default 1,3)")
    p.add_argument("--fault-hold", type=_range, default=(1.0, 5.0), metavar="LO,HI",
                   help="seconds each fault lasts (default 1,5)")
    p.add_argument("--check-time-limit", type=float, default=300.0,
                   help="linearizability checker budget in seconds")
    p.add_argument("--no-fsync", action="store_true", help="nodes skip fsync (faster, unsafe)")
    p.add_argument("--json", action="store_true", help="print report.json instead of the text")
    p.add_argument("-v", "--verbose", action="store_true", help="print progress and each fault")
    p.add_argument("--netns", action="store_true",
                   help="root only: each node in its own network namespace (as `josefine "
                        "launch --netns`), partitions made by the kernel instead of the "
                        "transport's fault rules")
    p.add_argument("--netns-subnet", default=None, metavar="CIDR",
                   help="the IPv4 subnet for --netns (default 10.213.47.0/24)")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(list(sys.argv[1:] if argv is None else argv))
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else 2
    faults = [] if args.faults.strip() in ("", "none") else args.faults.split(",")
    out = args.out or tempfile.mkdtemp(prefix="josefine-chaos-")
    try:
        cfg = ChaosConfig(out=out, nodes=args.nodes, duration=args.duration, seed=args.seed,
                          clients=args.clients, keys=args.keys, faults=faults,
                          base_port=args.base_port, op_timeout=args.op_timeout,
                          fault_gap=args.fault_gap, fault_hold=args.fault_hold,
                          check_time_limit=args.check_time_limit, fsync=not args.no_fsync,
                          verbose=args.verbose, netns=args.netns,
                          netns_subnet=args.netns_subnet, max_voters=args.max_voters)
    except ValueError as exc:
        print(f"josefine chaos: {exc}", file=sys.stderr)
        return 2
    try:
        report = run_chaos(cfg)
    except (FileExistsError, OSError) as exc:
        print(f"josefine chaos: {exc}", file=sys.stderr)
        return 2
    if args.json:
        import json
        print(json.dumps(report.to_dict(), indent=2, default=repr))
    else:
        print(report.format())
    return 0 if report.passed else 1
