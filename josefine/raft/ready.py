"""What one step of the core asks the runtime to do, in order (PROTOCOL.md A.1, A.3).

The runtime executes a Ready as:

1. send `eager` (a leader's AppendBlocks/Heartbeat: a leader may ship its own new blocks
   before its fsync finishes, A.3);
2. write `hard_state`, `blocks`, `head`, `commit` and `delete` as ONE synced batch
   (skip when `needs_sync` is False), then feed `Persisted(head)` back to the core when
   `head` was set, so a leader may count itself toward a quorum;
3. send `messages` — votes and append acks, which promise what step 2 made durable;
4. apply `apply` (committed blocks, height order) to the state machine, then serve `reads`
   (each read's index is already applied by then), then deliver `outcomes`.

Readys must be executed in the order they were produced.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from josefine.chain.block import Block, Command
from josefine.messages import Status
from josefine.types import BlockId, HardState


@dataclass(frozen=True, slots=True)
class Outcome:
    """A definite answer the core gives without the state machine.

    kind "propose": key = (client_id, seq); "read": key = read_id; "transfer": key = target.
    """

    kind: str
    key: Any
    status: Status
    leader_hint: int | None = None
    block: BlockId | None = None


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
    events: list[tuple] = field(default_factory=list)
    decoded: dict[BlockId, tuple[Command, ...]] | None = None
    """Commands of blocks in `apply` that this node proposed itself, as it proposed them:
    the leader's applier takes them from here instead of decoding the payload again."""
    """Observations for logs and the simulation: ("became_leader", term), ("voted", term, cand),
    ("commit", role, term, commit), ("acked", term, match)."""

    @property
    def needs_sync(self) -> bool:
        return (self.hard_state is not None or bool(self.blocks) or self.head is not None
                or bool(self.delete))

    def is_empty(self) -> bool:
        return not (self.needs_sync or self.commit or self.eager or self.messages or self.apply
                    or self.reads or self.outcomes or self.events)
