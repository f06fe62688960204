"""A PySyncObj node for the comparison run of `josefine bench --compare pysyncobj`.

PySyncObj has no remote client protocol, so its load runs inside node 1's process (an
advantage for it: no client hop). Each of `slots` virtual clients keeps one `put`
outstanding through PySyncObj's callback API; latency is measured from call to callback.
Results are written as JSON to --out. PySyncObj keeps its journal in memory (no fsync).
"""
from __future__ import annotations

import argparse
import json
import threading
import time


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--self", dest="me", required=True)
    ap.add_argument("--partners", default="")
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--load", type=int, default=0, help="outstanding writes (0: no load)")
    ap.add_argument("--payload", type=int, default=10)
    ap.add_argument("--warmup", type=float, default=1.0, help="seconds after a leader is known")
    ap.add_argument("--duration", type=float, default=5.0, help="measured seconds")
    ap.add_argument("--out", default="")
    a = ap.parse_args(argv)
    from pysyncobj import SyncObj, SyncObjConf, replicated

    class KV(SyncObj):
        def __init__(self) -> None:
            conf = SyncObjConf(appendEntriesUseBatch=bool(a.batch), dynamicMembershipChange=False)
            super().__init__(a.me, [p for p in a.partners.split(",") if p], conf)
            self._d: dict = {}

        @replicated
        def put(self, k, v):  # noqa: ANN001
            self._d[k] = v
            return True

    kv = KV()
    if not a.load:
        while True:
            time.sleep(3600)
    while kv._getLeader() is None:   # noqa: SLF001 - PySyncObj has no public "leader known"
        time.sleep(0.05)
    deadline = time.time() + 60
    while time.time() < deadline:   # the first write can stall while links come up
        try:
            kv.put("ready", "1", sync=True, timeout=2)
            break
        except Exception:   # PySyncObj raises its own SyncObjException family
            continue
    a.t_start = time.time() + a.warmup
    a.t_end = a.t_start + a.duration
    with open(a.out + ".start", "w") as f:   # tells the runner when measuring begins
        f.write(repr(a.t_start))
    value = "x" * a.payload
    done_t: list[float] = []
    lat_ms: list[float] = []
    errors = [0]
    sem = threading.Semaphore(a.load)
    lock = threading.Lock()

    def issue(slot: int) -> None:
        t0 = time.perf_counter()

        def cb(result, err):  # noqa: ANN001
            now = time.time()
            with lock:
                if err != 0:
                    errors[0] += 1
                elif a.t_start <= now <= a.t_end:
                    done_t.append(now)
                    lat_ms.append((time.perf_counter() - t0) * 1000)
            sem.release()
        kv.put(f"k{slot % 64}", value, callback=cb)

    slot = 0
    while time.time() < a.t_end:
        if sem.acquire(timeout=0.1):
            issue(slot)
            slot += 1
    time.sleep(0.5)
    with open(a.out, "w") as f:
        json.dump({"done_t": done_t, "lat_ms": lat_ms, "errors": errors[0],
                   "t_start": a.t_start}, f)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
