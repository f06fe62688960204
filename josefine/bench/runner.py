"""Run one benchmark configuration against a fresh local cluster and summarize it."""
from __future__ import annotations

import multiprocessing as mp
import sys
import tempfile
import threading
import time
from array import array
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from josefine.launch.ports import free_port_block
from josefine.procstat import cpu_seconds, rss_kib


@dataclass
class BenchResult:
    system: str
    mode: str
    nodes: int
    clients: int
    pipeline: int
    payload: int
    duration_s: float
    fsync: bool
    writes: int = 0
    writes_per_s: float = 0.0
    latency_ms: dict[str, float] = field(default_factory=dict)
    cpu_per_node: dict[str, float] = field(default_factory=dict)
    """CPU seconds per wall second of the measured window, per node process."""
    peak_rss_mib: dict[str, float] = field(default_factory=dict)
    errors: int = 0
    timeline: list[tuple[float, int, float]] = field(default_factory=list)
    """(seconds since start, writes completed in that 0.5 s bucket, p50 ms of the bucket)."""
    rss_timeline: dict[str, list[tuple[float, float]]] = field(default_factory=dict)
    """Per node: (seconds into the measured window, current RSS MiB), about every
    `ProcSampler.RSS_EVERY_S` seconds: whether memory stays flat under load."""

    def to_dict(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}


def percentile(sorted_vals: list[float], q: float) -> float:
    if not sorted_vals:
        return float("nan")
    k = min(len(sorted_vals) - 1, max(0, int(round(q * (len(sorted_vals) - 1)))))
    return sorted_vals[k]


def summarize(res: BenchResult, done_t: list[float], lat_us: list[float], t0: float) -> None:
    res.writes = len(lat_us)
    res.writes_per_s = res.writes / res.duration_s if res.duration_s else 0.0
    lat = sorted(x / 1000.0 for x in lat_us)
    res.latency_ms = {"p50": percentile(lat, 0.50), "p90": percentile(lat, 0.90),
                      "p99": percentile(lat, 0.99), "p99.9": percentile(lat, 0.999),
                      "max": lat[-1] if lat else float("nan")}
    buckets: dict[int, list[float]] = {}
    for t, us in zip(done_t, lat_us, strict=True):
        buckets.setdefault(int((t - t0) / 0.5), []).append(us / 1000.0)
    res.timeline = [(b * 0.5, len(v), percentile(sorted(v), 0.5))
                    for b, v in sorted(buckets.items())]


class ProcSampler:
    """Samples CPU and RSS of named pids while a run is measured."""

    RSS_EVERY_S = 1.0

    def __init__(self, pids: Callable[[], dict[str, int | None]]) -> None:
        self.pids = pids
        self.cpu0: dict[str, float] = {}
        self.cpu1: dict[str, float] = {}
        self.peak: dict[str, int] = {}
        self.rss: dict[str, list[tuple[float, float]]] = {}
        self._t0 = 0.0
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)

    def start(self) -> None:
        self._t0 = time.monotonic()
        for name, pid in self.pids().items():
            c = cpu_seconds(pid) if pid else None
            if c is not None:
                self.cpu0[name] = c
        self._t.start()

    def _run(self) -> None:
        next_rss = 0.0
        while not self._stop.wait(0.25):
            t = time.monotonic() - self._t0
            for name, pid in self.pids().items():
                if pid:
                    cur, peak = rss_kib(pid)
                    if peak:
                        self.peak[name] = max(self.peak.get(name, 0), peak)
                    if cur and t >= next_rss:
                        self.rss.setdefault(name, []).append((round(t, 1), round(cur / 1024, 1)))
            if t >= next_rss:
                next_rss = t + self.RSS_EVERY_S

    def stop(self, wall: float, res: BenchResult) -> None:
        self._stop.set()
        self._t.join()
        for name, pid in self.pids().items():
            c = cpu_seconds(pid) if pid else None
            if c is not None and name in self.cpu0:
                res.cpu_per_node[name] = round((c - self.cpu0[name]) / wall, 3)
            _, peak = rss_kib(pid) if pid else (None, None)
            if peak:
                self.peak[name] = max(self.peak.get(name, 0), peak)
        res.peak_rss_mib = {k: round(v / 1024, 1) for k, v in self.peak.items()}
        res.rss_timeline = self.rss


def _split(total: int, parts: int) -> list[int]:
    return [total // parts + (1 if i < total % parts else 0) for i in range(parts)]


def run_josefine(nodes: int, clients: int, pipeline: int, duration: float, payload: int,
                 fsync: bool, warmup: float, procs: int = 0,
                 progress: Callable[[float], None] | None = None,
                 insecure: bool = False, metrics: bool = False) -> BenchResult:
    """Josefine over its client protocol; Curve on unless `insecure` (mode gets
    "-insecure"). Records launch-to-first-leader time, key generation included, as
    latency_ms["first_leader"]."""
    from josefine.bench.load import josefine_worker
    from josefine.launch.cluster import Launcher
    mode = ("durable" if fsync else "no-fsync") + ("-insecure" if insecure else "") \
        + ("-metrics" if metrics else "")
    res = BenchResult("josefine", mode, nodes, clients, pipeline, payload, duration, fsync)
    with tempfile.TemporaryDirectory(prefix="josefine-bench-") as d:
        t_launch = time.monotonic()
        launcher = Launcher(nodes, Path(d), free_port_block(nodes), fsync=fsync, out=None,
                            insecure=insecure,
                            metrics_base_port=free_port_block(nodes) if metrics else None)
        launcher.start()
        try:
            addrs = {i: launcher.address(i) for i in launcher.node_ids}
            creds = launcher.credentials()
            _wait_leader(addrs, launcher.cluster_id, creds)
            first_leader_ms = (time.monotonic() - t_launch) * 1000
            procs = procs or min(clients, 4)
            ctx = mp.get_context("spawn")
            q = ctx.Queue()
            t_start = time.monotonic() + warmup + 1.0   # + process start-up
            t_end = t_start + duration
            ps = []
            for w, n in enumerate(_split(clients, procs)):
                if n:
                    p = ctx.Process(target=josefine_worker,
                                    args=(w, addrs, launcher.cluster_id, n * pipeline, payload,
                                          t_start, t_end, q, creds))
                    p.start()
                    ps.append(p)
            sampler = ProcSampler(lambda: {f"node{i}": launcher.pid(i) for i in launcher.node_ids})
            scraper = _Scraper([launcher.node_config(i).metrics_address
                                for i in launcher.node_ids]) if metrics else None
            _sleep_until(t_start, progress, t_start - warmup - 1.0, t_end)
            sampler.start()
            if scraper is not None:
                scraper.start()
            _sleep_until(t_end, progress, t_start - warmup - 1.0, t_end)
            sampler.stop(duration, res)
            if scraper is not None:
                res.latency_ms["metrics_scrapes"] = scraper.stop()
            done_t: list[float] = []
            lat: list[float] = []
            for _ in ps:
                r = _get_result(q, ps)
                a, b = array("d"), array("d")
                a.frombytes(r["done_t"])
                b.frombytes(r["lat_us"])
                done_t.extend(a)
                lat.extend(b)
                res.errors += r["errors"]
            for p in ps:
                p.join(10)
            summarize(res, done_t, lat, t_start)
            res.latency_ms["first_leader"] = round(first_leader_ms, 1)
        finally:
            launcher.stop()
    return res


class _Scraper:
    """Scrapes every node's /metrics once a second, as a Prometheus server would, so that
    `--compare metrics` prices the scrapes too. Counts the successful ones."""

    def __init__(self, addresses: list[str | None]) -> None:
        self.addresses = [a for a in addresses if a]
        self.ok = 0
        self._halt = threading.Event()
        self._thread = threading.Thread(target=self._run, name="bench-scraper", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _run(self) -> None:
        import urllib.request
        while not self._halt.wait(1.0):
            for a in self.addresses:
                try:
                    with urllib.request.urlopen(f"http://{a}/metrics", timeout=2) as r:
                        r.read()
                    self.ok += 1
                except OSError:
                    pass

    def stop(self) -> int:
        self._halt.set()
        self._thread.join(timeout=5)
        return self.ok


def _get_result(q: Any, ps: list) -> dict:
    """Next worker result; fails fast if every worker died without reporting."""
    import queue
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            return q.get(timeout=0.5)
        except queue.Empty:
            if all(p.exitcode is not None and p.exitcode != 0 for p in ps):
                raise RuntimeError("benchmark workers failed: exit codes "
                                   f"{[p.exitcode for p in ps]}") from None
    raise RuntimeError("benchmark workers did not report within 60 s")


def _wait_leader(addrs: dict[int, str], cluster_id: str, credentials: Any = None,
                 timeout: float = 30) -> int:
    from josefine.client import query_status
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for i, a in addrs.items():
            try:
                if query_status(a, cluster_id, 0.5,
                                credentials=credentials).get("role") == "leader":
                    return i
            except Exception:
                pass
        time.sleep(0.05)
    raise RuntimeError("no leader elected")


def _sleep_until(t: float, progress: Callable[[float], None] | None, t0: float,
                 t_end: float) -> None:
    while True:
        now = time.monotonic()
        if progress is not None:
            progress(min(1.0, max(0.0, (now - t0) / (t_end - t0))))
        if now >= t:
            return
        time.sleep(min(0.2, t - now))


def run_pysyncobj(nodes: int, clients: int, pipeline: int, duration: float, payload: int,
                  batch: bool, warmup: float,
                  progress: Callable[[float], None] | None = None) -> BenchResult:
    """The same workload on PySyncObj (batching on or off), nodes as separate processes."""
    import json
    import subprocess
    mode = "batch" if batch else "no-batch"
    res = BenchResult("pysyncobj", mode, nodes, clients, pipeline, payload, duration, False)
    base = free_port_block(nodes)
    addrs = [f"127.0.0.1:{base + i}" for i in range(nodes)]
    with tempfile.TemporaryDirectory(prefix="pso-bench-") as d:
        out = Path(d) / "load.json"
        marker = Path(str(out) + ".start")
        procs = []
        try:
            for i, me in enumerate(addrs):
                cmd = [sys.executable, "-m", "josefine.bench.pso_node", "--self", me,
                       "--partners", ",".join(a for a in addrs if a != me),
                       "--batch", str(int(batch)), "--payload", str(payload)]
                if i == 0:
                    cmd += ["--load", str(clients * pipeline), "--warmup", str(warmup),
                            "--duration", str(duration), "--out", str(out)]
                procs.append(subprocess.Popen(cmd, stdout=subprocess.DEVNULL,
                                              stderr=subprocess.DEVNULL))
            deadline = time.monotonic() + 60
            while not marker.exists():
                if time.monotonic() > deadline or procs[0].poll() is not None:
                    raise RuntimeError("PySyncObj cluster did not elect a leader")
                time.sleep(0.05)
            time.sleep(0.05)
            t0 = float(marker.read_text())
            m0 = time.monotonic() + (t0 - time.time())
            m1 = m0 + duration
            sampler = ProcSampler(lambda: {f"node{i + 1}": p.pid for i, p in enumerate(procs)})
            _sleep_until(m0, progress, m0 - warmup, m1)
            sampler.start()
            _sleep_until(m1, progress, m0 - warmup, m1)
            sampler.stop(duration, res)
            procs[0].wait(timeout=60)
            data = json.loads(out.read_text())
        finally:
            for p in procs:
                if p.poll() is None:
                    p.kill()
                p.wait()
    res.errors = data["errors"]
    # completion times are wall-clock here; summarize wants a common origin only
    summarize(res, data["done_t"], [x * 1000 for x in data["lat_ms"]], data["t_start"])
    return res


def run_client_api(nodes: int, clients: int, duration: float, payload: int, fsync: bool,
                   warmup: float, progress: Callable[[float], None] | None = None) -> BenchResult:
    """Writes through the public `Client` from `clients` threads sharing one Client (one
    process): what an application sees, including the client library's own overhead.
    Also records the time from launch to the first leader (in `latency_ms["first_leader"]`)."""
    from josefine.client import Client
    from josefine.launch.cluster import Launcher
    res = BenchResult("josefine", "client-api" + ("" if fsync else "-no-fsync"), nodes, clients,
                      1, payload, duration, fsync)
    with tempfile.TemporaryDirectory(prefix="josefine-bench-") as d:
        launcher = Launcher(nodes, Path(d), free_port_block(nodes), fsync=fsync, out=None)
        t_launch = time.monotonic()
        launcher.start()
        try:
            addrs = {i: launcher.address(i) for i in launcher.node_ids}
            _wait_leader(addrs, launcher.cluster_id, launcher.credentials())
            first_leader_ms = (time.monotonic() - t_launch) * 1000
            value = "x" * payload
            t_start = time.monotonic() + warmup
            t_end = t_start + duration
            done_t: list[float] = []
            lat: list[float] = []
            lock = threading.Lock()
            with Client(addrs, launcher.cluster_id, timeout=30,
                        credentials=launcher.credentials()) as c:
                def worker(w: int) -> None:
                    n = 0
                    mine_t, mine_l = [], []
                    while True:
                        now = time.monotonic()
                        if now >= t_end:
                            break
                        n += 1
                        t0 = time.perf_counter()
                        c.put(f"k{w}-{n % 64}", value)
                        if now >= t_start:
                            mine_t.append(time.monotonic())
                            mine_l.append((time.perf_counter() - t0) * 1e6)
                    with lock:
                        done_t.extend(mine_t)
                        lat.extend(mine_l)
                ts = [threading.Thread(target=worker, args=(w,)) for w in range(clients)]
                for t in ts:
                    t.start()
                sampler = ProcSampler(
                    lambda: {f"node{i}": launcher.pid(i) for i in launcher.node_ids})
                _sleep_until(t_start, progress, t_start - warmup, t_end)
                sampler.start()
                _sleep_until(t_end, progress, t_start - warmup, t_end)
                sampler.stop(duration, res)
                for t in ts:
                    t.join(60)
            summarize(res, done_t, lat, t_start)
            res.latency_ms["first_leader"] = round(first_leader_ms, 1)
        finally:
            launcher.stop()
    return res
