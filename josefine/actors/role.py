"""Role actor: holds the pure core, feeds it inputs and routes its Readys.

Routing is the runtime's `ReadyRouter` (josefine/runtime/executor.py): eager messages leave
at once, a Ready with nothing to sync and nothing queued ahead is carried out on this
thread, everything else goes to the chain actor through the `writes` channel.

Proposals do not arrive as one pykka message each: the intake puts them in a side queue
and the role actor drains everything waiting into ONE `Propose`, so a burst becomes one
block while a lone proposal still goes out at once (no fixed batching tick).
"""
from __future__ import annotations

import logging
from typing import Any, Callable

from josefine.actors.base import ActorEffects, NodeActor
from josefine.messages import Nudge, Propose, StatusQuery, Tick
from josefine.raft.core import RaftCore
from josefine.raft.ready import Ready
from josefine.runtime.channels import SideQueue, TickGate
from josefine.runtime.executor import ReadyRouter, Route, carry_out

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
        self.router = ReadyRouter()
        self.effects = ActorEffects(self)

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
        routed = self.router.route(r, self.chain_inbox.backlog())
        if routed.eager:
            self.links.send_msgs(routed.eager)
        if routed.route is Route.QUEUE:
            self.chain_inbox.put_many(routed.queued)
        elif routed.route is Route.SKIP:
            # Nothing to sync and nothing queued ahead of it: carried out here, without the
            # chain actor's hop (its commit marker rides along with the next write, A.3).
            carry_out(routed.now, self.effects)  # type: ignore[arg-type]
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
