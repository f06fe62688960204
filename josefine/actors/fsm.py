"""FSM driver actor: applies committed blocks exactly once, in height order, and answers.

It owns the user's state machine (through an `Applier`, which adds client sessions so a
retried (client id, seq) gets its cached result instead of applying twice). Reads are
served here too, after the blocks of the same batch, so a ReadIndex read always sees at
least its index.

It also owns the state machine's snapshots (A.14): once the blocks or bytes applied since
the last snapshot pass the node's thresholds (or an operator asks, `TakeSnapshot`) it
captures the state and has it written (josefine/runtime/snapshots.py), then tells the role
actor `SnapshotTaken`; and it restores an installed snapshot when an `ApplyWork` says so.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from josefine.actors.base import NodeActor
from josefine.fsm.applier import Applier, SnapshotJob
from josefine.messages import ApplyWork, SnapshotTaken, Status
from josefine.runtime.snapshots import SnapshotStats, SnapshotTaker, restore_from
from josefine.snapshot.files import name_for
from josefine.raft.ready import OutcomeKind
from josefine.runtime.intake import ReplyBatch
from josefine.runtime.waiters import Waiters

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class SnapshotPolicy:
    """When the FSM driver snapshots on its own, and where the files go."""

    directory: Path
    cluster_id: str
    voters: frozenset[int]
    every_blocks: int = 0
    """Snapshot once this many blocks were applied since the last one (0: never)."""
    every_bytes: int = 0
    """... or once their payloads reach this many bytes (0: never)."""


@dataclass(frozen=True, slots=True)
class TakeSnapshot:
    """Operator's request (`josefine snapshot`): snapshot now; `reply(ok, result, error)`
    is called once the file is durable (result: its base as [term, height])."""

    reply: Any
    min_blocks: int = 0
    """Snapshot only if at least this many blocks were applied since the last one (a stop
    snapshot); otherwise `reply(True, None, "")` at once, nothing written."""


class FsmActor(NodeActor):
    def __init__(self, node_id, links, fatal, applier: Applier, proposals: Waiters,  # noqa: ANN001
                 reads: Waiters, transfers: Waiters, replies: ReplyBatch | None = None,
                 snapshots: SnapshotPolicy | None = None, applied_digest: bytes = b"",
                 stats: SnapshotStats | None = None, changes: Waiters | None = None) -> None:
        super().__init__(node_id, links, fatal)
        self.applier = applier
        self.proposals = proposals
        self.reads = reads
        self.transfers = transfers
        self.changes = changes if changes is not None else Waiters()
        """Membership changes waiting for their outcome, keyed (ChangeOp, node id): the
        result of an OK is the configuration after the change (the Applier's, which has
        just applied its block), of a refusal the core's reason."""
        self.replies = replies or ReplyBatch()
        self.policy = snapshots
        self.applied_digest = applied_digest
        """Digest of the block `applier.applied` names (a snapshot records it)."""
        self.since_blocks = 0
        self.since_bytes = 0
        self._waiting_snapshot: list[Any] = []
        self.taker: SnapshotTaker | None = None
        self.stats = stats if stats is not None else SnapshotStats()
        if snapshots is not None:
            self.taker = SnapshotTaker(node_id, snapshots.cluster_id, snapshots.directory,
                                       self._snapshot_done, self._snapshot_failed, self.stats)

    def on_receive(self, message):  # noqa: ANN001 - pykka hook
        t = type(message)
        if t is TakeSnapshot:
            busy = self.taker is not None and self.taker.busy
            if self.since_blocks < message.min_blocks and not busy:
                message.reply(True, None, "")   # (a running one is waited for instead)
                return
            self._take_now(message.reply)
            return
        if t is not ApplyWork:
            log.warning("node %d: fsm actor ignored %r", self.node_id, message)
            return
        self.replies.begin()
        try:
            self._apply(message)
        finally:
            self.replies.end()
        self._maybe_snapshot()

    # ------------------------------------------------------------------ snapshots
    def _maybe_snapshot(self) -> None:
        p = self.policy
        if p is None or self.taker is None or self.taker.busy:
            return
        # Never more snapshot bytes than applied bytes: a large state is snapshotted less
        # often (write amplification at most 2x), and its restart then replays at most
        # about what it restores.
        if (p.every_blocks and self.since_blocks >= p.every_blocks) or \
                (p.every_bytes and self.since_bytes >= max(p.every_bytes, self.stats.last_bytes)):
            self._start_snapshot()

    def _start_snapshot(self) -> bool:
        assert self.policy is not None and self.taker is not None
        members = self.applier.config   # the membership as of `applied`, when tracked
        job = self.applier.capture(block_digest=self.applied_digest,
                                   config=members.voters if members is not None
                                   else self.policy.voters)
        self.since_blocks = self.since_bytes = 0
        return self.taker.take(job)

    def _take_now(self, reply: Any) -> None:
        if self.taker is None:
            reply(False, None, "snapshots are not enabled on this node")
            return
        self._waiting_snapshot.append(reply)
        if not self.taker.busy:
            try:
                self._start_snapshot()
            except (TypeError, ValueError) as exc:
                for r in self._waiting_snapshot:
                    r(False, None, f"cannot snapshot: {exc}")
                self._waiting_snapshot = []

    def _snapshot_done(self, job: SnapshotJob) -> None:
        """On the writer's thread: the file is durable; the core may use it now."""
        info = job.info
        self.tell(self.links.role, SnapshotTaken(last=info.applied, digest=info.digest))
        waiting, self._waiting_snapshot = self._waiting_snapshot, []
        for r in waiting:
            r(True, [info.applied.term, info.applied.height], "")

    def _snapshot_failed(self, exc: BaseException) -> None:
        waiting, self._waiting_snapshot = self._waiting_snapshot, []
        for r in waiting:
            r(False, None, f"writing the snapshot failed: {exc}")

    def _restore(self, base: Any) -> None:
        assert self.policy is not None, "a node without snapshots cannot install one"
        path = self.policy.directory / name_for(base)
        meta = restore_from(self.applier, path)
        self.stats.last_bytes = path.stat().st_size
        self.applied_digest = meta.base_digest
        self.since_blocks = self.since_bytes = 0
        self.stats.installed += 1
        log.info("node %d: state machine restored from snapshot %s", self.node_id, base)

    # ------------------------------------------------------------------ applying
    def _apply(self, message: ApplyWork) -> None:
        applier = self.applier
        waiting = self.proposals
        decoded = message.decoded or {}
        if message.restore is not None:
            self._restore(message.restore)
        blocks = message.blocks
        if blocks:
            last = blocks[-1]
            self.applied_digest = last.digest
            self.since_blocks += len(blocks)
            self.since_bytes += sum(len(b.payload) for b in blocks)
        for b in blocks:
            for cmd, result in applier.apply_block(b, decoded.get(b.id)):
                key = (cmd.client_id, cmd.seq)
                if waiting.has(key):
                    waiting.resolve(key, Status.OK, result)
        for read_id, _index in message.reads:
            w = self.reads.pop(read_id)
            if w is not None:
                waiter, query = w
                try:
                    result = applier.query(query)
                except Exception as exc:  # a bad query must not stop the node
                    waiter(Status.REJECTED, {"error": f"query failed: {exc}"}, None)
                else:
                    waiter(Status.OK, result, None)
        for o in message.outcomes:
            if o.kind == OutcomeKind.PROPOSE:
                waiting.resolve(o.key, o.status, None, o.leader_hint)
            elif o.kind == OutcomeKind.READ:
                w = self.reads.pop(o.key)
                if w is not None:
                    w[0](o.status, None, o.leader_hint)
            elif o.kind == OutcomeKind.TRANSFER:
                self.transfers.resolve(o.key, o.status, None, o.leader_hint)
            elif o.kind == OutcomeKind.CONFIG:
                self.changes.resolve(o.key, o.status, applier.config if o.status == Status.OK
                                     else o.detail, o.leader_hint)

