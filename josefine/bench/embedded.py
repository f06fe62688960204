"""Embedded benchmark mode: Josefine's load runs inside node 1's own process.

This is the like-for-like counterpart of `josefine.bench.pso_node`: PySyncObj has no remote
client protocol, so its load runs inside its leader process, with latency measured from the
call to the callback. Here node 1 runs as ``python -m josefine.bench.embedded --config
node.toml --load N ...`` instead of ``python -m josefine.launch.node``: it starts the node
through the embedding API (`Node.start`), makes itself the leader (asking the current leader
for a transfer), and keeps N `Node.propose` calls outstanding. Each future's done-callback
records the latency (call to callback, `time.perf_counter`) and issues the next proposal.
Only completions inside the measured window [t_start, t_end] (wall clock, as in pso_node)
count; failed futures count as errors. Results go to --out as JSON, in pso_node's shape.

`run_josefine_embedded` launches such a cluster (node 1 embedded, the others ordinary
nodes) and measures it exactly as `runner.run_pysyncobj` measures PySyncObj.
"""
from __future__ import annotations

import argparse
import gc
import json
import logging
import os
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from pathlib import Path
from typing import Any

from josefine.bench.runner import BenchResult, ProcSampler, _sleep_until, summarize
from josefine.launch.node import tune_gc

EXIT_FATAL = 3
EXIT_CONFIG = 2
EXIT_SETUP = 4

log = logging.getLogger("josefine.bench.embedded")


# ---------------------------------------------------------------------- node side
def _become_leader(node: Any, timeout: float, stop: threading.Event) -> None:
    """Wait for a leader; if it is not this node, ask it (over the client protocol) to
    transfer leadership here, until this node's role is "leader"."""
    from josefine.client import Client
    from josefine.errors import JosefineError
    cfg = node.config
    deadline = time.monotonic() + timeout
    node.wait_for_leader(timeout=timeout)
    # Leadership transfer is an admin request: the admin key of the node's cluster file.
    client = (Client(cfg.nodes, cfg.cluster_id, timeout=5.0, request_timeout=1.0)
              if cfg.insecure else
              Client.from_cluster_file(cfg.cluster_file, admin=True, timeout=5.0,
                                       request_timeout=1.0))
    with client as c:
        while time.monotonic() < deadline and not stop.is_set():
            st = node.status()
            if st.get("role") == "leader":
                return
            if st.get("leader") is None:
                time.sleep(0.05)
                continue
            log.info("node %d: leader is node %s; asking it to transfer leadership here",
                     cfg.node_id, st.get("leader"))
            try:
                c.transfer_leadership(cfg.node_id)
            except JosefineError as exc:
                log.info("transfer to node %d: %s; retrying", cfg.node_id, exc)
            t_wait = time.monotonic() + 2.0
            while time.monotonic() < t_wait and node.status().get("role") != "leader":
                time.sleep(0.02)
    if node.status().get("role") != "leader":
        raise RuntimeError(f"node {cfg.node_id} did not become leader within {timeout} s")


def _first_write(node: Any, timeout: float) -> None:
    """One committed write before measuring (links up, leader's no-op committed)."""
    from josefine.errors import JosefineError
    from josefine.fsm.kv import kv_put
    deadline = time.monotonic() + timeout
    last: BaseException | None = None
    while time.monotonic() < deadline:
        try:
            node.propose(kv_put("ready", "1")).result(timeout=2)
            return
        except (JosefineError, FutureTimeout) as exc:   # NotLeader/Busy: again until deadline
            last = exc
            time.sleep(0.05)
    raise RuntimeError(f"first write did not commit within {timeout} s (last error: {last})")


class _Load:
    """Keeps `slots` proposals outstanding; each done-callback issues the next one."""

    def __init__(self, node: Any, slots: int, payload: int, t_start: float,
                 t_end: float) -> None:
        self.node = node
        self.slots = slots
        self.value = "x" * payload
        self.t_start = t_start
        self.t_end = t_end
        self.done_t: list[float] = []
        self.lat_ms: list[float] = []
        self.errors = 0
        self.outstanding = 0
        self.lock = threading.Lock()
        self.idle = threading.Condition(self.lock)
        self.retry: list[int] = []   # slots whose last proposal failed; the main loop reissues
        self.retry_ev = threading.Event()

    def issue(self, slot: int) -> None:
        from josefine.fsm.kv import kv_put
        cmd = kv_put(f"k{slot % 64}", self.value)
        with self.lock:
            self.outstanding += 1
        t0 = time.perf_counter()
        fut = self.node.propose(cmd)
        fut.add_done_callback(lambda f: self._done(f, slot, t0))

    def _done(self, fut: Future, slot: int, t0: float) -> None:
        t1 = time.perf_counter()
        now = time.time()
        exc = fut.exception()
        # a result {"error": ...} (e.g. "stale sequence") means the write was not applied
        failed = exc is not None or (isinstance(fut.result(), dict) and "error" in fut.result())
        with self.lock:
            self.outstanding -= 1
            if failed:
                self.errors += 1
            elif self.t_start <= now <= self.t_end:
                self.done_t.append(now)
                self.lat_ms.append((t1 - t0) * 1000)
            if self.outstanding == 0:
                self.idle.notify_all()
            if failed:
                # Not reissued from here: a stopped node fails a proposal synchronously, and
                # reissuing inline would recurse. The main loop retries after a short pause.
                self.retry.append(slot)
                self.retry_ev.set()
                return
        if now < self.t_end:
            self.issue(slot + self.slots)

    def run(self, stop: threading.Event) -> None:
        for slot in range(self.slots):
            self.issue(slot)
        while time.time() < self.t_end and not stop.is_set():
            if self.retry_ev.wait(0.1):
                time.sleep(0.01)
                with self.lock:
                    again, self.retry = self.retry, []
                    self.retry_ev.clear()
                for slot in again:
                    if time.time() < self.t_end:
                        self.issue(slot + self.slots)
        with self.lock:   # let the last proposals land (they count only if inside the window)
            self.idle.wait_for(lambda: self.outstanding == 0, timeout=10)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m josefine.bench.embedded",
                                 description="A Josefine node with an in-process load.")
    ap.add_argument("--config", required=True, help="node TOML file")
    ap.add_argument("--load", type=int, default=0, help="outstanding writes (0: no load)")
    ap.add_argument("--payload", type=int, default=10)
    ap.add_argument("--warmup", type=float, default=1.0, help="seconds after the first write")
    ap.add_argument("--duration", type=float, default=5.0, help="measured seconds")
    ap.add_argument("--out", default="", help="result JSON (required with --load)")
    ap.add_argument("--setup-timeout", type=float, default=60.0)
    a = ap.parse_args(argv)
    if a.load and not a.out:
        ap.error("--out is required with --load")
    from josefine.config import ConfigError, load_node_config
    try:
        cfg = load_node_config(a.config)
    except ConfigError as exc:
        print(f"josefine embedded: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    logging.basicConfig(
        level=getattr(logging, cfg.log_level, logging.INFO),
        format=f"%(asctime)s node{cfg.node_id} %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr, force=True)
    # The same interpreter settings as josefine.launch.node.
    sys.setswitchinterval(0.0005)
    tune_gc()
    from josefine.actors.node import Node
    from josefine.errors import JosefineError

    stop = threading.Event()

    def on_fatal(where: str, exc: BaseException) -> None:
        log.critical("node %d: exiting after fatal error in %s", cfg.node_id, where)
        logging.shutdown()
        os._exit(EXIT_FATAL)

    def on_signal(signum: int, _frame: object) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    try:
        node = Node.start(cfg, on_fatal=on_fatal)
    except Exception as exc:
        log.critical("node %d: failed to start: %s", cfg.node_id, exc, exc_info=True)
        return EXIT_FATAL
    gc.freeze()
    log.info("node %d: pid %d serving on %s (embedded load %d)", cfg.node_id, os.getpid(),
             cfg.address, a.load)
    try:
        if not a.load:
            while not stop.wait(0.5) and not node.stopped:
                pass
            return EXIT_FATAL if node.fatal_error else 0
        try:
            _become_leader(node, a.setup_timeout, stop)
            _first_write(node, a.setup_timeout)
        except (JosefineError, RuntimeError, FutureTimeout) as exc:
            log.critical("node %d: benchmark setup failed: %s", cfg.node_id, exc)
            return EXIT_SETUP
        t_start = time.time() + a.warmup
        t_end = t_start + a.duration
        _write_atomic(Path(a.out + ".start"), repr(t_start))   # wall clock, as pso_node
        load = _Load(node, a.load, a.payload, t_start, t_end)
        load.run(stop)
        with load.lock:
            doc = {"done_t": load.done_t, "lat_ms": load.lat_ms, "errors": load.errors,
                   "t_start": t_start, "outstanding_at_end": load.outstanding}
        _write_atomic(Path(a.out), json.dumps(doc))
        return 0
    finally:
        node.stop()
        log.info("node %d: stopped", cfg.node_id)


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp.{os.getpid()}")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


# ---------------------------------------------------------------------- runner side
def run_josefine_embedded(nodes: int, clients: int, pipeline: int, duration: float,
                          payload: int, fsync: bool, warmup: float,
                          progress: Callable[[float], None] | None = None, *,
                          procs_out: dict[str, Any] | None = None) -> BenchResult:
    """The Josefine workload with its load inside node 1's process (through `Node.propose`),
    `clients * pipeline` writes outstanding, measured like `run_pysyncobj`.

    `procs_out`, if given, receives {"pids": {"node1": pid, ...}, "node1_exit": code}: the
    node processes that ran and how the embedded one exited (for tests; all are stopped
    when this returns)."""
    from josefine.launch.cluster import Launcher, default_node_cmd
    from josefine.launch.ports import free_port_block
    mode = ("durable" if fsync else "no-fsync") + "-embedded"
    res = BenchResult("josefine", mode, nodes, clients, pipeline, payload, duration, fsync)
    with tempfile.TemporaryDirectory(prefix="josefine-embedded-") as d:
        out = Path(d) / "load.json"
        marker = Path(str(out) + ".start")
        default = default_node_cmd(sys.executable)
        embedded = [sys.executable, "-m", "josefine.bench.embedded",
                    "--load", str(clients * pipeline), "--payload", str(payload),
                    "--warmup", str(warmup), "--duration", str(duration), "--out", str(out)]
        launcher: Launcher | None = None

        def node_cmd(config_path: Path) -> list[str]:
            assert launcher is not None
            if Path(config_path) == launcher.config_path(1):
                return [*embedded, "--config", str(config_path)]
            return default(config_path)

        launcher = Launcher(nodes, Path(d) / "cluster", free_port_block(nodes), restart=False,
                            fsync=fsync, out=None, node_cmd=node_cmd)
        pids: dict[str, int] = {}
        try:
            launcher.start()
            pids.update({f"node{i}": p for i, p in launcher.pids().items() if p})
            deadline = time.monotonic() + 90
            while not marker.exists():
                if time.monotonic() > deadline or launcher.pid(1) is None:
                    raise RuntimeError("embedded Josefine node 1 did not become leader "
                                       f"(exit {launcher.last_exit(1)}; "
                                       f"log {launcher.log_path(1)})")
                time.sleep(0.05)
            time.sleep(0.05)
            t0 = float(marker.read_text())
            m0 = time.monotonic() + (t0 - time.time())
            m1 = m0 + duration
            sampler = ProcSampler(lambda: {f"node{i}": launcher.pid(i) for i in launcher.node_ids})
            _sleep_until(m0, progress, m0 - warmup, m1)
            sampler.start()
            _sleep_until(m1, progress, m0 - warmup, m1)
            sampler.stop(duration, res)
            deadline = time.monotonic() + 60
            while not out.exists():
                if time.monotonic() > deadline or (launcher.pid(1) is None and not out.exists()):
                    raise RuntimeError("embedded Josefine node 1 did not report "
                                       f"(exit {launcher.last_exit(1)}; "
                                       f"log {launcher.log_path(1)})")
                time.sleep(0.05)
            data = json.loads(out.read_text())
            deadline = time.monotonic() + 20   # node 1 stops itself once it has reported
            while launcher.pid(1) is not None and time.monotonic() < deadline:
                time.sleep(0.05)
        finally:
            launcher.stop()
            if procs_out is not None:
                procs_out["pids"] = pids
                procs_out["node1_exit"] = launcher.last_exit(1)
    res.errors = data["errors"]
    # completion times are wall-clock, as in run_pysyncobj; summarize wants a common origin
    summarize(res, data["done_t"], [x * 1000 for x in data["lat_ms"]], data["t_start"])
    return res


if __name__ == "__main__":
    raise SystemExit(main())
