"""Role actor: holds the pure core, feeds it inputs and dispatches its Readys.

Proposals do not arrive as one pykka message each: the intake puts them in a side queue
and the role actor drains everything waiting into ONE `Propose`, so a burst becomes one
block while a lone proposal still goes out at once (no fixed batching tick).
"""
from __future__ import annotations

import logging
from typing import Any, Callable

from josefine.actors.base import NodeActor, SideQueue
from josefine.actors.timer import TickGate
from josefine.messages import ApplyWork, Nudge, Propose, StatusQuery, Tick
from josefine.raft.core import RaftCore
from josefine.raft.ready import Ready

log = logging.getLogger(__name__)


class RoleActor(NodeActor):
    def __init__(self, node_id, links, fatal, core: RaftCore, gate: TickGate,  # noqa: ANN001
                 proposals: SideQueue, chain_inbox: SideQueue,
                 status_extra: Callable[[], dict] | None = None) -> None:
        super().__init__(node_id, links, fatal)
        self.core = core
        self.gate = gate
        self.proposals = proposals
        self.chain_inbox = chain_inbox
        self.status_extra = status_extra

    def on_start(self) -> None:
        self._dispatch(self.core.start())

    def on_receive(self, message):  # noqa: ANN001 - pykka hook
        t = type(message)
        if t is Nudge:
            cmds = self.proposals.drain()
            if cmds:
                self._dispatch(self.core.step(Propose(commands=tuple(cmds))))
            return
        if t is Tick:
            self.gate.pending = False
        elif t is StatusQuery:
            message.reply(self.status())
            return
        self._dispatch(self.core.step(message))

    def _dispatch(self, r: Ready) -> None:
        links = self.links
        if r.eager:
            links.send_msgs(r.eager)
        if r.needs_sync:
            self.chain_inbox.put(r)
        elif r.messages or r.apply or r.reads or r.outcomes or r.commit:
            if self.chain_inbox.unfinished:
                self.chain_inbox.put(r)   # keep Ready order behind pending writes
            else:
                # Nothing to sync and nothing ahead of it: skip the chain actor's hop. The
                # commit marker is lazy (A.3); it rides along with the next durable write.
                if r.commit is not None:
                    self.chain_inbox.latest_commit = r.commit
                if r.messages:
                    links.send_msgs(r.messages)
                if r.apply or r.reads or r.outcomes:
                    self.tell(links.fsm, ApplyWork(blocks=tuple(r.apply), reads=tuple(r.reads),
                                                   outcomes=tuple(r.outcomes),
                                                   decoded=r.decoded))
        for ev in r.events:
            if ev[0] == "became_leader":
                log.info("node %d: became leader of term %d", self.node_id, ev[1])

    def status(self) -> dict[str, Any]:
        st = self.core.status()
        st["queued_proposals"] = len(self.proposals)
        st["dropped_ticks"] = self.gate.dropped
        if self.status_extra is not None:
            st.update(self.status_extra())
        return st
