"""Transport actor: owns the ZeroMQ transport and sends what the other actors hand it.

Inbound traffic is decoded on the transport's I/O thread and handed straight to the role
actor (peer messages) or to the node's request intake (client requests).
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
