"""Pieces every actor of a node shares: failure policy, wiring and side queues."""
from __future__ import annotations

import logging
import threading
from collections import deque
from typing import Any, Callable

import pykka

from josefine.messages import Nudge

log = logging.getLogger(__name__)


class Links:
    """The refs of one node's actors, filled in as they start (start order in node.py)."""

    def __init__(self) -> None:
        self.role: pykka.ActorRef | None = None
        self.chain: pykka.ActorRef | None = None
        self.fsm: pykka.ActorRef | None = None
        self.transport: pykka.ActorRef | None = None
        self.timer: pykka.ActorRef | None = None
        self.send: Callable[[dict[int, list]], None] | None = None
        """The transport's thread-safe outbound queue (its real mailbox): the hot path
        hands peer messages straight to it instead of through one more actor hop."""

    def send_msgs(self, msgs: Any) -> None:
        by_peer: dict[int, list] = {}
        for m in msgs:
            lst = by_peer.get(m.dst)
            if lst is None:
                by_peer[m.dst] = [m]
            else:
                lst.append(m)
        if self.send is not None:
            self.send(by_peer)
        elif self.transport is not None:
            from josefine.messages import Outbound
            self.transport.tell(Outbound(msgs=tuple(msgs)))


class SideQueue:
    """A batch inbox next to an actor's mailbox: many puts, at most one pending Nudge.

    The consumer drains everything waiting at once, which is how a burst of proposals
    becomes one block and a burst of Readys one synchronous write (group commit)."""

    def __init__(self) -> None:
        self.items: deque = deque()
        self._lock = threading.Lock()
        self._nudged = False
        self.target: pykka.ActorRef | None = None
        self.unfinished = 0
        self.latest_commit: Any = None
        """Items put but not yet fully handled (the consumer calls `done`); read without
        a lock by the producer, which only needs to know whether it is zero."""

    def done(self, n: int) -> None:
        with self._lock:
            self.unfinished -= n

    def put(self, item: Any) -> None:
        self.put_many((item,))

    def put_many(self, items: list | tuple) -> None:
        """Queue a run of items with one wake-up check for all of them."""
        with self._lock:
            self.unfinished += len(items)
        self.items.extend(items)
        with self._lock:
            if self._nudged:
                return
            self._nudged = True
        self.target.tell(Nudge())  # type: ignore[union-attr]

    def drain(self) -> list:
        with self._lock:
            self._nudged = False
        q = self.items
        out = []
        while q:
            out.append(q.popleft())
        return out

    def __len__(self) -> int:
        return len(self.items)


class NodeActor(pykka.ThreadingActor):
    """An unexpected exception in any actor stops the whole node (no half-alive nodes).

    Daemon threads: an embedding program that exits without `Node.stop()` must not hang
    on our threads. Nothing is lost by that: every promise made was synced first."""

    use_daemon_thread = True

    def __init__(self, node_id: int, links: Links, fatal: Callable[[str, BaseException], None]):
        super().__init__()
        self.node_id = node_id
        self.links = links
        self._fatal = fatal

    def on_failure(self, exception_type, exception_value, traceback) -> None:  # noqa: ANN001
        self._fatal(type(self).__name__, exception_value)

    def tell(self, ref: pykka.ActorRef | None, msg: Any) -> None:
        """Tell, ignoring an actor already stopped (only happens during shutdown)."""
        if ref is None:
            return
        try:
            ref.tell(msg)
        except pykka.ActorDeadError:
            log.debug("node %d: dropped %s to a stopped actor", self.node_id, type(msg).__name__)
