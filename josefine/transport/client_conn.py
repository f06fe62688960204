"""A synchronous request/reply connection from a client to one node.

Not thread-safe: one connection belongs to one thread at a time (the `Client` holds a lock
or keeps one connection per thread). The DEALER socket is created lazily, and thrown away
after a timeout, because a DEALER keeps queued requests and would deliver them, stale, once
the node is reachable again; a fresh socket starts clean.

Replies are matched by (client_id, seq) for proposals and (client_id, read_id) for the
other requests; anything else that arrives (a late reply to an earlier attempt, garbage)
is ignored.
"""
from __future__ import annotations

import logging
import math
import time
from typing import Any

import zmq

from josefine.messages import (
    ClientAdmin,
    ClientAdminResp,
    ClientPropose,
    ClientProposeResp,
    ClientRead,
    ClientReadResp,
    ClientStatus,
    ClientStatusResp,
    ClientTransfer,
)
from josefine.security import KeyPair, apply_client_curve
from josefine.transport.codec import (
    DEFAULT_MAX_FRAME_BYTES,
    CodecError,
    decode_frame,
    encode_client_frame,
)

__all__ = ["ClientConnection"]

_log = logging.getLogger(__name__)

_READ_ID_REPLIES = (ClientReadResp, ClientStatusResp, ClientAdminResp)

_EXPECTED: dict[type, tuple[type, ...]] = {
    ClientPropose: (ClientProposeResp,),
    ClientRead: (ClientReadResp,),
    ClientStatus: (ClientStatusResp,),
    ClientAdmin: (ClientAdminResp,),
    # The protocol names no dedicated transfer reply: accept any reply keyed by read_id.
    ClientTransfer: _READ_ID_REPLIES,
}
"""Request type -> the reply types that may answer it."""


def _key(msg: Any) -> tuple[str, str, int]:
    if type(msg) is ClientPropose or type(msg) is ClientProposeResp:
        return ("seq", msg.client_id, msg.seq)
    return ("read", msg.client_id, msg.read_id)


class ClientConnection:
    """Send client requests to the node at `address` and wait for the matching reply.

    Args:
        address: the node's ROUTER endpoint, e.g. "tcp://127.0.0.1:7001".
        cluster_id: replies from another cluster are ignored.
        client_id: every request must carry this client id.
        context: a ZeroMQ context to share; by default the connection makes its own
            (lazily) and ends it on `close`.
        max_frame_bytes: replies larger than this are refused.
        curve: (this client's key pair, the node's server key) for a secure node; None
            for plaintext.
    """

    def __init__(self, address: str, cluster_id: str, client_id: str, *,
                 context: zmq.Context | None = None,
                 max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES,
                 curve: tuple[KeyPair, bytes] | None = None) -> None:
        self.address = address
        self.cluster_id = cluster_id
        self.client_id = client_id
        self.max_frame_bytes = max_frame_bytes
        self._curve = curve
        self._own_ctx = context is None
        self._ctx = context
        self._sock: zmq.Socket | None = None

    def request(self, msg: Any, timeout_s: float) -> Any:
        """Send one request and return its reply.

        Raises:
            TimeoutError: no matching reply within `timeout_s` (the socket is then
                replaced, so the unanswered request is not delivered later).
            TypeError: `msg` is not a client request.
            ValueError: `msg.client_id` is not this connection's client id.
        """
        expected = _EXPECTED.get(type(msg))
        if expected is None:
            raise TypeError(f"not a client request: {type(msg).__name__}")
        if msg.client_id != self.client_id:
            raise ValueError(f"request for client {msg.client_id!r} on a connection of "
                             f"{self.client_id!r}")
        key = _key(msg)
        frame = encode_client_frame(self.cluster_id, [msg])
        deadline = time.monotonic() + timeout_s
        sock = self._socket()
        try:
            sock.send(frame, zmq.NOBLOCK)
        except zmq.Again:
            self._reset()
            raise TimeoutError(f"{self.address}: send queue full") from None
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                self._reset()
                raise TimeoutError(f"no reply from {self.address} within {timeout_s} s")
            if not sock.poll(max(1, math.ceil(remaining * 1000)), zmq.POLLIN):
                continue
            try:
                parts = sock.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                continue
            if len(parts) != 1:
                continue
            try:
                sender, replies = decode_frame(parts[0], self.cluster_id, self.max_frame_bytes)
            except CodecError as exc:
                _log.debug("client %s: ignored a bad reply from %s: %s",
                           self.client_id, self.address, exc)
                continue
            if sender is not None:
                continue
            for reply in replies:
                if type(reply) in expected and _key(reply) == key:
                    return reply
            # anything else is a stale reply to an earlier attempt

    def close(self) -> None:
        """Close the socket (and the context if this connection made it). Idempotent; a
        later `request` reconnects."""
        self._reset()
        if self._own_ctx and self._ctx is not None:
            self._ctx.term()
            self._ctx = None

    def __enter__(self) -> ClientConnection:
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()

    def _socket(self) -> zmq.Socket:
        if self._sock is None:
            if self._ctx is None:
                self._ctx = zmq.Context()
            sock = self._ctx.socket(zmq.DEALER)
            if self._curve is not None:
                apply_client_curve(sock, *self._curve)
            sock.setsockopt(zmq.LINGER, 0)
            sock.setsockopt(zmq.MAXMSGSIZE, self.max_frame_bytes)
            sock.connect(self.address)
            self._sock = sock
        return self._sock

    def _reset(self) -> None:
        if self._sock is not None:
            self._sock.close(linger=0)
            self._sock = None
