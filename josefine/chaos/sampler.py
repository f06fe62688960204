"""Periodic status samples of every node, for the commit and leader checks.

One thread per node polls its node's status (`ClientStatus`) every `interval` seconds over
a long-lived connection (a fresh ZeroMQ context per poll would be far too costly). A
sample keeps what the checks need: who the node thinks it is (role, term, leader), its
commit / applied / head ids, its state machine digest and its pid (a restarted node is a
new incarnation: its commit may briefly lag what the old process reported, because the
commit marker is persisted lazily).

Samples are kept in memory and appended to ``status.jsonl`` in the run directory.
"""
from __future__ import annotations

import itertools
import json
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import zmq

from josefine.messages import ClientStatus
from josefine.security import ClientCredentials
from josefine.transport.client_conn import ClientConnection

__all__ = ["StatusSampler", "Sample", "poll_status"]

Sample = dict[str, Any]
"""{"t": monotonic s, "node": id, "pid", "role", "term", "leader", "commit": [t, h],
"applied": [t, h], "head": [t, h], "sm_digest"}"""

_KEEP = ("pid", "role", "term", "leader", "commit", "applied", "head", "sm_digest",
         "follower_reads", "forwarded_writes")


class _Poller:
    """A reusable status connection to one node (one thread at a time)."""

    def __init__(self, ctx: zmq.Context, address: str, cluster_id: str,
                 credentials: ClientCredentials | None = None) -> None:
        self.cid = f"chaos-status-{uuid.uuid4().hex[:8]}"
        curve = None if credentials is None else (credentials.pair,
                                                  credentials.server_key(address))
        self.conn = ClientConnection(address, cluster_id, self.cid, context=ctx, curve=curve)
        self.ids = itertools.count(1)

    def poll(self, timeout: float) -> dict[str, Any] | None:
        try:
            resp = self.conn.request(ClientStatus(client_id=self.cid, read_id=next(self.ids)),
                                     timeout)
        except TimeoutError:
            return None
        return dict(resp.status)

    def close(self) -> None:
        self.conn.close()


def poll_status(ctx: zmq.Context, addresses: dict[int, str], cluster_id: str,
                timeout: float = 0.5, credentials: ClientCredentials | None = None
                ) -> dict[int, dict[str, Any] | None]:
    """One status per node (None: no answer), polled in parallel."""
    out: dict[int, dict[str, Any] | None] = {}

    def one(i: int, a: str) -> None:
        p = _Poller(ctx, a, cluster_id, credentials)
        try:
            out[i] = p.poll(timeout)
        finally:
            p.close()

    threads = [threading.Thread(target=one, args=(i, a), daemon=True) for i, a in addresses.items()]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout + 5)
    return {i: out.get(i) for i in addresses}


class StatusSampler:
    """Background status polling of every node until `stop()`."""

    def __init__(self, addresses: dict[int, str], cluster_id: str, path: str | Path,
                 interval: float = 0.2, timeout: float = 0.3,
                 credentials: ClientCredentials | None = None) -> None:
        self.addresses = dict(addresses)
        self.credentials = credentials
        self.cluster_id = cluster_id
        self.interval = interval
        self.timeout = timeout
        self.samples: list[Sample] = []
        self.latest: dict[int, Sample | None] = {i: None for i in addresses}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._ctx = zmq.Context()
        self._file = open(path, "a", encoding="utf-8")
        self._threads = [threading.Thread(target=self._run, args=(i,), daemon=True,
                                          name=f"chaos-sampler-{i}") for i in addresses]

    def start(self) -> None:
        for t in self._threads:
            t.start()

    def stop(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(self.timeout + 5)
        with self._lock:
            self._file.close()
        self._ctx.term()

    def _run(self, node: int) -> None:
        poller = _Poller(self._ctx, self.addresses[node], self.cluster_id, self.credentials)
        try:
            while not self._stop.is_set():
                started = time.monotonic()
                st = poller.poll(self.timeout)
                self._record(node, st)
                self._stop.wait(max(0.0, self.interval - (time.monotonic() - started)))
        finally:
            poller.close()

    def _record(self, node: int, st: dict[str, Any] | None) -> None:
        now = time.monotonic()
        if st is None:
            with self._lock:
                self.latest[node] = None
            return
        s: Sample = {"t": now, "node": node}
        for k in _KEEP:
            v = st.get(k)
            s[k] = list(v) if isinstance(v, tuple) else v
        with self._lock:
            self.samples.append(s)
            self.latest[node] = s
            if not self._file.closed:
                self._file.write(json.dumps(s, separators=(",", ":")) + "\n")
                self._file.flush()

    def snapshot(self) -> dict[int, Sample | None]:
        """The most recent answer of each node (None while it does not answer)."""
        with self._lock:
            return dict(self.latest)

    def leader(self) -> int | None:
        """The node that most recently claimed leadership in the highest term, if any."""
        snap = self.snapshot()
        best: tuple[int, int] | None = None
        for i, s in snap.items():
            if s is not None and s.get("role") == "leader":
                if best is None or s["term"] > best[0]:
                    best = (s["term"], i)
        return None if best is None else best[1]
