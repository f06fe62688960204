"""The chain actor's state — the store and its `WritePlanner` — and who may run it.

A write normally runs on the chain actor's thread, fed by the `writes` channel, so the
role actor goes on stepping the core while the disk works and a burst of Readys becomes
one synced batch (group commit). When the node is quiet that hand-off is pure cost: the
role actor would wake the chain actor, wait for it, and be woken again by `Persisted`. So
whichever thread finds the writer idle may run the write itself (`try_write`); the lock
keeps the planner and the store touched by one thread at a time, and the plan is carried
out in the same contract order either way (write, then the messages that promise it).
"""
from __future__ import annotations

import threading
import time
from typing import Any, Callable, Sequence

from josefine.raft.ready import Ready
from josefine.runtime.executor import CommitMarker, Plan, StoreWrite, WritePlanner


class Writer:
    __slots__ = ("store", "planner", "_lock", "inline_writes", "observe_sync")

    def __init__(self, store: Any, fsync: bool) -> None:
        self.store = store
        self.planner = WritePlanner(fsync)
        self._lock = threading.Lock()
        self.inline_writes = 0
        """Writes run by the thread holding the role actor's state, the writer being idle."""
        self.observe_sync: Callable[[float], None] | None = None
        """With metrics on: called with the seconds each synced write took."""

    def write(self, items: Sequence[Ready | CommitMarker]) -> Plan:
        """Plan `items` and write the plan (blocking until the writer is free); the caller
        carries out the rest of the plan once this returns."""
        with self._lock:
            plan = self.planner.plan(items)
            if plan.write is not None:
                self._store_write(plan.write)
        return plan

    def try_write(self, items: Sequence[Ready | CommitMarker]) -> Plan | None:
        """Like `write`, or None at once if another thread holds the writer."""
        if not self._lock.acquire(blocking=False):
            return None
        try:
            plan = self.planner.plan(items)
            if plan.write is not None:
                self._store_write(plan.write)
            self.inline_writes += 1
        finally:
            self._lock.release()
        return plan

    def _store_write(self, w: StoreWrite) -> None:
        observe = self.observe_sync
        if observe is not None and w.sync:
            t0 = time.perf_counter()
            self.store.write(hard_state=w.hard_state, blocks=w.blocks, head=w.head,
                             commit=w.commit, delete=w.delete, sync=True, base=w.base)
            observe(time.perf_counter() - t0)
            return
        self.store.write(hard_state=w.hard_state, blocks=w.blocks, head=w.head,
                         commit=w.commit, delete=w.delete, sync=w.sync, base=w.base)
