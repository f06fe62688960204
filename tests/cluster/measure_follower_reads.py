"""Measure reads served by followers against reads served by the leader only, and writes
forwarded by a follower against writes sent to the leader, on one launched cluster.

    PYTHONPATH=. python tests/cluster/measure_follower_reads.py [--nodes 3] [--seconds 5]

Not a test (pytest does not collect it): it prints figures for the notes.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from josefine.client import Client  # noqa: E402
from tests.cluster.helpers import running_cluster, statuses  # noqa: E402


def _reads(addrs: dict, cid: str, creds, read_from: str, threads: int,  # noqa: ANN001
           seconds: float) -> tuple[float, float, float]:
    lat: list[float] = []
    lock = threading.Lock()
    stop = time.monotonic() + seconds

    def run() -> None:
        mine = []
        with Client(addrs, cid, timeout=10, credentials=creds, read_from=read_from) as c:
            c.get("k0")   # connect and learn the leader outside the measured window
            while time.monotonic() < stop:
                t0 = time.perf_counter()
                c.get("k1")
                mine.append(time.perf_counter() - t0)
        with lock:
            lat.extend(mine)
    ts = [threading.Thread(target=run) for _ in range(threads)]
    t0 = time.monotonic()
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    took = time.monotonic() - t0
    lat.sort()
    return len(lat) / took, statistics.median(lat) * 1e3, lat[int(len(lat) * 0.99)] * 1e3


def _writes(addr: dict, cid: str, creds, n: int) -> tuple[float, float]:  # noqa: ANN001
    lat = []
    with Client(addr, cid, timeout=10, credentials=creds) as c:
        c.put("warm", "up")
        for i in range(n):
            t0 = time.perf_counter()
            c.put(f"w{i % 10}", f"v{i}")
            lat.append(time.perf_counter() - t0)
    lat.sort()
    return statistics.median(lat) * 1e3, lat[int(len(lat) * 0.99)] * 1e3


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--nodes", type=int, default=3)
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--threads", type=int, default=8)
    ap.add_argument("--writes", type=int, default=300)
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as d, running_cluster(Path(d) / "c", a.nodes) as rc:
        cid, creds, addrs = rc.launcher.cluster_id, rc.creds, rc.addrs
        with Client(addrs, cid, credentials=creds) as c:
            c.put("k0", "x")
            c.put("k1", "y" * 100)
        followers = {i: x for i, x in addrs.items() if i != rc.leader}
        print(f"{a.nodes} nodes, leader {rc.leader}, {a.threads} reader threads, "
              f"{a.seconds:.0f} s per run")
        for name, where, mode in [("leader only", addrs, "leader"),
                                  ("any node (round robin)", addrs, "any"),
                                  ("followers only", followers, "any")]:
            before = statuses(addrs, cid, credentials=creds)
            ops, p50, p99 = _reads(where, cid, creds, mode, a.threads, a.seconds)
            after = statuses(addrs, cid, credentials=creds)
            fr = sum(after[i]["follower_reads"] - before[i]["follower_reads"] for i in addrs)
            print(f"reads  {name:24s} {ops:8.0f} ops/s  p50 {p50:6.2f} ms  p99 {p99:6.2f} ms"
                  f"  (served by followers: {fr})")
        f = next(iter(followers))
        for name, where in [("direct to the leader", {rc.leader: addrs[rc.leader]}),
                            (f"through follower {f}", {f: addrs[f]})]:
            p50, p99 = _writes(where, cid, creds, a.writes)
            print(f"writes {name:24s} p50 {p50:6.2f} ms  p99 {p99:6.2f} ms  ({a.writes} "
                  "sequential puts)")


if __name__ == "__main__":
    main()
