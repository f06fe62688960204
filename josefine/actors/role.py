"""Role actor: holds the pure core, feeds it inputs and routes its Readys.

Routing is the runtime's `ReadyRouter` (josefine/runtime/executor.py): eager messages leave
at once, a Ready with nothing to sync and nothing queued ahead is carried out on this
thread, everything else is written: by this thread itself when a follower (or candidate)
is quiet (the chain actor idle, this mailbox empty: no hand-off, no wake-up), else by the
chain actor through the `writes` channel. A leader always hands its writes over: it may
commit on its followers' acks before its own fsync returns (A.8 counts any quorum), and
its thread must stay free to take those acks and new proposals while its disk works.

Proposals do not arrive as one pykka message each: the intake puts them in a side queue
and the role actor drains everything waiting into ONE `Propose`, so a burst becomes one
block while a lone proposal still goes out at once (no fixed batching tick).
"""
from __future__ import annotations

import logging
from typing import Any, Callable

from josefine.actors.base import ActorEffects, NodeActor
from josefine.messages import Nudge, Persisted, Propose, StatusQuery, Tick
from josefine.raft.core import RaftCore, Role
from josefine.raft.ready import Ready
from josefine.runtime.channels import SideQueue, TickGate
from josefine.runtime.executor import ReadyRouter, Route, carry_out, release
from josefine.runtime.status import NodeStatus
from josefine.runtime.writer import Writer

log = logging.getLogger(__name__)


class RoleActor(NodeActor):
    def __init__(self, node_id, links, fatal, core: RaftCore, gate: TickGate,  # noqa: ANN001
                 proposals: SideQueue, chain_inbox: SideQueue, writer: Writer | None = None,
                 status_extra: Callable[[], dict] | None = None) -> None:
        super().__init__(node_id, links, fatal)
        self.core = core
        self.gate = gate
        self.proposals = proposals
        self.chain_inbox = chain_inbox
        self.status_extra = status_extra
        self.writer = writer
        """With a writer, the role actor runs a write itself when the chain actor is idle
        and its own mailbox empty (josefine/runtime/writer.py); None: always hand over."""
        self.router = ReadyRouter()
        self.effects = ActorEffects(self)
        self.inline_effects = ActorEffects(self, on_persisted=self._persisted_here)

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
        for ev in r.events:
            if ev[0] == "became_leader":
                log.info("node %d: became leader of term %d", self.node_id, ev[1])
        if routed.route is Route.QUEUE:
            plan = None
            if self.writer is not None and self.core.role is not Role.LEADER \
                    and self.actor_inbox.empty() and not self.chain_inbox.backlog():
                plan = self.writer.try_write(routed.queued)
            if plan is None:
                self.chain_inbox.put_many(routed.queued)
            else:
                release(plan, self.inline_effects)
        elif routed.route is Route.SKIP:
            # Nothing to sync and nothing queued ahead of it: carried out here, without the
            # chain actor's hop (its commit marker rides along with the next write, A.3).
            assert routed.now is not None, "a SKIP route carries its plan"
            carry_out(routed.now, self.effects)

    def _persisted_here(self, head: Any) -> None:
        self._dispatch(self.core.step(Persisted(head=head)))

    def status(self) -> NodeStatus:
        st = self.core.status()
        st["queued_proposals"] = len(self.proposals)
        st["dropped_ticks"] = self.gate.dropped
        if self.status_extra is not None:
            st.update(self.status_extra())
        return NodeStatus(**st)
