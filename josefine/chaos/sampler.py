"""Periodic status samples of every node, for the commit and leader checks.

One thread per node polls its node's status (`ClientStatus`) every `interval` seconds over
a long-lived connection (a fresh ZeroMQ context per poll would be far too costly). A
sample keeps what the checks need: who the node thinks it is (role, term, leader), its
commit / applied / head ids, its state machine digest and its pid (a restarted node is a
new incarnation: its commit may briefly lag what the old process reported, because the
commit marker is persisted lazily).

Samples are kept in memory and appended to ``status.jsonl`` in the run directory.

The node set may change during a run (membership faults): `set_nodes` starts polling a
node that joined and stops polling one that left; a node that left keeps its past samples
(the checks still read them) but no longer counts in `snapshot` or `leader`. Each sample
also records the members the node believes in (``voters``, ``learners``).
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
"applied": [t, h], "head": [t, h], "sm_digest", "voters": [ids], "learners": [ids]}"""

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
        self._started = False
        self._ctx = zmq.Context()
        self._file = open(path, "a", encoding="utf-8")
        self._node_stop: dict[int, threading.Event] = {}
        self._threads: dict[int, threading.Thread] = {}
        self._retired: list[threading.Thread] = []
        for i in addresses:
            self._make_thread(i, credentials)

    def _make_thread(self, node: int, credentials: ClientCredentials | None) -> threading.Thread:
        self._node_stop[node] = threading.Event()
        t = threading.Thread(target=self._run, args=(node, self.addresses[node], credentials),
                             daemon=True, name=f"chaos-sampler-{node}")
        self._threads[node] = t
        return t

    def start(self) -> None:
        with self._lock:
            self._started = True
            threads = list(self._threads.values())
        for t in threads:
            t.start()

    def stop(self) -> None:
        self._stop.set()
        with self._lock:
            threads = list(self._threads.values()) + self._retired
        for t in threads:
            if t.is_alive():
                t.join(self.timeout + 5)
        with self._lock:
            self._file.close()
        self._ctx.term()

    def set_nodes(self, addresses: dict[int, str],
                  credentials: ClientCredentials | None = None) -> tuple[list[int], list[int]]:
        """Follow a membership change: poll the nodes of `addresses` that are new (with
        `credentials`, which must know their server keys) and stop polling the ones not in
        it. Returns (added ids, removed ids)."""
        with self._lock:
            if self._stop.is_set():
                return [], []
            added = sorted(set(addresses) - set(self._threads))
            removed = sorted(set(self._threads) - set(addresses))
            for i in removed:
                self._node_stop.pop(i).set()
                self._retired.append(self._threads.pop(i))
                self.latest.pop(i, None)
                self.addresses.pop(i, None)
            if credentials is not None:
                self.credentials = credentials
            fresh = []
            for i in added:
                self.addresses[i] = addresses[i]
                self.latest[i] = None
                fresh.append(self._make_thread(i, credentials))
            started = self._started
        if started:
            for t in fresh:
                t.start()
        return added, removed

    def _run(self, node: int, address: str, credentials: ClientCredentials | None) -> None:
        poller = _Poller(self._ctx, address, self.cluster_id, credentials)
        gone = self._node_stop[node]
        try:
            while not self._stop.is_set() and not gone.is_set():
                started = time.monotonic()
                st = poller.poll(self.timeout)
                if gone.is_set():
                    break
                self._record(node, st)
                gone.wait(max(0.0, self.interval - (time.monotonic() - started)))
        finally:
            poller.close()

    def _record(self, node: int, st: dict[str, Any] | None) -> None:
        now = time.monotonic()
        if st is None:
            with self._lock:
                if node in self.latest:
                    self.latest[node] = None
            return
        s: Sample = {"t": now, "node": node}
        for k in _KEEP:
            v = st.get(k)
            s[k] = list(v) if isinstance(v, tuple) else v
        members = st.get("members")
        if isinstance(members, list):
            s["voters"] = sorted(int(m["id"]) for m in members if m.get("role") == "voter")
            s["learners"] = sorted(int(m["id"]) for m in members if m.get("role") == "learner")
        with self._lock:
            if node not in self._threads:   # left the cluster while this poll ran
                return
            self.samples.append(s)
            self.latest[node] = s
            if not self._file.closed:
                self._file.write(json.dumps(s, separators=(",", ":")) + "\n")
                self._file.flush()

    def snapshot(self) -> dict[int, Sample | None]:
        """The most recent answer of each current node (None while it does not answer)."""
        with self._lock:
            return dict(self.latest)

    def leader(self) -> int | None:
        """The node that most recently claimed leadership in the highest term, if any."""
        best = self._leader_sample()
        return None if best is None else int(best["node"])

    def _leader_sample(self) -> Sample | None:
        best: Sample | None = None
        for s in self.snapshot().values():
            if s is not None and s.get("role") == "leader":
                if best is None or s["term"] > best["term"]:
                    best = s
        return best

    def members(self) -> tuple[list[int], list[int]] | None:
        """(voters, learners) in the configuration of the current leader's latest sample;
        None while no node leads."""
        best = self._leader_sample()
        if best is None or "voters" not in best:
            return None
        return list(best["voters"]), list(best.get("learners") or [])
