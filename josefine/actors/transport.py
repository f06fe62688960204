"""Transport actor: owns the ZeroMQ transport's lifecycle.

Honestly described: in a running node this actor's mailbox carries nothing. Its real
inbox is the transport's own thread-safe send queue (the `peer-out` and `client-out`
channels of josefine/runtime/channels.py), which the role and chain actors and the FSM
driver hand messages to directly, one hop fewer than through a mailbox; the I/O thread
behind it is the only user of the sockets. Inbound traffic is decoded on that I/O thread
and handed straight to the role actor (`peer-in`) or to the client intake. `Outbound`
messages are still accepted, for wiring without a send queue (tests with a fake
transport). The actor stops the transport when the node stops.
"""
from __future__ import annotations

import logging

from josefine.actors.base import NodeActor
from josefine.messages import Outbound
from josefine.transport.zmq_transport import ZmqTransport

log = logging.getLogger(__name__)


class TransportActor(NodeActor):
    def __init__(self, node_id, links, fatal, transport: ZmqTransport) -> None:  # noqa: ANN001
        super().__init__(node_id, links, fatal)
        self.transport = transport

    def on_receive(self, message):  # noqa: ANN001 - pykka hook
        if type(message) is Outbound:
            by_peer: dict[int, list] = {}
            for m in message.msgs:
                lst = by_peer.get(m.dst)
                if lst is None:
                    by_peer[m.dst] = [m]
                else:
                    lst.append(m)
            self.transport.send(by_peer)
        else:
            log.warning("node %d: transport actor ignored %r", self.node_id, message)

    def on_stop(self) -> None:
        self.transport.stop()
