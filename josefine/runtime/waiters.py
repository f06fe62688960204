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


RemoteAnswer = Callable[[Any, Any, Any, Any, Any], None]
"""(extra, key, status, result, leader_hint): answers an entry registered without a waiter."""


class Waiters:
    """Key -> (time added, waiter, extra).

    An entry added with waiter None is a remote client's request: `extra` holds whatever
    `on_remote` needs to answer it (the client's identity). Hot requests are then plain data,
    with no closure per request."""

    def __init__(self, on_remote: RemoteAnswer | None = None) -> None:
        self._lock = threading.Lock()
        self._w: dict[Any, tuple[float, Waiter | None, Any]] = {}
        self._since_sweep = 0
        self.on_remote = on_remote

    def add(self, key: Any, waiter: Waiter, extra: Any = None) -> None:
        now = time.monotonic()
        expired = None
        with self._lock:
            self._w[key] = (now, waiter, extra)
            self._since_sweep += 1
            if self._since_sweep > 4096:
                expired = self._sweep(now)
        if expired:
            self._expire(expired)

    def add_remote_many(self, keys: list[Any], extra: Any) -> None:
        """Register several remote requests answered through `on_remote(extra, key, ...)`,
        under one lock (a pipelined client frame)."""
        now = time.monotonic()
        entry = (now, None, extra)
        expired = None
        with self._lock:
            w = self._w
            for key in keys:
                w[key] = entry
            self._since_sweep += len(keys)
            if self._since_sweep > 4096:
                expired = self._sweep(now)
        if expired:
            self._expire(expired)

    def _sweep(self, now: float) -> list[Waiter]:
        # Called with the lock held: take out entries nobody answered for _EXPIRE_S (a
        # guard against leaks; every request normally gets an outcome from the core).
        self._since_sweep = 0
        stale = [k for k, (t, _, _) in self._w.items() if now - t > _EXPIRE_S]
        return [w for w in (self._w.pop(k)[1] for k in stale) if w is not None]

    @staticmethod
    def _expire(waiters: list[Waiter]) -> None:
        """Local waiters (Futures) are told the outcome is unknown rather than left hanging;
        remote clients have their own timeouts. Called without the lock held."""
        from josefine.messages import Status
        for w in waiters:
            try:
                w(Status.UNKNOWN, None, None)
            except Exception:   # a waiter's own failure must not break the caller's add
                pass

    def pop(self, key: Any) -> tuple[Waiter, Any] | None:
        """Take out a local waiter and its extra (None if absent). Only for registries whose
        entries all came through `add`; a remote entry (waiter None) is answered by `resolve`."""
        with self._lock:
            e = self._w.pop(key, None)
        if e is None:
            return None
        assert e[1] is not None, f"pop({key!r}) found a remote entry: use resolve()"
        return e[1], e[2]

    def has(self, key: Any) -> bool:
        return key in self._w

    def resolve(self, key: Any, status: Any, result: Any = None, hint: Any = None) -> bool:
        with self._lock:
            e = self._w.pop(key, None)
        if e is None:
            return False
        if e[1] is None:
            on_remote = self.on_remote
            assert on_remote is not None, "a remote entry needs on_remote to answer it"
            on_remote(e[2], key, status, result, hint)
        else:
            e[1](status, result, hint)
        return True

    def fail_all(self) -> None:
        """Answer every waiter with UNKNOWN: the node is going away, and a proposal still
        waiting may or may not commit without it."""
        from josefine.messages import Status
        with self._lock:
            items, self._w = list(self._w.values()), {}
        for _, waiter, _ in items:
            if waiter is None:
                continue   # a remote client: its node is going away, it will retry elsewhere
            try:
                waiter(Status.UNKNOWN, None, None)
            except Exception:  # a waiter's own failure must not stop the shutdown
                pass

    def __len__(self) -> int:
        return len(self._w)
