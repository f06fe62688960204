"""Micro-benchmark of the pure core and the simulation (not a test; numbers go in notes).

    python -m josefine.bench.core_bench [--proposals N] [--seeds N]

1. A 3-voter leader core handling a stream of proposals, with followers' acks and the
   self-persist fed back, all in one thread: steps/s and proposals/s, once with one
   proposal per `Propose` input (no batching) and once with 64 per input (batching).
2. Simulation seeds per second at the default 1,000 steps.
"""
from __future__ import annotations

import argparse
import time

from josefine.chain.block import Command, genesis
from josefine.messages import AppendBlocks, AppendResp, Persisted, Propose, Tick
from josefine.raft.core import CoreConfig, RaftCore, Role


def _leader() -> RaftCore:
    core = RaftCore(CoreConfig(node_id=1, voters=frozenset({1, 2, 3}), pre_vote=False,
                               max_inflight=1 << 30), genesis("bench"))
    while core.role != Role.CANDIDATE:
        core.step(Tick())
    from josefine.messages import VoteResp
    r = core.step(VoteResp(src=2, dst=1, term=core.term, granted=True))
    assert core.role == Role.LEADER
    core.step(Persisted(head=r.head))
    for m in r.eager:   # followers accept the no-op: both move to REPLICATE
        core.step(AppendResp(src=m.dst, dst=1, term=core.term, success=True, seq=m.seq,
                             match=m.blocks[-1].id))
    return core


def bench_core(proposals: int, batch: int) -> tuple[float, float, int]:
    core = _leader()
    steps = 0
    cmd_data = b"x" * 10
    seq = 0
    t0 = time.perf_counter()
    while seq < proposals:
        cmds = []
        for _ in range(batch):
            seq += 1
            cmds.append(Command("c", seq, cmd_data))
        r = core.step(Propose(commands=tuple(cmds)))
        steps += 1
        if r.head is not None:
            core.step(Persisted(head=r.head))
            steps += 1
        for m in r.eager:
            if type(m) is AppendBlocks and m.blocks:
                core.step(AppendResp(src=m.dst, dst=1, term=core.term, success=True,
                                     seq=m.seq, match=m.blocks[-1].id))
                steps += 1
    dt = time.perf_counter() - t0
    assert core.commit == core.head, (core.commit, core.head)
    return steps / dt, proposals / dt, steps


def bench_sim(seeds: int) -> float:
    from josefine.sim.simulation import Simulation
    t0 = time.perf_counter()
    for s in range(seeds):
        Simulation(s).run()
    return seeds / (time.perf_counter() - t0)


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m josefine.bench.core_bench")
    ap.add_argument("--proposals", type=int, default=100_000,
                    help="proposals through one leader core (default 100000)")
    ap.add_argument("--seeds", type=int, default=100,
                    help="simulation seeds to time (default 100)")
    return ap


def main(argv: list[str] | None = None) -> int:
    a = build_parser().parse_args(argv)
    for batch in (1, 64):
        sps, pps, steps = bench_core(a.proposals, batch)
        print(f"core leader, {batch:3d} proposal(s) per input: {sps:10.0f} steps/s "
              f"{pps:10.0f} proposals/s ({steps} steps)")
    print(f"simulation: {bench_sim(a.seeds):.1f} seeds/s (3 nodes, 1000 steps each)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
