"""Helpers shared by the transport tests (imported by conftest.py and test modules)."""
from __future__ import annotations

import queue
import socket
import time
from typing import Any, Callable

from josefine.chain.block import BlockKind, Command, encode_commands, genesis, make_block
from josefine.messages import (
    AppendBlocks,
    AppendResp,
    ClientAdmin,
    ClientAdminResp,
    ClientPropose,
    ClientProposeResp,
    ClientRead,
    ClientReadResp,
    ClientStatus,
    ClientStatusResp,
    ClientTransfer,
    ForwardPropose,
    ForwardProposeResp,
    Heartbeat,
    HeartbeatResp,
    PreVoteReq,
    PreVoteResp,
    ReadIndexReq,
    ReadIndexResp,
    Status,
    TimeoutNow,
    VoteReq,
    VoteResp,
)
from josefine.transport.zmq_transport import ZmqTransport
from josefine.types import BlockId

CLUSTER = "test-cluster"


def chain_of(n: int, term: int = 3, payload: bytes = b"0123456789"):
    g = genesis(CLUSTER)
    blocks, parent = [], g
    for _ in range(n):
        parent = make_block(parent, term, BlockKind.NORMAL, payload)
        blocks.append(parent)
    return g, tuple(blocks)


def sample_messages() -> list[Any]:
    """At least one instance of every wire message, covering None, hints, blocks, enums."""
    g, blocks = chain_of(3)
    noop = make_block(blocks[-1], 4, BlockKind.NOOP, b"")
    return [
        PreVoteReq(src=1, dst=2, term=5, head=BlockId(4, 10)),
        PreVoteResp(src=2, dst=1, term=5, granted=True),
        PreVoteResp(src=2, dst=1, term=7, granted=False),
        VoteReq(src=1, dst=3, term=6, head=BlockId(4, 10)),
        VoteReq(src=1, dst=3, term=6, head=BlockId(0, 0), transfer=True),
        VoteResp(src=3, dst=1, term=6, granted=False),
        AppendBlocks(src=1, dst=2, term=3, prev=g.id, blocks=blocks, commit=BlockId(3, 2), seq=9),
        AppendBlocks(src=1, dst=2, term=4, prev=blocks[-1].id, blocks=(noop,),
                     commit=BlockId(0, 0), seq=0),
        AppendBlocks(src=1, dst=3, term=3, prev=BlockId(3, 3), blocks=(), commit=g.id, seq=2**40),
        AppendBlocks(src=1, dst=3, term=0, prev=BlockId(0, 0), blocks=(g,), commit=g.id, seq=1),
        AppendResp(src=2, dst=1, term=3, success=True, seq=9, match=BlockId(3, 3)),
        AppendResp(src=2, dst=1, term=3, success=False, seq=10, rejected_prev=BlockId(3, 7),
                   hint=((3, 5), (2, 4), (1, 1)), commit=BlockId(1, 1)),
        AppendResp(src=2, dst=1, term=3, success=False),
        Heartbeat(src=1, dst=2, term=3, commit=None, seq=4),
        Heartbeat(src=1, dst=2, term=3, commit=BlockId(3, 2), seq=5),
        HeartbeatResp(src=2, dst=1, term=3, seq=5),
        TimeoutNow(src=1, dst=2, term=3),
        ReadIndexReq(src=3, dst=1, term=4, read_id=(7 << 32) + 1),
        ReadIndexResp(src=1, dst=3, term=4, read_id=9, index=BlockId(4, 12)),
        ReadIndexResp(src=1, dst=3, term=4, read_id=10, index=None),
        ForwardPropose(src=2, dst=1, term=4, fwd_id=3,
                       commands=encode_commands([Command("c-1", 5, b"\x00put k v")])),
        ForwardProposeResp(src=1, dst=2, term=4, fwd_id=3, status=Status.BUSY,
                           refused=(("c-1", 5), ("c-2", 2**40)), leader_hint=1),
        ForwardProposeResp(src=1, dst=2, term=4, fwd_id=4, status=Status.NOT_LEADER),
        ClientPropose(client_id="c-1", seq=1, command=b"\x00put k v"),
        ClientProposeResp(client_id="c-1", seq=1, status=Status.OK, result={"v": [1, b"x", None]},
                          leader_hint=None),
        ClientProposeResp(client_id="c-1", seq=2, status=Status.NOT_LEADER, leader_hint=3),
        ClientRead(client_id="c-1", read_id=7, query=b"get k"),
        ClientReadResp(client_id="c-1", read_id=7, status=Status.BUSY, result=b"v"),
        ClientReadResp(client_id="c-1", read_id=8, status=Status.REJECTED),
        ClientStatus(client_id="cli"),
        ClientStatus(client_id="cli", read_id=3),
        ClientStatusResp(client_id="cli", read_id=3,
                         status={"role": "leader", "term": 3, "head": [3, 7], "peers": {2: "ok"}}),
        ClientTransfer(client_id="cli", read_id=4, target=2),
        ClientAdmin(client_id="cli", read_id=5, op="faults", args={"blocked_in": [2]}),
        ClientAdmin(client_id="cli", read_id=6, op="noop"),
        ClientAdminResp(client_id="cli", read_id=5, ok=True, result={"seed": 1}),
        ClientAdminResp(client_id="cli", read_id=6, ok=False, error="disabled"),
    ]


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until(pred: Callable[[], Any], timeout: float = 10.0, interval: float = 0.01) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        v = pred()
        if v:
            return v
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(interval)


def drain(q: queue.Queue, n: int, timeout: float = 10.0) -> list:
    out = []
    deadline = time.monotonic() + timeout
    while len(out) < n:
        out.append(q.get(timeout=max(0.0, deadline - time.monotonic())))
    return out


class Node:
    """A started ZmqTransport plus queues of what it received."""

    def __init__(self, transport: ZmqTransport, inbox: queue.Queue, requests: queue.Queue):
        self.t = transport
        self.inbox = inbox
        self.requests = requests


# ------------------------------------------------------------------------------ Curve keys

from josefine.security import KeyPair, TrustedKeys, generate_keypair  # noqa: E402
from josefine.transport.zmq_transport import TransportSecurity  # noqa: E402

NODE_KEYS: dict[int, KeyPair] = {i: generate_keypair() for i in range(1, 10)}
"""Key pairs of nodes 1..9, made once per test session."""
CLIENT_KEY = generate_keypair()
ADMIN_KEY = generate_keypair()
STRANGER_KEY = generate_keypair()
"""A key nobody trusts."""


def trust_for(n: int) -> TrustedKeys:
    """What every node of an n-node test cluster trusts."""
    return TrustedKeys({i: (NODE_KEYS[i].public,) for i in range(1, n + 1)},
                       clients=(CLIENT_KEY.public,), admins=(ADMIN_KEY.public,))


def security_for(node_id: int, n: int) -> TransportSecurity:
    return TransportSecurity(NODE_KEYS[node_id], trust_for(n))


def curve_dealer(ctx: Any, address: str, server: KeyPair | None, pair: KeyPair | None):
    """A raw DEALER (no transport logic) to `address`: a Curve client with `pair` of a
    server with `server`'s key, or plaintext when `pair` is None."""
    import zmq
    s = ctx.socket(zmq.DEALER)
    s.setsockopt(zmq.LINGER, 0)
    if pair is not None and server is not None:
        s.curve_secretkey, s.curve_publickey = pair.secret, pair.public
        s.curve_serverkey = server.public
    s.connect(address)
    return s
