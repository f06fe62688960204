"""`josefine bench --failover`: time from SIGKILL of the leader to the first write
committed by its successor, over repeated trials on a fresh durable cluster."""
from __future__ import annotations

import signal
import statistics
import tempfile
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING

from josefine.bench.runner import _wait_leader
from josefine.launch.ports import free_port_block

if TYPE_CHECKING:
    from josefine.client import Client


def run_failover(nodes: int, trials: int, progress=None) -> dict:  # noqa: ANN001
    from josefine.client import Client, query_status
    from josefine.launch.cluster import Launcher
    samples_ms: list[float] = []
    with tempfile.TemporaryDirectory(prefix="josefine-failover-") as d:
        launcher = Launcher(nodes, Path(d), free_port_block(nodes), out=None)
        launcher.start()
        try:
            addrs = {i: launcher.address(i) for i in launcher.node_ids}
            cfg = launcher.node_config(launcher.node_ids[0])
            et_ms = cfg.election_ticks * cfg.tick_ms
            for t in range(trials):
                leader = _wait_leader(addrs, launcher.cluster_id, 60)
                # everyone up and caught up before the next kill
                deadline = time.monotonic() + 60
                while time.monotonic() < deadline:
                    try:
                        sts = [query_status(a, launcher.cluster_id, 0.5,
                                            credentials=launcher.credentials())
                               for a in addrs.values()]
                    except Exception:
                        time.sleep(0.1)
                        continue
                    if len({tuple(s["applied"]) for s in sts}) == 1:
                        break
                    time.sleep(0.1)
                with Client(addrs, launcher.cluster_id, timeout=30, request_timeout=0.05,
                            credentials=launcher.credentials()) as c:
                    c.put("warm", str(t))
                    stop = threading.Event()
                    first: list[float] = []
                    t_kill = time.monotonic()
                    launcher.kill(leader, signal.SIGKILL)
                    w = threading.Thread(target=_write_until_new_leader,
                                         args=(c, stop, addrs[leader], t, first), daemon=True)
                    w.start()
                    w.join(60)
                    stop.set()
                if first:
                    samples_ms.append((first[0] - t_kill) * 1000)
                if progress:
                    progress((t + 1) / trials)
        finally:
            launcher.stop()
    med = statistics.median(samples_ms) if samples_ms else float("nan")
    return {"trials": trials, "samples_ms": [round(x, 1) for x in samples_ms],
            "median_ms": round(med, 1), "min_ms": round(min(samples_ms), 1) if samples_ms else None,
            "max_ms": round(max(samples_ms), 1) if samples_ms else None,
            "election_timeout_ms": et_ms, "median_in_election_timeouts": round(med / et_ms, 2)}


def _write_until_new_leader(c: Client, stop: threading.Event, old_leader: str, trial: int,
                            first: list[float]) -> None:
    """Write until a write is answered by a node other than `old_leader`; note when in `first`.

    Everything it touches comes in as arguments, none from the trial loop's variables: a
    writer still running after its trial gave up on it (join timed out) must stop on its own
    trial's `stop`, and must not write through, or time, the next trial's client.
    """
    from josefine.errors import JosefineError
    n = 0
    while not stop.is_set():
        n += 1
        try:
            c.put("fo", f"{trial}-{n}")
        except JosefineError:
            continue
        if not first and c._leader != old_leader:
            first.append(time.monotonic())
            return
