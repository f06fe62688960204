"""Applies committed blocks to the state machine, exactly once and in order (A.8, A.13).

The FSM driver owns one `Applier`. It hands it every committed block along the committed
path in height order; the Applier

* refuses (ValueError) a block that does not extend what it applied last — its height must
  be `applied.height + 1` and its parent `applied` — so a block can neither be skipped,
  repeated nor taken from another branch;
* for a NORMAL block decodes the command batch and passes each command through the client
  session table (`josefine.fsm.sessions`): new commands are applied and their results
  cached, retries get the cached result, stale retries an error — none of those two reach
  the state machine;
* for NOOP and CONFIG blocks only advances `applied` (no state machine effect).

Everything here is deterministic and driven by the blocks alone, so replicas that applied
the same path have equal `sm_digest()`s.
"""
from __future__ import annotations

import hashlib
import logging
from collections.abc import Sequence
from typing import Any

from josefine.chain.block import Block, BlockKind, Command, decode_commands
from josefine.codec import packb, unpackb
from josefine.fsm.api import SnapshotStateMachine, StateMachine
from josefine.fsm.sessions import SessionTable, Verdict
from josefine.types import GENESIS_ID, BlockId

__all__ = ["Applier"]

log = logging.getLogger(__name__)

_SNAPSHOT_TAG = "applier1"


class Applier:
    """State machine + session table + last-applied block id."""

    def __init__(self, state_machine: StateMachine, max_sessions: int = 10000,
                 applied: BlockId = GENESIS_ID) -> None:
        self.sm = state_machine
        self.sessions = SessionTable(max_sessions)
        self.applied: BlockId = applied
        self.commands_applied = 0
        self.duplicates = 0
        self.stale = 0
        self.sm_errors = 0
        self.malformed_blocks = 0

    def apply_block(self, block: Block,
                    commands: Sequence[Command] | None = None) -> list[tuple[Command, Any]]:
        """Apply the next committed block; return (command, result) per command, in order.

        Results of duplicates are the cached ones; NOOP/CONFIG blocks return [].
        `commands`, when given, must be exactly what the block's payload encodes (the
        leader passes the commands it proposed, to skip decoding its own payload).
        """
        if block.id.height != self.applied.height + 1 or block.parent != self.applied:
            raise ValueError(
                f"block {block.id} (parent {block.parent}) does not follow the last applied "
                f"block {self.applied}: blocks must be applied once each, in height order")
        out: list[tuple[Command, Any]] = []
        if block.kind == BlockKind.NORMAL:
            if commands is None:
                try:
                    commands = decode_commands(block.payload)
                except ValueError as exc:
                    # Every replica sees the same payload, so skipping it is deterministic.
                    log.error("committed block %s has a malformed payload, skipped: %s",
                              block.id, exc)
                    self.malformed_blocks += 1
                    commands = []
            height = block.id.height
            for cmd in commands:
                verdict, cached = self.sessions.check(cmd.client_id, cmd.seq)
                if verdict is Verdict.NEW:
                    result = self._apply(cmd)
                    self.sessions.record(cmd.client_id, cmd.seq, result, height)
                    self.commands_applied += 1
                elif verdict is Verdict.DUPLICATE:
                    result = cached
                    self.duplicates += 1
                else:
                    result = cached
                    self.stale += 1
                out.append((cmd, result))
        self.applied = block.id
        return out

    def _apply(self, cmd: Command) -> Any:
        try:
            return self.sm.apply(cmd.data)
        except MemoryError:
            raise
        except Exception as exc:  # deterministic SM bug: the same on every replica
            self.sm_errors += 1
            log.exception("state machine raised on command (%s, %d)", cmd.client_id, cmd.seq)
            return {"error": f"state machine raised {type(exc).__name__}: {exc}"}

    def query(self, query: bytes) -> Any:
        """Read-only query against the state machine as of `applied`."""
        return self.sm.query(query)

    def sm_digest(self) -> bytes:
        """Hash of (applied id, state machine digest if it has one, session table)."""
        h = hashlib.sha256(b"josefine-applier")
        h.update(packb([self.applied.term, self.applied.height]))
        digest = getattr(self.sm, "digest", None)
        h.update(digest() if callable(digest) else b"-")
        h.update(self.sessions.digest())
        return h.digest()

    # ----------------------------------------------------------- snapshots (later, A.14)

    def snapshot(self) -> bytes:
        """applied id + sessions + `sm.snapshot()`; the SM must support snapshots."""
        return packb([_SNAPSHOT_TAG, [self.applied.term, self.applied.height],
                      self.sessions.dump(), self._snapshotting().snapshot()])

    def restore(self, data: bytes) -> None:
        """Replace applied id, sessions and SM state by a `snapshot()`; ValueError if invalid."""
        try:
            tag, applied, rows, sm_state = unpackb(data)
            if tag != _SNAPSHOT_TAG:
                raise ValueError(f"unknown tag {tag!r}")
            if not (isinstance(applied, list) and len(applied) == 2
                    and all(type(x) is int for x in applied)):
                raise ValueError(f"bad applied id {applied!r}")
            sessions = SessionTable(self.sessions.max_sessions)
            sessions.load(rows)
        except Exception as exc:
            raise ValueError(f"not an applier snapshot: {exc}") from None
        self._snapshotting().restore(sm_state)
        self.sessions = sessions
        self.applied = BlockId(*applied)

    def _snapshotting(self) -> SnapshotStateMachine:
        sm = self.sm
        if not isinstance(sm, SnapshotStateMachine):
            raise TypeError(f"{type(sm).__name__} has no snapshot()/restore(): "
                            "it cannot be snapshotted")
        return sm

    def stats(self) -> dict:
        return {
            "applied": self.applied,
            "commands": self.commands_applied,
            "duplicates": self.duplicates,
            "stale": self.stale,
            "sm_errors": self.sm_errors,
            "malformed_blocks": self.malformed_blocks,
            "sessions": len(self.sessions),
            "evictions": self.sessions.evictions,
        }
