"""FSM driver actor: applies committed blocks exactly once, in height order, and answers.

It owns the user's state machine (through an `Applier`, which adds client sessions so a
retried (client id, seq) gets its cached result instead of applying twice). Reads are
served here too, after the blocks of the same batch, so a ReadIndex read always sees at
least its index.
"""
from __future__ import annotations

import logging

from josefine.actors.base import NodeActor
from josefine.fsm.applier import Applier
from josefine.messages import ApplyWork, Status
from josefine.raft.ready import OutcomeKind
from josefine.runtime.intake import ReplyBatch
from josefine.runtime.waiters import Waiters

log = logging.getLogger(__name__)


class FsmActor(NodeActor):
    def __init__(self, node_id, links, fatal, applier: Applier, proposals: Waiters,  # noqa: ANN001
                 reads: Waiters, transfers: Waiters, replies: ReplyBatch | None = None) -> None:
        super().__init__(node_id, links, fatal)
        self.applier = applier
        self.proposals = proposals
        self.reads = reads
        self.transfers = transfers
        self.replies = replies or ReplyBatch()

    def on_receive(self, message):  # noqa: ANN001 - pykka hook
        if type(message) is not ApplyWork:
            log.warning("node %d: fsm actor ignored %r", self.node_id, message)
            return
        self.replies.begin()
        try:
            self._apply(message)
        finally:
            self.replies.end()

    def _apply(self, message: ApplyWork) -> None:
        applier = self.applier
        waiting = self.proposals
        decoded = message.decoded or {}
        for b in message.blocks:
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
