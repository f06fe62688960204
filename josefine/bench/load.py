"""Load generators for `josefine bench`, each run in its own process.

A Josefine worker holds `streams` independent client sessions on ONE DEALER socket to the
leader; each stream keeps `pipeline` writes outstanding (distinct client ids per slot, so a
session never has two writes in flight and exactly-once still holds). Latency is measured
from send to the matching reply. Results go back as arrays of completion times and
latencies (µs) through a multiprocessing queue.
"""
from __future__ import annotations

import time
import uuid
from array import array
from typing import Any

import zmq

from josefine.fsm.kv import kv_put
from josefine.messages import ClientPropose, ClientProposeResp, Status
from josefine.security import apply_client_curve
from josefine.transport.codec import CodecError, decode_frame, encode_client_frame


def _find_leader(addresses: dict[int, str], cluster_id: str, deadline: float,
                 credentials: Any = None) -> str:
    from josefine.client import query_status
    while time.monotonic() < deadline:
        for a in addresses.values():
            try:
                st = query_status(a, cluster_id, 0.5, credentials=credentials)
            except Exception:
                continue
            if st.get("role") == "leader":
                return a
        time.sleep(0.05)
    raise RuntimeError("no leader")


def josefine_worker(wid: int, addresses: dict[int, str], cluster_id: str, slots: int,
                    payload: int, t_start: float, t_end: float, out: Any,
                    credentials: Any = None, end_at: Any = None) -> None:
    """Keep `slots` writes in flight until t_end; record completions after t_start.

    `end_at`, a shared double (multiprocessing RawValue) holding a monotonic time, lets the
    parent end the load earlier than `t_end` once it knows when it is done (a bench whose
    phase ends when a membership change has completed)."""
    ctx = zmq.Context()
    leader = _find_leader(addresses, cluster_id, time.monotonic() + 30, credentials)
    sock = ctx.socket(zmq.DEALER)
    if credentials is not None:
        apply_client_curve(sock, credentials.pair, credentials.server_key(leader))
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(leader)
    base = f"b{wid}-{uuid.uuid4().hex[:6]}"
    ids = [f"{base}-{s}" for s in range(slots)]
    seqs = [0] * slots
    sent_at = [0.0] * slots
    slot_of = {cid: i for i, cid in enumerate(ids)}
    value = "x" * payload
    done_t = array("d")
    lat_us = array("d")
    errors = 0

    def send(batch: list[int], fresh: bool) -> None:
        msgs = []
        now = time.perf_counter()
        for s in batch:
            if fresh:
                seqs[s] += 1
            sent_at[s] = now
            msgs.append(ClientPropose(client_id=ids[s], seq=seqs[s],
                                      command=kv_put(f"k{s % 64}", value)))
        sock.send(encode_client_frame(cluster_id, msgs), copy=False)

    def reconnect() -> tuple[zmq.Socket, zmq.Poller]:
        sock.close()
        addr = _find_leader(addresses, cluster_id, time.monotonic() + 30, credentials)
        s2 = ctx.socket(zmq.DEALER)
        if credentials is not None:
            apply_client_curve(s2, credentials.pair, credentials.server_key(addr))
        s2.setsockopt(zmq.LINGER, 0)
        s2.connect(addr)
        p2 = zmq.Poller()
        p2.register(s2, zmq.POLLIN)
        return s2, p2

    poller = zmq.Poller()
    poller.register(sock, zmq.POLLIN)
    send(list(range(slots)), True)
    while True:
        now_m = time.monotonic()
        if now_m >= (t_end if end_at is None else min(t_end, end_at.value)):
            break
        if not poller.poll(500):
            # nothing for 500 ms (leader change?): find the leader, resend with the same seqs
            sock, poller = reconnect()
            send(list(range(slots)), False)
            continue
        ready: list[int] = []
        busy: list[int] = []
        redirected = False
        while True:
            try:
                frame = sock.recv(zmq.NOBLOCK)
            except zmq.Again:
                break
            try:
                _, replies = decode_frame(frame, cluster_id, 1 << 24)
            except CodecError:
                errors += 1
                continue
            now = time.perf_counter()
            for r in replies:
                if type(r) is not ClientProposeResp:
                    continue
                s = slot_of.get(r.client_id)
                if s is None or r.seq != seqs[s]:
                    continue
                if r.status == Status.OK:
                    if now_m >= t_start:
                        done_t.append(time.monotonic())
                        lat_us.append((now - sent_at[s]) * 1e6)
                    ready.append(s)
                elif r.status == Status.BUSY:
                    busy.append(s)   # back-pressure: retry the same seq shortly
                else:
                    errors += 1
                    redirected = redirected or r.status == Status.NOT_LEADER
        if ready:
            send(ready, True)
        if busy:
            time.sleep(0.002)
            send(busy, False)
        if redirected:
            sock, poller = reconnect()
            send(list(range(slots)), False)
    sock.close()
    ctx.term()
    out.put({"wid": wid, "done_t": done_t.tobytes(), "lat_us": lat_us.tobytes(),
             "errors": errors})
