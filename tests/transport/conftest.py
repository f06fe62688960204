"""Fixtures for transport tests: sample messages, transports that always stop."""
from __future__ import annotations

import queue
from typing import Any

import pytest
from transport_helpers import (CLUSTER, Node, free_port, sample_messages, security_for,
                               wait_until)

from josefine.transport.zmq_transport import ZmqTransport


@pytest.fixture
def cluster():
    """Factory: cluster(n, **kwargs) -> {id: Node}, linked up; all stopped at teardown.

    Secure (Curve, node i holding NODE_KEYS[i]) unless `secure=False`, as nodes are."""
    started: list[ZmqTransport] = []

    def make(n: int = 2, start: bool = True, secure: bool = True,
             **kwargs: Any) -> dict[int, Node]:
        addrs = {i: f"tcp://127.0.0.1:{free_port()}" for i in range(1, n + 1)}
        nodes = {}
        for i, addr in addrs.items():
            inbox: queue.Queue = queue.Queue()
            requests: queue.Queue = queue.Queue()
            t = ZmqTransport(i, CLUSTER, addr, addrs, inbox.put,
                             lambda ident, msg, q=requests: q.put((ident, msg)),
                             security=security_for(i, n) if secure else None, **kwargs)
            started.append(t)
            if start:
                t.start()
            nodes[i] = Node(t, inbox, requests)
        if start:  # messages to a peer whose link is not up yet are dropped (ZMQ_IMMEDIATE)
            for node in nodes.values():
                wait_until(lambda: all(node.t.peer_links().values()))
        return nodes

    yield make
    for t in started:
        t.stop()


@pytest.fixture(scope="session")
def samples() -> list[Any]:
    return sample_messages()
