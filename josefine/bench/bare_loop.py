"""Bare commit loop: the ceiling for a replicated, durable commit loop on this machine.

    python -m josefine.bench.bare_loop [--nodes 3] [--batch 16 256] [--duration 5]
                                       [--payload 10] [--no-fsync] [--window 4] [--json]

Why it exists: Josefine's throughput target is stated against "a bare 3-node ZeroMQ +
LevelDB commit loop with no actors", measured on another machine. That number depends on
the machine (fsync cost, loopback latency, core count), so this module measures the same
loop here: no actors, no Raft, no chain, just what replicating and persisting batches costs.
Whatever it reports is the ceiling our actor system can approach on this machine, never pass.

The loop, with `nodes` processes (one leader, `nodes - 1` followers, all on 127.0.0.1):

* Each round the leader makes `batch` proposals of `payload` bytes, encodes them once as
  msgpack `[seq, [payload, ...]]`, sends the same bytes to every follower, then writes the
  batch to its own LevelDB with one `write_batch(sync=fsync)` while the followers do the same.
* A follower (ZeroMQ ROUTER) writes each batch it receives with one `write_batch` (keys are
  seq + index) and replies `[seq]`.
* A batch is committed once a majority has it durably: the leader counts itself after its
  own write returns, plus one ack per follower. Up to `window` batches are in flight.
* After `warmup` seconds, batches committed during the next `duration` seconds are counted;
  commit latency is from the leader's send to the majority being reached.
"""
from __future__ import annotations

import argparse
import json
import logging
import math
import multiprocessing as mp
import os
import queue
import struct
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

import plyvel
import zmq

from josefine.launch.ports import free_port_block
from josefine.transport.codec import packb, unpackb

log = logging.getLogger(__name__)

PING = -1
"""Control seq: the follower replies without writing (connection handshake)."""
STOP = -2
"""Control seq: the follower replies, closes its database and exits."""

_KEY = struct.Struct(">QI")  # (seq, index in batch): LevelDB keys sort in commit order
_HANDSHAKE_TIMEOUT_S = 20.0
_DRAIN_TIMEOUT_S = 5.0
_PARENT_CHECK_MS = 1000


def _write_batch(db: plyvel.DB, seq: int, payloads: list[bytes], sync: bool) -> None:
    with db.write_batch(sync=sync) as wb:
        for i, p in enumerate(payloads):
            wb.put(_KEY.pack(seq, i), p)


def _follower_main(port: int, path: str, fsync: bool, parent_pid: int) -> None:
    """One follower: persist each batch received with one write_batch, then ack its seq.

    Exits on STOP, or if its parent has gone (so a killed benchmark leaves no orphans)."""
    ctx = zmq.Context()
    sock = ctx.socket(zmq.ROUTER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.bind(f"tcp://127.0.0.1:{port}")
    db = plyvel.DB(path, create_if_missing=True)
    try:
        while True:
            if not sock.poll(_PARENT_CHECK_MS):
                if os.getppid() != parent_pid:
                    return
                continue
            ident, frame = sock.recv_multipart()
            seq, payloads = unpackb(frame)
            if seq >= 0:
                _write_batch(db, seq, payloads, fsync)
            sock.send_multipart([ident, packb([seq])])
            if seq == STOP:
                return
    finally:
        db.close()
        sock.close()
        ctx.term()


def _percentile(sorted_xs: list[float], q: float) -> float | None:
    """Nearest-rank percentile (q in 0..100) of an already sorted list; None when empty."""
    if not sorted_xs:
        return None
    k = max(0, min(len(sorted_xs) - 1, math.ceil(q / 100.0 * len(sorted_xs)) - 1))
    return sorted_xs[k]


def _leader_loop(ports: list[int], path: str, batch: int, duration: float, payload: int,
                 fsync: bool, window: int, warmup: float) -> dict[str, Any]:
    nodes = len(ports) + 1
    need_acks = (nodes // 2 + 1) - 1  # the majority, minus the leader's own durable copy
    ctx = zmq.Context()
    socks = []
    db = plyvel.DB(path, create_if_missing=True)
    try:
        poller = zmq.Poller()
        for port in ports:
            s = ctx.socket(zmq.DEALER)
            s.setsockopt(zmq.LINGER, 0)
            s.connect(f"tcp://127.0.0.1:{port}")
            socks.append(s)
            poller.register(s, zmq.POLLIN)

        def round_trip(seq: int) -> None:
            """Send a control frame to every follower and wait for each one's reply."""
            frame = packb([seq, []])
            for s in socks:
                s.send(frame)
            for s, port in zip(socks, ports, strict=True):
                if not s.poll(int(_HANDSHAKE_TIMEOUT_S * 1000)):
                    raise RuntimeError(f"follower on port {port} did not answer seq {seq}")
                (got,) = unpackb(s.recv())
                # Data acks left over from the drain may still arrive before the reply.
                while got != seq:
                    if not s.poll(int(_HANDSHAKE_TIMEOUT_S * 1000)):
                        raise RuntimeError(f"follower on port {port} did not answer seq {seq}")
                    (got,) = unpackb(s.recv())

        round_trip(PING)

        # seq -> [send time, follower acks, leader durable]; insertion order == seq order
        inflight: dict[int, list[Any]] = {}
        latencies: list[float] = []
        committed = 0
        value = b"x" * payload
        t0 = time.perf_counter()
        t_start = t0 + warmup
        t_end = t_start + duration

        def commit_ready() -> None:
            nonlocal committed
            now = time.perf_counter()
            while inflight:
                seq = next(iter(inflight))
                t_send, acks, durable = inflight[seq]
                if not (durable and acks >= need_acks):
                    return
                del inflight[seq]
                if t_start <= now < t_end:
                    committed += 1
                    latencies.append(now - t_send)

        def take_acks(timeout_ms: int) -> None:
            events = dict(poller.poll(timeout_ms))
            for s in socks:
                if s not in events:
                    continue
                while True:
                    try:
                        msg = s.recv(zmq.NOBLOCK)
                    except zmq.Again:
                        break
                    (seq,) = unpackb(msg)
                    entry = inflight.get(seq)
                    if entry is not None:
                        entry[1] += 1
            commit_ready()

        seq = 0
        while time.perf_counter() < t_end:
            if len(inflight) < window:
                seq += 1
                payloads = [value] * batch
                frame = packb([seq, payloads])
                inflight[seq] = [time.perf_counter(), 0, False]
                for s in socks:
                    s.send(frame, copy=False)
                _write_batch(db, seq, payloads, fsync)  # overlaps the followers' writes
                inflight[seq][2] = True
                take_acks(0)
            else:
                take_acks(100)

        drain_until = time.perf_counter() + _DRAIN_TIMEOUT_S
        while inflight and time.perf_counter() < drain_until:
            take_acks(100)
        if inflight:
            log.warning("%d batches still uncommitted after the drain", len(inflight))
        round_trip(STOP)
    finally:
        for s in socks:
            s.close()
        ctx.term()
        db.close()

    latencies.sort()
    p50 = _percentile(latencies, 50)
    p99 = _percentile(latencies, 99)
    proposals = committed * batch
    return {
        "nodes": nodes,
        "batch": batch,
        "window": window,
        "payload": payload,
        "fsync": fsync,
        "duration_s": duration,
        "proposals": proposals,
        "proposals_per_s": proposals / duration,
        "batches_per_s": committed / duration,
        "commit_latency_ms": {"p50": None if p50 is None else p50 * 1000.0,
                              "p99": None if p99 is None else p99 * 1000.0},
    }


def _leader_main(ports: list[int], path: str, batch: int, duration: float, payload: int,
                 fsync: bool, window: int, warmup: float, results: Any) -> None:
    """The leader process: runs the loop and puts ("ok", result) or ("error", text)."""
    try:
        results.put(("ok", _leader_loop(ports, path, batch, duration, payload, fsync,
                                        window, warmup)))
    except Exception:
        results.put(("error", traceback.format_exc()))
        raise


def _stop_all(procs: list[Any], grace_s: float) -> None:
    """Join every process, escalating to terminate() then kill(); none is left running."""
    deadline = time.monotonic() + grace_s
    for p in procs:
        p.join(max(0.0, deadline - time.monotonic()))
    for p in procs:
        if p.is_alive():
            p.terminate()
    for p in procs:
        p.join(2.0)
        if p.is_alive():
            p.kill()
            p.join(2.0)


def run_bare(nodes: int = 3, batch: int = 16, duration: float = 5.0, payload: int = 10,
             fsync: bool = True, window: int = 4, warmup: float = 1.0) -> dict[str, Any]:
    """Run the bare commit loop once on fresh processes and databases; return its numbers.

    Keys: nodes, batch, window, payload, fsync, duration_s, proposals, proposals_per_s,
    batches_per_s, commit_latency_ms {p50, p99} (None if nothing committed)."""
    if nodes < 1 or batch < 1 or window < 1 or payload < 0 or duration <= 0 or warmup < 0:
        raise ValueError("need nodes, batch, window >= 1, payload >= 0, duration > 0, "
                         "warmup >= 0")
    ctx = mp.get_context("spawn")
    n_followers = nodes - 1
    ports = ([free_port_block(n_followers) + i for i in range(n_followers)]
             if n_followers else [])
    procs: list[Any] = []
    with tempfile.TemporaryDirectory(prefix="josefine-bare-") as tmp:
        results = ctx.Queue()
        ok = False
        try:
            for i, port in enumerate(ports):
                p = ctx.Process(target=_follower_main, name=f"bare-follower{i + 2}",
                                args=(port, str(Path(tmp, f"node{i + 2}")), fsync, os.getpid()),
                                daemon=True)
                p.start()
                procs.append(p)
            leader = ctx.Process(target=_leader_main, name="bare-leader",
                                 args=(ports, str(Path(tmp, "node1")), batch, duration, payload,
                                       fsync, window, warmup, results),
                                 daemon=True)
            leader.start()
            procs.append(leader)

            deadline = time.monotonic() + warmup + duration + _HANDSHAKE_TIMEOUT_S * 2 + 30
            while True:
                try:
                    status, body = results.get(timeout=0.2)
                    break
                except queue.Empty:
                    pass
                dead = [p for p in procs if not p.is_alive() and p.exitcode not in (0, None)]
                if dead and results.empty():
                    raise RuntimeError(
                        "bare loop process died: "
                        + ", ".join(f"{p.name} (exit {p.exitcode})" for p in dead))
                if time.monotonic() > deadline:
                    raise RuntimeError("bare loop did not finish in time")
            if status != "ok":
                raise RuntimeError(f"bare loop leader failed:\n{body}")
            ok = True
            return body
        finally:
            _stop_all(procs, grace_s=10.0 if ok else 0.0)
            results.close()
            results.join_thread()


def _fmt(r: dict[str, Any]) -> str:
    lat = r["commit_latency_ms"]

    def ms(v: float | None) -> str:
        return "n/a" if v is None else f"{v:.2f} ms"

    return (f"nodes={r['nodes']} batch={r['batch']} window={r['window']} "
            f"payload={r['payload']}B fsync={'on' if r['fsync'] else 'off'}: "
            f"{r['proposals_per_s']:,.0f} proposals/s, {r['batches_per_s']:,.0f} batches/s, "
            f"commit p50 {ms(lat['p50'])} p99 {ms(lat['p99'])} "
            f"({r['proposals']:,} proposals in {r['duration_s']:g} s)")


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m josefine.bench.bare_loop",
                                 description="Bare ZeroMQ + LevelDB replicated commit loop "
                                             "(no actors, no Raft): this machine's ceiling.")
    ap.add_argument("--nodes", type=int, default=3, help="processes, leader included (default 3)")
    ap.add_argument("--batch", type=int, nargs="+", default=[16, 256],
                    help="proposals per batch; one run per value (default: 16 256)")
    ap.add_argument("--duration", type=float, default=5.0, help="measured seconds per run")
    ap.add_argument("--warmup", type=float, default=1.0, help="unmeasured seconds first")
    ap.add_argument("--payload", type=int, default=10, help="bytes per proposal")
    ap.add_argument("--no-fsync", dest="fsync", action="store_false",
                    help="write batches without sync")
    ap.add_argument("--window", type=int, default=4, help="batches in flight")
    ap.add_argument("--json", action="store_true", help="print a JSON list of results")
    return ap


def main(argv: list[str] | None = None) -> int:
    ap = build_parser()
    args = ap.parse_args(argv)
    if args.nodes < 1:
        ap.error("--nodes must be >= 1")
    if any(b < 1 for b in args.batch):
        ap.error("--batch values must be >= 1")
    if args.window < 1:
        ap.error("--window must be >= 1")
    if args.duration <= 0 or args.warmup < 0:
        ap.error("--duration must be > 0 and --warmup >= 0")
    if args.payload < 0:
        ap.error("--payload must be >= 0")

    results = []
    for b in args.batch:
        r = run_bare(nodes=args.nodes, batch=b, duration=args.duration, payload=args.payload,
                     fsync=args.fsync, window=args.window, warmup=args.warmup)
        results.append(r)
        if not args.json:
            print(_fmt(r), flush=True)
    if args.json:
        print(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
