"""Pieces every actor of a node shares: failure policy and wiring.

The hand-overs between threads (side queues, the tick gate) are in josefine/runtime/channels.py."""
from __future__ import annotations

import logging
from typing import Any, Callable

import pykka

from josefine.messages import InstallSnapshot
from josefine.runtime.channels import SideQueue, TickGate  # noqa: F401 - re-exported

log = logging.getLogger(__name__)


class Links:
    """The refs of one node's actors, filled in as they start (start order in node.py)."""

    def __init__(self) -> None:
        self.role: pykka.ActorRef | None = None
        self.chain: pykka.ActorRef | None = None
        self.fsm: pykka.ActorRef | None = None
        self.transport: pykka.ActorRef | None = None
        self.timer: pykka.ActorRef | None = None
        self.snapshots: pykka.ActorRef | None = None
        """Streams snapshot files; takes the core's InstallSnapshot requests."""
        self.run_role_here: Callable[[SideQueue], None] | None = None
        """The role actor's `run_here`, once it has started (see RoleActor.run_here)."""
        self.send: Callable[[dict[int, list]], None] | None = None
        """The transport's thread-safe outbound queue (its real mailbox): the hot path
        hands peer messages straight to it instead of through one more actor hop."""

    def send_msgs(self, msgs: Any) -> None:
        by_peer: dict[int, list] = {}
        for m in msgs:
            if type(m) is InstallSnapshot:   # a file to stream, not a frame to send
                if self.snapshots is not None:
                    try:
                        self.snapshots.tell(m)
                    except pykka.ActorDeadError:
                        pass
                continue
            lst = by_peer.get(m.dst)
            if lst is None:
                by_peer[m.dst] = [m]
            else:
                lst.append(m)
        if self.send is not None:
            self.send(by_peer)
        elif self.transport is not None:
            from josefine.messages import Outbound
            self.transport.tell(Outbound(msgs=tuple(msgs)))


class NodeActor(pykka.ThreadingActor):
    """An unexpected exception in any actor stops the whole node (no half-alive nodes).

    Daemon threads: an embedding program that exits without `Node.stop()` must not hang
    on our threads. Nothing is lost by that: every promise made was synced first."""

    use_daemon_thread = True

    def __init__(self, node_id: int, links: Links, fatal: Callable[[str, BaseException], None]):
        super().__init__()
        self.node_id = node_id
        self.links = links
        self._fatal = fatal

    def on_failure(self, exception_type, exception_value, traceback) -> None:  # noqa: ANN001
        self._fatal(type(self).__name__, exception_value)

    def tell(self, ref: pykka.ActorRef | None, msg: Any) -> None:
        """Tell, ignoring an actor already stopped (only happens during shutdown)."""
        if ref is None:
            return
        try:
            ref.tell(msg)
        except pykka.ActorDeadError:
            log.debug("node %d: dropped %s to a stopped actor", self.node_id, type(msg).__name__)


class ActorEffects:
    """A plan's effects (josefine/runtime/executor.py) as the actors carry them out: peer
    messages to the transport's send queue, committed work to the FSM driver, `Persisted`
    to the role actor (or, when the role actor ran the write itself, straight back into
    its core through `on_persisted`). Writes go through the runtime's `Writer`."""

    __slots__ = ("actor", "on_persisted")

    def __init__(self, actor: NodeActor, on_persisted: Callable[[Any], None] | None = None):
        self.actor = actor
        self.on_persisted = on_persisted

    def write(self, w: Any) -> None:
        raise AssertionError("writes go through josefine.runtime.writer.Writer")

    def send(self, msgs: list[Any]) -> None:
        self.actor.links.send_msgs(msgs)

    def apply(self, work: Any) -> None:
        self.actor.tell(self.actor.links.fsm, work)

    def persisted(self, head: Any) -> None:
        if self.on_persisted is not None:
            self.on_persisted(head)
            return
        from josefine.messages import Persisted
        self.actor.tell(self.actor.links.role, Persisted(head=head))
