"""What one step of the core asks the runtime to do, in order (docs/protocol.md A.1, A.3).

The runtime executes a Ready as:

1. send `eager` (a leader's AppendBlocks/Heartbeat: a leader may ship its own new blocks
   before its fsync finishes, A.3);
2. write `hard_state`, `blocks`, `head`, `commit`, `delete` and `base` as ONE synced batch
   (skip when `needs_sync` is False), then feed `Persisted(head)` back to the core when
   `head` was set, so a leader may count itself toward a quorum;
3. send `messages` — votes and append acks, which promise what step 2 made durable;
4. restore the state machine from the snapshot `restore` names (an installed snapshot),
   then apply `apply` (committed blocks, height order) to it, then serve `reads`
   (each read's index is already applied by then), then deliver `outcomes`.

Readys must be executed in the order they were produced.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from enum import IntEnum, StrEnum
from typing import Any, Literal

from josefine.chain.block import Block, Command
from josefine.messages import Status
from josefine.types import BlockId, HardState


class Role(IntEnum):
    """A node's role (re-exported by core.py); here because `Commit` events carry it."""

    FOLLOWER = 0
    PRECANDIDATE = 1
    CANDIDATE = 2
    LEADER = 3


class OutcomeKind(StrEnum):
    """What an `Outcome` answers. A StrEnum, so a consumer comparing with "propose" still
    matches and the value travels through msgpack and logs as the plain string."""

    PROPOSE = "propose"    # key = (client_id, seq)
    READ = "read"          # key = read_id
    TRANSFER = "transfer"  # key = target node id
    CONFIG = "config"      # key = (ChangeOp, node id) of a membership change


class EventKind(StrEnum):
    """First element of every entry of `Ready.events` (a StrEnum for the same reason)."""

    CAMPAIGN = "campaign"
    VOTED = "voted"
    BECAME_LEADER = "became_leader"
    COMMIT = "commit"
    ACKED = "acked"
    COMPACTED = "compacted"
    INSTALLED = "installed"
    CONFIG = "config"


# Events stay plain tuples tagged by their kind: consumers index them (ev[0], ev[1]) and a
# NamedTuple would cost a constructor call on every append and commit. The aliases type them.
Campaign = tuple[Literal[EventKind.CAMPAIGN], int]
"""(CAMPAIGN, term): this node started an election and voted for itself in `term`."""
Voted = tuple[Literal[EventKind.VOTED], int, int]
"""(VOTED, term, candidate): this node granted its vote (durable before the VoteResp leaves)."""
BecameLeader = tuple[Literal[EventKind.BECAME_LEADER], int]
"""(BECAME_LEADER, term)."""
Commit = tuple[Literal[EventKind.COMMIT], Role, int, BlockId]
"""(COMMIT, role, term, commit): the commit moved while this node was in `role`."""
Acked = tuple[Literal[EventKind.ACKED], int, BlockId]
"""(ACKED, term, match): this node will ack `match` once `Ready` is durable."""
Compacted = tuple[Literal[EventKind.COMPACTED], BlockId]
"""(COMPACTED, base): blocks below `base` left this node's chain (a snapshot holds them)."""
Installed = tuple[Literal[EventKind.INSTALLED], int, BlockId]
"""(INSTALLED, term, base): this node installed the leader's snapshot whose base is `base`;
its InstallSnapshotResp leaves once the Ready is durable."""
ConfigChanged = tuple[Literal[EventKind.CONFIG], Any]
"""(CONFIG, config): the configuration in force on this node's path changed (a CONFIG
block joined or left the path); the runtime updates whom it dials."""
Event = Campaign | Voted | BecameLeader | Commit | Acked | Compacted | Installed | ConfigChanged


@dataclass(frozen=True, slots=True)
class Outcome:
    """A definite answer the core gives without the state machine (keys: see OutcomeKind)."""

    kind: OutcomeKind
    key: Any
    status: Status
    leader_hint: int | None = None
    block: BlockId | None = None
    detail: str = ""
    """Why, when the status alone does not say (a refused membership change)."""


@dataclass(slots=True)
class Ready:
    hard_state: HardState | None = None
    blocks: list[Block] = field(default_factory=list)
    head: BlockId | None = None
    commit: BlockId | None = None
    delete: list[BlockId] = field(default_factory=list)
    eager: list[Any] = field(default_factory=list)
    messages: list[Any] = field(default_factory=list)
    apply: list[Block] = field(default_factory=list)
    reads: list[tuple[Any, BlockId]] = field(default_factory=list)
    outcomes: list[Outcome] = field(default_factory=list)
    events: list[Event] = field(default_factory=list)
    """Observations for logs and the simulation, in the order they happened (see Event)."""
    decoded: dict[BlockId, tuple[Command, ...]] | None = None
    """Commands of blocks in `apply` that this node proposed itself, as it proposed them:
    the leader's applier takes them from here instead of decoding the payload again."""
    base: Block | None = None
    """The chain's new base (a header: id and digest): the store records it and deletes
    every block at or below its height, in the same batch (A.14)."""
    restore: BlockId | None = None
    """Restore the state machine from this node's snapshot whose base is this block, before
    `apply` (an installed snapshot; the snapshot file is already durable)."""

    @property
    def needs_sync(self) -> bool:
        return (self.hard_state is not None or bool(self.blocks) or self.head is not None
                or bool(self.delete) or self.base is not None)

    def is_empty(self) -> bool:
        return not (self.needs_sync or self.commit or self.eager or self.messages or self.apply
                    or self.reads or self.outcomes or self.events or self.restore)
