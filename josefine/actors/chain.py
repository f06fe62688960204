"""Chain actor: the only LevelDB writer, and the durability gate of the node.

A thin shell over the runtime's `Writer` (josefine/runtime/writer.py): on each nudge it
drains the `writes` channel (Readys and lazy commit markers from the role actor) into ONE
plan, writes it as one batch (group commit), and only after the write returns
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
from josefine.runtime.executor import release
from josefine.runtime.writer import Writer

log = logging.getLogger(__name__)


class ChainActor(NodeActor):
    def __init__(self, node_id, links, fatal, writer: Writer, inbox: SideQueue) -> None:  # noqa: ANN001
        super().__init__(node_id, links, fatal)
        self.writer = writer
        self.inbox = inbox
        self.effects = ActorEffects(self)

    def on_receive(self, message: Any) -> None:
        if type(message) is Nudge:
            self._flush(self.inbox.drain())
        else:
            log.warning("node %d: chain actor ignored %r", self.node_id, message)

    def _flush(self, items: list) -> None:
        if not items:
            return
        release(self.writer.write(items), self.effects)
        self.inbox.done(len(items))

    def on_stop(self) -> None:
        try:
            self._flush(self.inbox.drain())
        finally:
            self.writer.store.close()


__all__ = ["ChainActor"]
