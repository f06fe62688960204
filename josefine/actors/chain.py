"""Chain actor: the only LevelDB writer, and the durability gate of the node.

A thin shell over the runtime's `WritePlanner` (josefine/runtime/executor.py): on each
nudge it drains the `writes` channel (Readys and lazy commit markers from the role actor)
into ONE plan, writes it as one batch (group commit), and only after the write returns
releases what depended on it, in order: acks and votes to the transport, committed
blocks / reads / outcomes to the FSM driver, `Persisted(head)` back to the role actor (a
leader counts itself toward a quorum only then).
"""
from __future__ import annotations

import logging
from typing import Any

from josefine.actors.base import ActorEffects, NodeActor
from josefine.messages import Nudge
from josefine.runtime.channels import SideQueue
from josefine.runtime.executor import WritePlanner, carry_out

log = logging.getLogger(__name__)


class ChainActor(NodeActor):
    def __init__(self, node_id, links, fatal, store, fsync: bool, inbox: SideQueue) -> None:  # noqa: ANN001
        super().__init__(node_id, links, fatal)
        self.store = store
        self.inbox = inbox
        self.planner = WritePlanner(fsync)
        self.effects = ActorEffects(self, store)

    @property
    def batches(self) -> int:
        return self.planner.writes

    @property
    def readys(self) -> int:
        return self.planner.readys

    def on_receive(self, message: Any) -> None:
        if type(message) is Nudge:
            self._flush(self.inbox.drain())
        else:
            log.warning("node %d: chain actor ignored %r", self.node_id, message)

    def _flush(self, items: list) -> None:
        if not items:
            return
        carry_out(self.planner.plan(items), self.effects)
        self.inbox.done(len(items))

    def on_stop(self) -> None:
        try:
            self._flush(self.inbox.drain())
        finally:
            self.store.close()
