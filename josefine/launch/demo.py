"""`josefine demo`: a local 3-node cluster doing real work, in one command.

Launches durable node processes on loopback, writes and reads keys through `Client`, kills
the leader with SIGKILL, shows a new leader taking over with every acknowledged write
intact, lets the supervisor restart the killed node, shows it caught up, and stops
everything. Meant for the README's quick start; exits non-zero if anything is off.
"""
from __future__ import annotations

import argparse
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path

from josefine.client import Client, query_status
from josefine.launch.cluster import Launcher
from josefine.launch.ports import free_port_block


def _statuses(launcher: Launcher) -> dict[int, dict]:
    out = {}
    for i in launcher.node_ids:
        try:
            out[i] = query_status(launcher.address(i), launcher.cluster_id, 0.5,
                                  credentials=launcher.credentials())
        except Exception:
            out[i] = {"role": "down"}
    return out


def _wait(pred, timeout: float, what: str):  # noqa: ANN001
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        v = pred()
        if v:
            return v
        time.sleep(0.05)
    raise RuntimeError(f"timed out waiting for {what}")


def _leader(launcher: Launcher, exclude: int | None = None) -> int | None:
    st = _statuses(launcher)
    ls = [i for i, s in st.items() if s.get("role") == "leader" and i != exclude]
    return max(ls, key=lambda i: st[i]["term"]) if ls else None


def _show(launcher: Launcher) -> None:
    for i, s in sorted(_statuses(launcher).items()):
        print(f"    node {i}: {s.get('role'):9} term={s.get('term', '-')} "
              f"commit={s.get('commit', '-')} applied={s.get('applied', '-')}")


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="josefine demo", description=__doc__.split("\n")[0])
    ap.add_argument("--nodes", type=int, default=3, help="cluster size (default 3)")
    ap.add_argument("--writes", type=int, default=500,
                    help="key-value writes before the leader is killed (default 500)")
    ap.add_argument("--data-dir", type=Path, default=None,
                    help="keep the cluster's files here (default: a temp dir, removed)")
    return ap


def main(argv: list[str] | None = None) -> int:
    ap = build_parser()
    args = ap.parse_args(argv)
    tmp = None
    data = args.data_dir
    if data is None:
        tmp = tempfile.mkdtemp(prefix="josefine-demo-")
        data = Path(tmp)
    launcher = Launcher(args.nodes, data, free_port_block(args.nodes), out=sys.stdout)
    try:
        launcher.start()
        t0 = time.monotonic()
        leader = _wait(lambda: _leader(launcher), 30, "a leader")
        print(f"\n== node {leader} became leader after {time.monotonic() - t0:.2f} s")
        addrs = {i: launcher.address(i) for i in launcher.node_ids}
        with Client(addrs, launcher.cluster_id, timeout=30,
                    credentials=launcher.credentials()) as c:
            t0 = time.monotonic()
            for i in range(args.writes):
                c.put(f"key{i}", f"value{i}")
            dt = time.monotonic() - t0
            print(f"== {args.writes} durable writes in {dt:.2f} s "
                  f"({args.writes / dt:.0f}/s, one at a time)")
            print(f"   get key7 -> {c.get('key7')!r}")
            print(f"   cas key7 value7 -> seven: {c.cas('key7', 'value7', 'seven')}")
            print(f"   get key7 -> {c.get('key7')!r}")
            _show(launcher)
            print(f"\n== SIGKILL the leader (node {leader})")
            launcher.kill(leader, signal.SIGKILL)
            t0 = time.monotonic()
            new = _wait(lambda: _leader(launcher, exclude=leader), 30, "a new leader")
            print(f"== node {new} leads after {time.monotonic() - t0:.2f} s")
            c.put("after-failover", "yes")
            lost = [i for i in range(args.writes)
                    if i != 7 and c.get(f"key{i}") != f"value{i}"]
            print(f"   acknowledged writes lost: {len(lost)}")
            print("== waiting for the killed node to be restarted and catch up")
            _wait(lambda: len({tuple(s.get("applied", ()))
                               for s in _statuses(launcher).values()}) == 1
                  and all(s.get("role") != "down" for s in _statuses(launcher).values()), 60,
                  "catch-up")
            _show(launcher)
            if lost:
                print("DEMO FAILED: acknowledged writes were lost", file=sys.stderr)
                return 1
        print("\n== done: stopping the cluster")
        return 0
    finally:
        launcher.stop()
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
