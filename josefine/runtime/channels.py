"""Every hand-over between the threads of one node, by name.

A node's state lives on a few threads; each datum is touched by one thread at a time and
moves to another only through one of the channels listed in `CHANNELS`. Anything that is
not in this list does not cross threads (the commit marker, once a shared field, now
travels as an item of `WRITES`). Each channel is either a pykka mailbox (one message per
item) or a `SideQueue` (a batch inbox: many puts, one wake-up, the consumer drains all),
and each is a queue of plain values, so any one of them could become an `ipc://` socket
if its consumer moved to a process of its own.
"""
from __future__ import annotations

import threading
from collections import deque
from dataclasses import dataclass
from typing import Any, Protocol

import pykka

from josefine.messages import Nudge


@dataclass(frozen=True, slots=True)
class ChannelSpec:
    name: str
    producer: str
    consumer: str
    carries: str
    bound: str


PEER_IN = ChannelSpec(
    "peer-in", "transport I/O thread", "role actor",
    "decoded peer messages (SideQueue; drained by the I/O thread itself when the role "
    "actor is idle)",
    "what one frame holds (frame limits); Raft tolerates loss, nothing waits on a reply")
PROPOSALS = ChannelSpec(
    "proposals", "client intake (transport I/O thread, embedding callers)", "role actor",
    "client commands (SideQueue: a burst becomes one block)",
    "Node.MAX_QUEUED_PROPOSALS; beyond it proposals are answered BUSY at once")
TICKS = ChannelSpec(
    "ticks", "timer thread", "role actor", "Tick (mailbox, through a one-slot TickGate)",
    "one: a tick is dropped while the previous one is unprocessed")
CONTROL = ChannelSpec(
    "control", "any thread (embedding API, client intake)", "role actor",
    "ReadIndex, TransferLeadership, StatusQuery (mailbox)",
    "one per pending client read/transfer/status request")
WRITES = ChannelSpec(
    "writes", "role actor", "chain actor",
    "Readys and CommitMarkers (SideQueue: drained into one write, group commit)",
    "the core's max_inflight and max_uncommitted_bytes bound what a leader produces")
PERSISTED = ChannelSpec(
    "persisted", "chain actor", "role actor", "Persisted(head) (mailbox)", "one per write")
APPLY = ChannelSpec(
    "apply", "role actor (skip path), chain actor", "FSM driver actor",
    "ApplyWork: committed blocks, reads, outcomes (mailbox)",
    "committed blocks only, which the core bounds by its uncommitted budget")
PEER_OUT = ChannelSpec(
    "peer-out", "role actor (eager, skip path), chain actor", "transport I/O thread",
    "peer messages by destination (the transport's send queue)",
    "ZeroMQ's send high-water mark per peer (sndhwm frames); beyond it frames are dropped")
CLIENT_OUT = ChannelSpec(
    "client-out", "FSM driver actor, role actor, transport I/O thread",
    "transport I/O thread", "client replies (the transport's reply queue)",
    "one per client request")

CHANNELS: tuple[ChannelSpec, ...] = (PEER_IN, PROPOSALS, TICKS, CONTROL, WRITES, PERSISTED,
                                     APPLY, PEER_OUT, CLIENT_OUT)


class _Tellable(Protocol):
    def tell(self, message: Any) -> None: ...


class SideQueue:
    """A batch inbox next to an actor's mailbox: many puts, at most one pending Nudge.

    The consumer drains everything waiting at once, which is how a burst of proposals
    becomes one block and a burst of Readys one synchronous write (group commit)."""

    def __init__(self, spec: ChannelSpec | None = None) -> None:
        self.spec = spec
        self.items: deque = deque()
        self._lock = threading.Lock()
        self._nudged = False
        self.target: _Tellable | None = None
        self.unfinished = 0
        """Items put but not yet fully handled (the consumer calls `done`)."""

    def backlog(self) -> bool:
        """Whether anything put is not yet done. A plain read of an int: the producer only
        needs to know whether it is zero, and only the consumer lowers it."""
        return self.unfinished > 0

    def done(self, n: int) -> None:
        with self._lock:
            self.unfinished -= n

    def put(self, item: Any) -> None:
        self.put_many((item,))

    def put_many(self, items: list | tuple, nudge: bool = True) -> None:
        """Queue a run of items with one wake-up check for all of them. With nudge=False
        the caller promises to either drain the queue itself or call `nudge()`."""
        with self._lock:
            self.unfinished += len(items)
        self.items.extend(items)
        if nudge:
            self.nudge()

    def connect(self, target: _Tellable) -> None:
        """Wire in the consumer. Items put before it existed are not lost: they wait here
        and this call wakes the consumer for them. (A node's transport starts before its
        role actor, so a client request can arrive in between; it used to hit an assert on
        the transport's I/O thread and stop the node.)"""
        with self._lock:
            self.target = target
        if self.items:
            self.nudge()

    def nudge(self) -> None:
        """Make sure the consumer will look: at most one Nudge is pending at a time. With no
        consumer wired in yet, nothing to wake: `connect` nudges for what is waiting."""
        with self._lock:
            target = self.target
            if self._nudged or target is None:
                return
            self._nudged = True
        try:
            target.tell(Nudge())
        except pykka.ActorDeadError:
            pass   # the consumer has stopped (node shutdown): nobody left to wake

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


class TickGate:
    """The `TICKS` channel's one slot: set by the timer on send, cleared by the role actor
    when it processes the tick. A lost race costs one tick, never a backlog of them."""

    __slots__ = ("pending", "dropped")

    def __init__(self) -> None:
        self.pending = False
        self.dropped = 0
