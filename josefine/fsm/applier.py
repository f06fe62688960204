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
* for NOOP blocks only advances `applied`; for CONFIG blocks also records the
  configuration they carry (`config`), which the state machine never sees.

Everything here is deterministic and driven by the blocks alone, so replicas that applied
the same path have equal `sm_digest()`s.

A snapshot (A.14) is everything needed to go on applying after `applied` without the
blocks up to it: a stream of `josefine.codec` records,

    ["josefine-snapshot", 1, [term, height], block_digest, [voter ids]]   the header, or
    ["josefine-snapshot", 2, [term, height], block_digest, [voter ids],
     [[id, role, address], ...]]                   (version 2: the full membership)
    the session table's stream                     (`SessionTable.snapshot`)
    the state machine's own stream                 (`SnapshotStateMachine.snapshot`)

The sessions are in it because exactly-once must survive a restore: without them a client
retrying a command applied before the snapshot would have it applied twice. The block
digest lets a node that installs the snapshot tell whether a block it holds with the same
id is the same block; the configuration is the membership as of `applied` (version 2 carries every member with
its role and address, so a node that restores it knows whom to replicate to and how to
dial them; version 1 only the voters).
"""
from __future__ import annotations

import hashlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, BinaryIO

from josefine.chain.block import Block, BlockKind, Command, decode_commands
from josefine.codec import DIGEST_BYTES, packb, read_record, write_record
from josefine.fsm.api import FreezableStateMachine, SnapshotStateMachine, StateMachine
from josefine.fsm.sessions import SessionTable, Verdict
from josefine.raft.membership import Config, Member, MemberRole, decode_config_block
from josefine.types import GENESIS_ID, BlockId

__all__ = ["Applier", "SnapshotInfo", "SnapshotJob", "read_snapshot_header"]

log = logging.getLogger(__name__)

_SNAPSHOT_TAG = "josefine-snapshot"
_SNAPSHOT_VERSION = 1


@dataclass(frozen=True, slots=True)
class SnapshotInfo:
    """What a snapshot's header says about the chain it stands in for."""

    applied: BlockId
    """The last block whose effects the snapshot contains (the new base)."""
    digest: bytes
    """That block's digest."""
    config: frozenset[int]
    """The configuration (voting node ids) in force at `applied`."""
    members: Config | None = None
    """The whole membership at `applied` (roles and addresses), when known."""


@dataclass(frozen=True, slots=True)
class SnapshotJob:
    """A captured snapshot waiting to be written (`Applier.capture`)."""

    info: SnapshotInfo
    sessions: SessionTable
    sm: SnapshotStateMachine
    frozen: bool
    """True: a copy, writable on any thread; False: the live state."""

    def write(self, out: BinaryIO) -> None:
        """Stream the snapshot to `out` (layout: module docstring)."""
        info = self.info
        head = [_SNAPSHOT_TAG, _SNAPSHOT_VERSION, [info.applied.term, info.applied.height],
                info.digest, sorted(info.config)]
        if info.members is not None:
            head[1] = 2
            head.append([[m.id, int(m.role), m.address] for m in info.members.members])
        write_record(out, head)
        self.sessions.snapshot(out)
        self.sm.snapshot(out)


class Applier:
    """State machine + session table + last-applied block id."""

    def __init__(self, state_machine: StateMachine, max_sessions: int = 10000,
                 applied: BlockId = GENESIS_ID, config: Config | None = None) -> None:
        self.sm = state_machine
        self.config = config
        """The membership as of `applied`: the bootstrap one, then each committed CONFIG
        block's; None when the caller does not track membership."""
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
        if block.kind == BlockKind.CONFIG:
            try:
                self.config = decode_config_block(block.payload)[1]
            except ValueError as exc:   # the core validated it; the same on every replica
                log.error("committed config block %s is malformed: %s", block.id, exc)
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

    # --------------------------------------------------------------------- snapshots, A.14

    def snapshot(self, out: BinaryIO, *, block_digest: bytes,
                 config: frozenset[int]) -> SnapshotInfo:
        """Stream a snapshot as of `applied` to `out` (layout: module docstring).

        `block_digest` is the digest of the block `applied` names and `config` the voting
        members as of it; the Applier knows neither, so the caller passes both.

        Raises:
            TypeError: the state machine has no snapshot()/restore() (nothing written).
            ValueError: `block_digest` or `config` is malformed (nothing written), or a
                cached client result cannot be encoded.
        """
        job = self.capture(block_digest=block_digest, config=config, freeze=False)
        job.write(out)
        return job.info

    def capture(self, *, block_digest: bytes, config: frozenset[int],
                freeze: bool = True) -> SnapshotJob:
        """The snapshot as of `applied`, to be written later by `SnapshotJob.write`.

        With `freeze` and a state machine that has `freeze()`, the job holds frozen copies
        (`job.frozen`): it may be written on another thread while this Applier goes on
        applying. Otherwise it reads the live state, and must be written before the next
        apply, on the applying thread.

        Raises: as `snapshot`, before anything is captured."""
        sm = self._snapshotting()
        members = self.config
        if members is not None and members.voters != config:
            members = None   # the caller says otherwise: trust it, record voters only
        info = SnapshotInfo(self.applied, block_digest, config, members)
        _check_info(info)
        if freeze and isinstance(sm, FreezableStateMachine):
            return SnapshotJob(info, self.sessions.freeze(), sm.freeze(), True)
        return SnapshotJob(info, self.sessions, sm, False)

    def restore(self, inp: BinaryIO) -> SnapshotInfo:
        """Replace applied id, sessions and state machine state by a snapshot from `inp`.

        The old state survives nothing: applied, sessions and the state machine all come
        from the snapshot. The state machine is restored last and swaps its state in only
        when its stream is valid, so everything else is swapped after it and an invalid
        stream changes nothing.

        Raises:
            TypeError: the state machine has no snapshot()/restore() (nothing read).
            ValueError: the stream is not a valid snapshot (nothing changed).
        """
        sm = self._snapshotting()
        info = read_snapshot_header(inp)
        members = info.members
        sessions = SessionTable(self.sessions.max_sessions)
        sessions.restore(inp)
        sm.restore(inp)
        sessions.evictions += self.sessions.evictions
        self.sessions = sessions
        self.applied = info.applied
        self.config = members if members is not None else (
            Config.of(info.config) if self.config is not None else None)
        return info

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


def read_snapshot_header(inp: BinaryIO) -> SnapshotInfo:
    """The header record of a snapshot stream, checked, and nothing after it: what a node
    needs to know about a snapshot (its base, its membership) without restoring it.

    Raises:
        ValueError: the stream does not start with a valid snapshot header.
    """
    head = read_record(inp)
    if not (type(head) is list and head[:1] == [_SNAPSHOT_TAG] and (
            (len(head) == 5 and head[1] == 1) or (len(head) == 6 and head[1] == 2))):
        raise ValueError(f"not a Josefine snapshot header: {head!r:.100}")
    _, _, applied, digest, config = head[:5]
    if not (type(applied) is list and len(applied) == 2
            and all(type(x) is int and x >= 0 for x in applied)):
        raise ValueError(f"bad applied block id in snapshot: {applied!r:.100}")
    if not (type(config) is list and all(type(x) is int for x in config)
            and config == sorted(set(config))):
        raise ValueError(f"bad configuration in snapshot: {config!r:.100}")
    members = _members(head[5], config) if len(head) == 6 else None
    info = SnapshotInfo(BlockId(*applied), digest, frozenset(config), members)
    _check_info(info)
    return info


def _check_info(info: SnapshotInfo) -> None:
    if not (type(info.digest) is bytes and len(info.digest) == DIGEST_BYTES):
        raise ValueError(f"a block digest is {DIGEST_BYTES} bytes, not {info.digest!r:.100}")
    if not (info.config and all(type(x) is int and x >= 0 for x in info.config)):
        raise ValueError(
            f"a configuration is a non-empty set of node ids, not {info.config!r:.100}")


def _members(rows: Any, voters: list) -> Config:
    """A version-2 header's member list, checked: [id, role, address] rows in strict id
    order whose voters are the header's voter list."""
    try:
        ms = tuple(Member(r[0], r[2], MemberRole(r[1])) for r in rows
                   if type(r) is list and len(r) == 3 and type(r[0]) is int and r[0] >= 0
                   and type(r[1]) is int and type(r[2]) is str)
    except ValueError:
        ms = ()
    ids = [m.id for m in ms]
    cfg = Config(ms)
    if type(rows) is not list or len(ms) != len(rows) or ids != sorted(set(ids)) \
            or sorted(cfg.voters) != voters:
        raise ValueError(f"bad membership in snapshot: {rows!r:.100}")
    return cfg
