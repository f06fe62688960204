"""Helpers for tests that run real node processes on loopback."""
from __future__ import annotations

import time
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Callable, Iterator

from josefine.client import query_status
from josefine.launch.ports import free_port_block  # noqa: F401 - re-exported for tests


def wait_for(pred: Callable[[], Any], timeout: float, what: str, interval: float = 0.05) -> Any:
    """Poll `pred` until it returns something truthy; fail with `what` after `timeout`."""
    deadline = time.monotonic() + timeout
    last_exc: Exception | None = None
    while time.monotonic() < deadline:
        try:
            v = pred()
            if v:
                return v
        except Exception as exc:  # node not up yet, etc.
            last_exc = exc
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout} s waiting for {what} (last error: {last_exc})")


def statuses(addresses: dict[int, str], cluster_id: str, timeout: float = 1.0,
             credentials: Any = None) -> dict[int, dict]:
    out = {}
    for i, a in addresses.items():
        try:
            out[i] = query_status(a, cluster_id, timeout, credentials=credentials)
        except Exception:
            out[i] = {"role": "unreachable"}
    return out


def leader_of(addresses: dict[int, str], cluster_id: str, credentials: Any = None) -> int | None:
    st = statuses(addresses, cluster_id, credentials=credentials)
    leaders = [i for i, s in st.items() if s.get("role") == "leader"]
    if len(leaders) == 1:
        return leaders[0]
    if leaders:  # two leaders of different terms can coexist briefly: take the newest
        return max(leaders, key=lambda i: st[i]["term"])
    return None


@dataclass
class RunningCluster:
    launcher: Any
    addrs: dict[int, str]
    creds: Any
    leader: int
    """The first leader, found before the test body runs."""


@contextmanager
def running_cluster(data_dir: Any, nodes: int = 3, **kw: Any) -> Iterator[RunningCluster]:
    """A launched cluster of real node processes with a leader; stopped afterwards, and no
    node process may outlive it."""
    from josefine.launch.cluster import Launcher
    launcher = Launcher(nodes, data_dir, free_port_block(nodes), out=None, **kw)
    launcher.start()
    try:
        addrs = {i: launcher.address(i) for i in launcher.node_ids}
        creds = launcher.credentials()
        leader = wait_for(lambda: leader_of(addrs, launcher.cluster_id, creds), 30, "a leader")
        yield RunningCluster(launcher, addrs, creds, leader)
    finally:
        launcher.stop()
    assert all(pid is None for pid in launcher.pids().values()), "a node process outlived it"
