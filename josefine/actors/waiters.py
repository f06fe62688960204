"""Who is waiting for what: the bridge between client requests and their answers.

A proposal is answered by whichever actor learns its fate first: the FSM driver when the
command is applied (OK), or the core's outcome (NOT_LEADER, BUSY, UNKNOWN, ABORTED). Both
resolve through this registry, keyed by (client_id, seq); reads by a node-local read id.
A waiter is a plain callable; the transport's waiter replies over ZeroMQ, the embedding
API's waiter completes a Future. Thread-safe: callers are several actor threads.
"""
from __future__ import annotations

import threading
import time
from typing import Any, Callable

Waiter = Callable[[Any, Any, Any], None]   # (status, result, leader_hint)

_EXPIRE_S = 120.0


class Waiters:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._w: dict[Any, tuple[float, Waiter, Any]] = {}
        self._since_sweep = 0

    def add(self, key: Any, waiter: Waiter, extra: Any = None) -> None:
        now = time.monotonic()
        with self._lock:
            self._w[key] = (now, waiter, extra)
            self._since_sweep += 1
            if self._since_sweep > 4096:
                self._sweep(now)

    def add_many(self, entries: list[tuple[Any, Waiter]]) -> None:
        """`add` for several (key, waiter) pairs under one lock (a pipelined client frame)."""
        now = time.monotonic()
        with self._lock:
            w = self._w
            for key, waiter in entries:
                w[key] = (now, waiter, None)
            self._since_sweep += len(entries)
            if self._since_sweep > 4096:
                self._sweep(now)

    def _sweep(self, now: float) -> None:
        # Called with the lock held: forget waiters nobody answered for _EXPIRE_S.
        self._since_sweep = 0
        stale = [k for k, (t, _, _) in self._w.items() if now - t > _EXPIRE_S]
        for k in stale:
            del self._w[k]

    def pop(self, key: Any) -> tuple[Waiter, Any] | None:
        with self._lock:
            e = self._w.pop(key, None)
        return None if e is None else (e[1], e[2])

    def has(self, key: Any) -> bool:
        return key in self._w

    def resolve(self, key: Any, status: Any, result: Any = None, hint: Any = None) -> bool:
        e = self.pop(key)
        if e is None:
            return False
        e[0](status, result, hint)
        return True

    def fail_all(self) -> None:
        """Answer every waiter with UNKNOWN: the node is going away, and a proposal still
        waiting may or may not commit without it."""
        from josefine.messages import Status
        with self._lock:
            items, self._w = list(self._w.values()), {}
        for _, waiter, _ in items:
            try:
                waiter(Status.UNKNOWN, None, None)
            except Exception:  # a waiter's own failure must not stop the shutdown
                pass

    def __len__(self) -> int:
        return len(self._w)
