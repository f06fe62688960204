"""Readys in, Plans out: the durability rules of the Ready contract, written once.

The core's Ready (josefine/raft/ready.py) says what must become durable and which
messages promise it. Two pure objects carry that out, each owned by one thread:

- `ReadyRouter`, on the thread that steps the core (the role actor; the simulation's
  step). Eager messages leave at once (a leader may ship its own blocks before its fsync:
  docs/protocol.md A.3). A Ready that needs no sync and has nothing queued ahead of it
  skips the disk writer entirely: its messages promise nothing new, so they leave now, and
  its commit marker is remembered as *lazy* and travels, as an item, in front of the next
  Ready that does go to the writer. Everything else is queued for the writer, in order.
- `WritePlanner`, on the thread that writes (the chain actor; the simulation's disk). It
  merges everything queued since its last write into ONE store write (group commit):
  the newest hard state, head and commit, all new blocks except those a later Ready of the
  same batch deleted, every deletion, the highest new base (blocks at or below it are not
  written: the base write deletes them). The write is synced iff it holds something a
  promise depends on (hard state, blocks, head, deletions, base) and the node runs with
  fsync; a write
  holding only the commit marker is never synced (the marker is a hint: on restart the
  commit is learned again, A.3). The durable commit marker never moves back.

A `Plan` is what one write entails, and `carry_out` executes it in the only safe order:
write, then the messages that promise what it made durable (votes, acks), then the
committed work for the state machine, then `Persisted(head)` back to the core.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Protocol, Sequence

from josefine.chain.block import Block, Command
from josefine.messages import ApplyWork
from josefine.raft.ready import Ready
from josefine.types import BlockId, HardState

__all__ = ["CommitMarker", "Plan", "Route", "Routed", "ReadyRouter", "StoreWrite",
           "WritePlanner", "Effects", "carry_out", "release", "apply_work"]


@dataclass(frozen=True, slots=True)
class CommitMarker:
    """A lazy commit marker on its way to the writer, as an item of the write channel
    (never a field two threads share)."""

    commit: BlockId


class Route(Enum):
    """Where a Ready's durable and post-durable part goes."""

    NOTHING = "nothing"   # only eager messages and events
    SKIP = "skip"         # nothing to sync, nothing queued ahead: carry out now
    QUEUE = "queue"       # to the writer, behind whatever is queued


@dataclass(frozen=True, slots=True)
class StoreWrite:
    """One store batch. `sync` is the flag the store must pass down to the disk."""

    hard_state: HardState | None
    blocks: list[Block]
    head: BlockId | None
    commit: BlockId | None
    delete: list[BlockId]
    sync: bool
    base: Block | None = None
    """A new chain base (a header): the store records it and drops every block at or below
    its height in the same batch."""


@dataclass(slots=True)
class Plan:
    """What one hand-off to the writer (or one skipped Ready) entails, in execution order."""

    write: StoreWrite | None = None
    messages: list[Any] = field(default_factory=list)
    """Leave only after `write` returned: they promise what it made durable."""
    work: ApplyWork | None = None
    persisted: BlockId | None = None
    """Fed back to the core as `Persisted(head)` once the write returned."""
    readys: int = 0


@dataclass(slots=True)
class Routed:
    route: Route
    eager: list[Any]
    now: Plan | None = None
    """SKIP: the plan to carry out at once (no write in it)."""
    queued: list[Ready | CommitMarker] = field(default_factory=list)
    """QUEUE: the items to put on the write channel, in order."""


def apply_work(apply: Sequence[Block], reads: Sequence[Any], outcomes: Sequence[Any],
               decoded: dict[BlockId, tuple[Command, ...]] | None,
               restore: BlockId | None = None) -> ApplyWork | None:
    if not (apply or reads or outcomes or restore):
        return None
    return ApplyWork(blocks=tuple(apply), reads=tuple(reads), outcomes=tuple(outcomes),
                     decoded=decoded, restore=restore)


class ReadyRouter:
    """The producer half, on the thread that steps the core. Not thread-safe, by design."""

    __slots__ = ("lazy_commit", "skipped")

    def __init__(self) -> None:
        self.lazy_commit: BlockId | None = None
        self.skipped = 0

    def route(self, r: Ready, backlog: bool) -> Routed:
        """`backlog`: the writer still has items of ours it has not finished; a Ready
        that skipped it then could overtake an earlier promise, so it queues instead."""
        if r.needs_sync or (backlog and (r.messages or r.apply or r.reads or r.outcomes
                                         or r.commit)):
            queued: list[Ready | CommitMarker] = []
            lazy = self.lazy_commit
            if lazy is not None:
                self.lazy_commit = None
                if r.commit is None or r.commit.height < lazy.height:
                    queued.append(CommitMarker(lazy))
            queued.append(r)
            return Routed(Route.QUEUE, r.eager, queued=queued)
        if not (r.messages or r.apply or r.reads or r.outcomes or r.commit):
            return Routed(Route.NOTHING, r.eager)
        assert r.restore is None, "a Ready that restores also writes its base"
        if r.commit is not None:
            self.lazy_commit = r.commit
        self.skipped += 1
        return Routed(Route.SKIP, r.eager, now=Plan(
            messages=r.messages, work=apply_work(r.apply, r.reads, r.outcomes, r.decoded),
            readys=1))


class WritePlanner:
    """The consumer half, on the thread that writes. Not thread-safe, by design."""

    __slots__ = ("fsync", "durable_commit", "writes", "synced_writes", "readys")

    def __init__(self, fsync: bool = True) -> None:
        self.fsync = fsync
        self.durable_commit: BlockId | None = None
        self.writes = 0
        self.synced_writes = 0
        self.readys = 0

    def plan(self, items: Sequence[Ready | CommitMarker]) -> Plan:
        hard = head = commit = None
        blocks: list[Block] = []
        delete: list[BlockId] = []
        out: list[Any] = []
        apply: list[Block] = []
        reads: list[Any] = []
        outcomes: list[Any] = []
        decoded: dict[BlockId, tuple[Command, ...]] | None = None
        base: Block | None = None
        restore: BlockId | None = None
        n = 0
        for r in items:
            if type(r) is CommitMarker:
                if commit is None or r.commit.height > commit.height:
                    commit = r.commit
                continue
            assert isinstance(r, Ready)
            n += 1
            if r.hard_state is not None:
                hard = r.hard_state
            if r.head is not None:
                head = r.head
            if r.commit is not None and (commit is None or r.commit.height > commit.height):
                commit = r.commit
            if r.blocks:
                blocks.extend(r.blocks)
            if r.delete:
                delete.extend(r.delete)
            if r.base is not None and (base is None or r.base.id.height > base.id.height):
                base = r.base
            if r.messages:
                out.extend(r.messages)
            if r.restore is not None:
                # The snapshot replaces whatever this batch would have applied before it.
                restore = r.restore
                apply.clear()
                decoded = None
            if r.apply:
                apply.extend(r.apply)
            if r.reads:
                reads.extend(r.reads)
            if r.outcomes:
                outcomes.extend(r.outcomes)
            if r.decoded:
                if decoded is None:
                    decoded = dict(r.decoded)
                else:
                    decoded.update(r.decoded)
        if commit is not None and self.durable_commit is not None \
                and commit.height <= self.durable_commit.height:
            commit = None   # never move the durable marker back
        if delete:
            dead = set(delete)
            blocks = [b for b in blocks if b.id not in dead]   # born and buried in one batch
        if base is not None:
            bh = base.id.height
            blocks = [b for b in blocks if b.id.height > bh]   # the base write drops them
            delete = [d for d in delete if d.height > bh]
            if commit is not None and commit.height < bh:
                commit = None
        durable = hard is not None or bool(blocks) or head is not None or bool(delete) \
            or base is not None
        write = None
        if durable or commit is not None:
            sync = self.fsync and durable
            write = StoreWrite(hard, blocks, head, commit, delete, sync, base)
            self.writes += 1
            self.synced_writes += sync
            if commit is not None:
                self.durable_commit = commit
        self.readys += n
        return Plan(write=write, messages=out,
                    work=apply_work(apply, reads, outcomes, decoded, restore),
                    persisted=head, readys=n)


class Effects(Protocol):
    """Where a plan's effects go: the actors in production, the simulation in tests."""

    def write(self, w: StoreWrite) -> None: ...

    def send(self, msgs: list[Any]) -> None: ...

    def apply(self, work: ApplyWork) -> None: ...

    def persisted(self, head: BlockId) -> None: ...


def carry_out(plan: Plan, fx: Effects) -> None:
    """Execute a plan in the contract's order; an exception from the write stops here,
    so nothing that depended on it leaves (the node then stops: no half-alive nodes)."""
    if plan.write is not None:
        fx.write(plan.write)
    release(plan, fx)


def release(plan: Plan, fx: Effects) -> None:
    """What follows a plan's write, once that write has returned."""
    if plan.messages:
        fx.send(plan.messages)
    if plan.work is not None:
        fx.apply(plan.work)
    if plan.persisted is not None:
        fx.persisted(plan.persisted)
