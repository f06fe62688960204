"""Prometheus metrics of one node (prometheus-client), served on ``metrics_address``.

Only a node whose config sets `metrics_address` has a `NodeMetrics`; without it nothing is
measured and no hook is installed, so metrics off costs nothing.

Two kinds of figures, chosen by what they cost on the write path:

- **Pulled at scrape time**, free on the write path: term, heights, leadership, followers'
  match heights, dropped frames by reason, elections. A scrape asks the role actor for a
  `NodeStatus` (the same query `josefine status` makes), so the core is read on its own
  thread and the figures are one consistent moment.
- **Observed as they happen** (histograms): how long each synced store write took
  (`josefine_fsync_seconds`), proposal to commit on the leader (`josefine_commit_seconds`)
  and commands per proposal batch (`josefine_batch_commands`). Each costs one observation
  per write or per batch, not per command.

Each node has its own `CollectorRegistry`, so several embedded nodes in one process do not
mix their figures.
"""
from __future__ import annotations

import logging
import time
from collections import deque
from typing import Callable, Iterator

from prometheus_client import CollectorRegistry, Histogram, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from josefine.config import parse_metrics_address
from josefine.runtime.status import NodeStatus

log = logging.getLogger(__name__)

__all__ = ["NodeMetrics", "CommitTimer"]

_FSYNC_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1,
                  0.25, 1.0)
_COMMIT_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 4096)


def _height(ref: object) -> float | None:
    """A status block reference ([term, height]) as its height."""
    if isinstance(ref, (list, tuple)) and len(ref) == 2:
        return float(ref[1])
    return None


class _StatusCollector(Collector):
    """Figures read from a fresh `NodeStatus` at each scrape."""

    def __init__(self, status: Callable[[], NodeStatus]) -> None:
        self._status = status

    def collect(self) -> Iterator[Metric]:
        try:
            st = self._status()
        except Exception as exc:   # a node that cannot answer: say so, serve the rest
            log.warning("metrics: status query failed: %s", exc)
            return
        if st.role == "stopped":
            return
        yield GaugeMetricFamily("josefine_term", "The node's current term.", st.term or 0)
        for name, ref, what in (
                ("josefine_commit_height", st.commit, "highest block known committed"),
                ("josefine_applied_height", st.applied, "last block applied to the state "
                                                        "machine"),
                ("josefine_head_height", st.head, "tip of the branch the node follows"),
                ("josefine_base_height", st.base, "chain's base (blocks below it are "
                                                  "compacted into a snapshot)"),
                ("josefine_snapshot_height", st.snapshot, "base of the newest snapshot")):
            h = _height(ref)
            if h is not None:
                yield GaugeMetricFamily(name, f"Height of the {what}.", h)
        yield GaugeMetricFamily("josefine_is_leader", "1 while this node is the leader.",
                                1.0 if st.role == "leader" else 0.0)
        dropped = CounterMetricFamily("josefine_dropped_frames",
                                      "Frames the transport dropped, by reason.",
                                      labels=["reason"])
        for reason, n in sorted(((st.transport or {}).get("dropped_by_reason") or {}).items()):
            dropped.add_metric([str(reason)], float(n))
        yield dropped
        yield CounterMetricFamily("josefine_elections",
                                  "Elections this node started as a candidate.",
                                  float(st.elections or 0))
        snaps = st.snapshots or {}
        yield CounterMetricFamily("josefine_snapshots",
                                  "Snapshots this node wrote of its own state.",
                                  float(snaps.get("taken", 0)))
        yield CounterMetricFamily("josefine_snapshots_installed",
                                  "Snapshots received from a leader and installed.",
                                  float(snaps.get("installed", 0)))
        yield GaugeMetricFamily("josefine_snapshot_write_seconds",
                                "How long the last snapshot took to write.",
                                float(snaps.get("last_seconds", 0.0)))
        if st.followers is not None:
            match = GaugeMetricFamily("josefine_follower_match_height",
                                      "Highest block the leader knows each follower holds "
                                      "(leader only).", labels=["peer"])
            for peer, h in sorted(st.followers.items()):
                match.add_metric([str(peer)], float(h))
            yield match


class CommitTimer:
    """Proposal-to-commit times of the leader's own blocks: each proposed block's height and
    the time it was proposed, in height order, observed once the commit reaches it. Owned
    by the thread that holds the role actor's state."""

    __slots__ = ("_pending", "_observe")

    def __init__(self, observe: Callable[[float], None]) -> None:
        self._pending: deque[tuple[int, float]] = deque()
        self._observe = observe

    def proposed(self, height: int, at: float) -> None:
        self._pending.append((height, at))

    def committed(self, height: int) -> None:
        pending = self._pending
        if not pending or pending[0][0] > height:
            return
        now = time.perf_counter()
        observe = self._observe
        while pending and pending[0][0] <= height:
            observe(now - pending.popleft()[1])

    def clear(self) -> None:
        """Leadership lost: what was proposed may never commit as proposed."""
        self._pending.clear()


class NodeMetrics:
    """The metrics of one node and its HTTP listener (``/metrics``)."""

    def __init__(self, node_id: int, address: str, status: Callable[[], NodeStatus]) -> None:
        host, port = parse_metrics_address(address)
        self.node_id = node_id
        self.address = address
        self.registry = CollectorRegistry(auto_describe=False)
        self.fsync_seconds = Histogram(
            "josefine_fsync_seconds", "Duration of each synced store write (group commit: "
            "one write may carry many Readys).", buckets=_FSYNC_BUCKETS, registry=self.registry)
        self.commit_seconds = Histogram(
            "josefine_commit_seconds", "From proposing a block to committing it (leader).",
            buckets=_COMMIT_BUCKETS, registry=self.registry)
        self.batch_commands = Histogram(
            "josefine_batch_commands", "Client commands batched into one proposal.",
            buckets=_BATCH_BUCKETS, registry=self.registry)
        self.registry.register(_StatusCollector(status))
        self.commit_timer = CommitTimer(self.commit_seconds.observe)
        self._server, self._thread = start_http_server(port, addr=host, registry=self.registry)
        log.info("node %d: serving metrics on http://%s/metrics", node_id, address)

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)
