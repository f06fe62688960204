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
import threading
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Callable

from josefine.actors.base import ActorEffects, NodeActor
from josefine.chainview import describe_core
from josefine.messages import ChainQuery, Nudge, Persisted, Propose, StatusQuery, Tick
from josefine.raft.core import RaftCore, Role
from josefine.raft.ready import EventKind, Ready
from josefine.runtime.channels import SideQueue, TickGate
from josefine.runtime.executor import ReadyRouter, Route, carry_out, release
from josefine.runtime.status import NodeStatus
from josefine.runtime.writer import Writer

if TYPE_CHECKING:
    from josefine.metrics import NodeMetrics

log = logging.getLogger(__name__)


class RoleActor(NodeActor):
    def __init__(self, node_id, links, fatal, core: RaftCore, gate: TickGate,  # noqa: ANN001
                 proposals: SideQueue, chain_inbox: SideQueue, writer: Writer | None = None,
                 status_extra: Callable[[], dict] | None = None,
                 peer_inbox: SideQueue | None = None,
                 metrics: NodeMetrics | None = None, leader_view: Any = None,
                 on_peers: Callable[[dict[int, str]], None] | None = None,
                 addresses: Mapping[int, str] | None = None) -> None:
        super().__init__(node_id, links, fatal)
        self.leader_view = leader_view
        """Gets the core's known leader after every step (`.leader`): the client intake
        answers NOT_LEADER from it without a trip through this actor."""
        self.core = core
        self.gate = gate
        self.proposals = proposals
        self.chain_inbox = chain_inbox
        self.peer_inbox = peer_inbox if peer_inbox is not None else SideQueue()
        self.status_extra = status_extra
        self._state_lock = threading.Lock()
        """Held by whichever thread touches this actor's state (core, router): the actor's
        own thread for every mailbox message, or a producer's thread in `run_here`."""
        self._alive = False
        self.ran_here = 0
        """Input batches handled on a producer's thread (`run_here`), not this actor's."""
        self.elections = 0
        self.metrics = metrics
        """With metrics on: proposal batch sizes and proposal-to-commit times go here."""
        self.writer = writer
        """With a writer, the role actor runs a write itself when the chain actor is idle
        and its own mailbox empty (josefine/runtime/writer.py); None: always hand over."""
        self.router = ReadyRouter()
        self.on_peers = on_peers
        """Told the peers this node should talk to whenever they change (the transport's
        `set_peers`); None: the peer set is fixed."""
        self.fixed: dict[int, str] = dict(addresses or {})
        """The addresses of this node's own config file (its peers): they win over those
        a configuration recorded when its block was written, so a cluster relaunched on
        other ports (every node told its peers' new addresses) finds itself again."""
        self.addresses: dict[int, str] = dict(self.fixed)
        """Every address this node has learnt: how to reach a leader that is not in the
        configuration on this node's path yet (a new node catching up through old
        configurations)."""
        self._peers: dict[int, str] | None = None
        self._peers_leader: int | None = None
        self.effects = ActorEffects(self)
        self.inline_effects = ActorEffects(self, on_persisted=self._persisted_here)

    def on_start(self) -> None:
        with self._state_lock:
            self._alive = True
            self._sync_peers()   # the configuration the core rebuilt from disk
            self._dispatch(self.core.start())
        self.links.run_role_here = self.run_here

    def on_stop(self) -> None:
        with self._state_lock:
            self._alive = False

    def on_receive(self, message):  # noqa: ANN001 - pykka hook
        with self._state_lock:
            t = type(message)
            if t is Nudge:
                self._drain_inputs()
                return
            if t is Tick:
                self.gate.pending = False
            elif t is StatusQuery:
                message.reply(self.status())
                return
            elif t is ChainQuery:   # read on this thread: the core is this actor's alone
                message.reply(describe_core(self.core, message.last))
                return
            self._dispatch(self.core.step(message))

    def run_here(self, queue: SideQueue) -> None:
        """Called by a producer (the transport's I/O thread) right after it put items on
        `queue` (the `peer-in` or `proposals` channel) without a nudge: when this actor is
        idle, its inputs are handled on the caller's thread at once, saving two thread
        hand-offs on the write path; otherwise the actor is nudged as usual. Inputs of one
        channel are drained in order by whoever holds the state lock, so they are handled
        in the order they were put, on whichever thread."""
        if not self._state_lock.acquire(blocking=False):
            queue.nudge()
            return
        try:
            if self._alive:
                self.ran_here += 1
                self._drain_inputs()
        except BaseException as exc:   # same policy as on this actor's own thread
            self._fatal(type(self).__name__, exc)
        finally:
            self._state_lock.release()

    def _drain_inputs(self) -> None:
        core = self.core
        for m in self.peer_inbox.drain():
            self._dispatch(core.step(m))
        cmds = self.proposals.drain()
        if cmds:
            metrics = self.metrics
            if metrics is None:
                self._dispatch(core.step(Propose(commands=tuple(cmds))))
                return
            metrics.batch_commands.observe(len(cmds))
            r = core.step(Propose(commands=tuple(cmds)))
            if r.blocks and core.role is Role.LEADER:
                at = time.perf_counter()
                for b in r.blocks:
                    metrics.commit_timer.proposed(b.id.height, at)
            self._dispatch(r)

    def _dispatch(self, r: Ready) -> None:
        if self.leader_view is not None:
            self.leader_view.leader = self.core.leader
        routed = self.router.route(r, self.chain_inbox.backlog())
        config_changed = False
        for ev in r.events:
            if ev[0] == EventKind.BECAME_LEADER:
                log.info("node %d: became leader of term %d", self.node_id, ev[1])
            elif ev[0] == EventKind.CAMPAIGN:
                self.elections += 1
            elif ev[0] == EventKind.CONFIG:
                config_changed = True
        if config_changed or self.core.leader != self._peers_leader:
            self._sync_peers()   # before the sends: they may be to a member just added
        if routed.eager:
            self.links.send_msgs(routed.eager)
        metrics = self.metrics
        if metrics is not None:
            if self.core.role is not Role.LEADER:
                metrics.commit_timer.clear()
            elif r.commit is not None:
                metrics.commit_timer.committed(r.commit.height)
        if routed.route is Route.QUEUE:
            plan = None
            if self.writer is not None and self.core.role is not Role.LEADER \
                    and self.actor_inbox.empty() and not self.peer_inbox.items \
                    and not self.chain_inbox.backlog():
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

    def _sync_peers(self) -> None:
        """Point the transport at the members of the configuration on this node's path,
        plus the leader it follows when that one is not among them (a new node replaying
        old configurations must keep hearing the leader that feeds it)."""
        core = self.core
        leader = self._peers_leader = core.leader
        book, fixed = self.addresses, self.fixed
        for m in core.config.members:
            if m.address and m.id not in fixed:
                book[m.id] = m.address
        want = {m.id: book[m.id] for m in core.config.members
                if m.id != self.node_id and m.id in book}
        if leader is not None and leader != self.node_id and leader not in want \
                and leader in book:
            want[leader] = book[leader]
        if want != self._peers and self.on_peers is not None:
            self._peers = want
            self.on_peers(dict(want))

    def _persisted_here(self, head: Any) -> None:
        self._dispatch(self.core.step(Persisted(head=head)))

    def status(self) -> NodeStatus:
        st = self.core.status()
        st["queued_proposals"] = len(self.proposals)
        st["dropped_ticks"] = self.gate.dropped
        st["ran_on_io_thread"] = self.ran_here
        st["elections"] = self.elections
        fixed = self.fixed   # where this node dials them (see `fixed`)
        st["members"] = [m | {"address": fixed[m["id"]]} if m["id"] in fixed else m
                         for m in st["members"]]
        core = self.core
        if core.role is Role.LEADER:
            st["followers"] = {v: (p.match.height if p.match is not None else 0)
                               for v, p in sorted(core.prog.items())}
        if self.status_extra is not None:
            st.update(self.status_extra())
        return NodeStatus(**st)
