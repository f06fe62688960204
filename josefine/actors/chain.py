"""Chain actor: the only LevelDB writer, and the durability gate of the node.

Readys from the role actor wait in a side queue; on each nudge the actor drains ALL of
them into one synchronous write batch (group commit), and only after that write returns
does it release what depended on it, in Ready order: acks and votes to the transport,
committed blocks / reads / outcomes to the FSM driver, and `Persisted(head)` back to the
role actor (a leader counts itself toward a quorum only then).
"""
from __future__ import annotations

import logging

from josefine.actors.base import NodeActor, SideQueue
from josefine.messages import ApplyWork, Nudge, Persisted

log = logging.getLogger(__name__)


class ChainActor(NodeActor):
    def __init__(self, node_id, links, fatal, store, fsync: bool, inbox: SideQueue) -> None:  # noqa: ANN001
        super().__init__(node_id, links, fatal)
        self.store = store
        self.fsync = fsync
        self.inbox = inbox
        self.batches = 0
        self.readys = 0
        self.persisted_commit = None

    def on_receive(self, message):  # noqa: ANN001 - pykka hook
        if type(message) is Nudge:
            self._flush(self.inbox.drain())
        else:
            log.warning("node %d: chain actor ignored %r", self.node_id, message)

    def _flush(self, readys: list) -> None:
        if not readys:
            return
        hard = head = commit = None
        blocks: list = []
        delete: list = []
        out: list = []
        apply: list = []
        reads: list = []
        outcomes: list = []
        decoded: dict | None = None
        for r in readys:
            if r.hard_state is not None:
                hard = r.hard_state
            if r.head is not None:
                head = r.head
            if r.commit is not None:
                commit = r.commit
            if r.blocks:
                blocks.extend(r.blocks)
            if r.delete:
                delete.extend(r.delete)
            if r.messages:
                out.extend(r.messages)
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
        lazy = self.inbox.latest_commit
        if lazy is not None and (commit is None or lazy.height > commit.height):
            commit = lazy
        if commit is not None and self.persisted_commit is not None \
                and commit.height <= self.persisted_commit.height:
            commit = None   # never move the durable marker back
        if delete:
            dead = set(delete)
            blocks = [b for b in blocks if b.id not in dead]
        durable = hard is not None or bool(blocks) or head is not None or bool(delete)
        if durable or commit is not None:
            # The commit marker alone is persisted lazily (A.3): it needs no fsync.
            self.store.write(hard_state=hard, blocks=blocks, head=head, commit=commit,
                             delete=delete, sync=self.fsync and durable)
            self.batches += 1
            if commit is not None:
                self.persisted_commit = commit
        self.readys += len(readys)
        links = self.links
        if out:
            links.send_msgs(out)
        if apply or reads or outcomes:
            self.tell(links.fsm, ApplyWork(blocks=tuple(apply), reads=tuple(reads),
                                           outcomes=tuple(outcomes), decoded=decoded))
        if head is not None:
            self.tell(links.role, Persisted(head=head))
        self.inbox.done(len(readys))

    def on_stop(self) -> None:
        try:
            self._flush(self.inbox.drain())
        finally:
            self.store.close()
