"""Frames: the envelopes that carry encoded messages between processes (STYLE 3.4).

What a message or a block looks like in bytes is the vocabulary codec's business
(`josefine.codec`, the only module that imports msgpack). This module adds what only the
transport needs: the frame envelope with its protocol version and cluster id, the size
limit, which messages each kind of frame may carry, and the hot client reply encoder. Its
old names (`encode_message`, `packb`, `TAGS`, ...) are re-exported so that importers of
`josefine.transport.codec` keep working; new code imports them from `josefine.codec`.

Wire layout (protocol version 1): a **frame** is
``[kind, version, cluster_id, sender, [message bytes, ...]]``: kind ``"p"`` for a peer
frame (sender = the sending node's id), ``"c"`` for a client frame (sender nil). A frame
batches several encoded messages; each keeps its own ``[tag, {...}]`` encoding, so one
encoded message can be placed into frames to several peers without re-encoding.

Every problem with a frame, whatever its cause, raises the single `CodecError`; nothing
else escapes `decode_frame` on any input.
"""
from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from josefine.codec import (
    REASONS,
    TAGS,
    CodecError,
    decode_block,
    decode_message,
    encode_block,
    encode_message,
    pack,
    packb,
    tag_of,
    unpack,
    unpackb,
    wire_fields,
)
from josefine.messages import (
    CLIENT_REQUEST_TYPES,
    CLIENT_RESPONSE_TYPES,
    PEER_MESSAGE_TYPES,
    ClientProposeResp,
    Status,
)

__all__ = [
    "CLIENT_REQUEST_TYPES",
    "CLIENT_RESPONSE_TYPES",
    "DEFAULT_MAX_FRAME_BYTES",
    "FRAME_ITEM_OVERHEAD",
    "PROTOCOL_VERSION",
    "REASONS",
    "TAGS",
    "CodecError",
    "decode_block",
    "decode_frame",
    "decode_message",
    "encode_block",
    "encode_client_frame",
    "encode_frame",
    "encode_message",
    "encode_propose_reply",
    "frame_overhead",
    "packb",
    "unpackb",
]

PROTOCOL_VERSION = 1
DEFAULT_MAX_FRAME_BYTES = 16 * 1024 * 1024

PEER_FRAME = "p"
CLIENT_FRAME = "c"

_PEER_TYPES = frozenset(PEER_MESSAGE_TYPES)
_CLIENT_TYPES = frozenset(CLIENT_REQUEST_TYPES + CLIENT_RESPONSE_TYPES)


# ------------------------------------------------------------------------ client replies

_PROPOSE_RESP_TAG = tag_of(ClientProposeResp)
if wire_fields(ClientProposeResp) != ("client_id", "seq", "status", "result", "leader_hint"):
    raise ImportError("update encode_propose_reply: ClientProposeResp fields changed")


def encode_propose_reply(client_id: str, seq: int, status: Status, result: Any,
                         leader_hint: int | None) -> bytes:
    """`encode_message(ClientProposeResp(...))` without building the message: the hottest
    reply, sent once per write.

    Raises:
        CodecError: `result` cannot be packed.
    """
    return pack([_PROPOSE_RESP_TAG, {"client_id": client_id, "seq": seq, "status": status,
                                     "result": result, "leader_hint": leader_hint}])


# ------------------------------------------------------------------------------- frames


def _encode_frame(kind: str, cluster_id: str, sender: int | None, msgs: Iterable[Any]) -> bytes:
    encoded = [m if type(m) is bytes else encode_message(m) for m in msgs]
    return pack([kind, PROTOCOL_VERSION, cluster_id, sender, encoded])


def encode_frame(cluster_id: str, sender: int, msgs: Iterable[Any]) -> bytes:
    """Encode a peer frame from node `sender` carrying `msgs`.

    Items of `msgs` that are `bytes` are taken as already encoded by `encode_message`.
    """
    return _encode_frame(PEER_FRAME, cluster_id, sender, msgs)


def encode_client_frame(cluster_id: str, msgs: Iterable[Any]) -> bytes:
    """Encode a client frame (a request to a node, or a node's reply to a client)."""
    return _encode_frame(CLIENT_FRAME, cluster_id, None, msgs)


def frame_overhead(cluster_id: str) -> int:
    """An upper bound on a frame's size minus the sizes of its encoded messages.

    Each message adds at most 5 bytes besides its own encoding (a bin header).
    """
    return 32 + len(cluster_id.encode())


FRAME_ITEM_OVERHEAD = 5


def decode_frame(data: bytes, expected_cluster_id: str,
                 max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES
                 ) -> tuple[int | None, list[Any]]:
    """Decode a frame into ``(sender, messages)``; sender is None for a client frame.

    A peer frame may carry only peer messages whose `src` is the sender; a client frame
    only client messages. The whole frame is refused if any message is invalid.

    Raises:
        CodecError: reason "oversized", "malformed", "bad_version", "wrong_cluster" or
            "unknown_tag".
    """
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise CodecError("malformed", f"frame must be bytes, got {type(data).__name__}")
    if len(data) > max_frame_bytes:
        raise CodecError("oversized", f"{len(data)} > {max_frame_bytes} bytes")
    obj = unpack(data)
    if type(obj) is not list or len(obj) < 2:
        raise CodecError("malformed", "frame must be an array")
    kind, version = obj[0], obj[1]
    if kind != PEER_FRAME and kind != CLIENT_FRAME:
        raise CodecError("malformed", "unknown frame kind")
    if type(version) is not int:
        raise CodecError("malformed", "version must be an int")
    if version != PROTOCOL_VERSION:
        raise CodecError("bad_version", f"version {version}")
    if len(obj) < 5:
        raise CodecError("malformed", "frame header too short")
    cluster_id, sender, items = obj[2], obj[3], obj[4]
    if type(cluster_id) is not str:
        raise CodecError("malformed", "cluster id must be a str")
    if cluster_id != expected_cluster_id:
        raise CodecError("wrong_cluster", f"cluster {cluster_id!r}")
    if type(items) is not list:
        raise CodecError("malformed", "messages must be an array")
    msgs = []
    for item in items:
        if type(item) is not bytes:
            raise CodecError("malformed", "message must be bin")
        msgs.append(decode_message(item))
    if kind == PEER_FRAME:
        if type(sender) is not int or sender < 0:
            raise CodecError("malformed", "peer frame sender must be a node id")
        for m in msgs:
            if type(m) not in _PEER_TYPES:
                raise CodecError("malformed", f"{type(m).__name__} in a peer frame")
            if m.src != sender:
                raise CodecError("malformed", f"src {m.src} in a frame from {sender}")
        return sender, msgs
    if sender is not None:
        raise CodecError("malformed", "client frame with a sender")
    for m in msgs:
        if type(m) not in _CLIENT_TYPES:
            raise CodecError("malformed", f"{type(m).__name__} in a client frame")
    return None, msgs

