"""The one msgpack codec: messages, blocks and frames (STYLE 3.4).

This is the only module in the project that imports msgpack; nothing here does I/O.

Wire layout (protocol version 1):

* A **message** is ``[tag, {field: value}]``. Tags come from the explicit table `TAGS`
  and never change once shipped; they are never derived from class order. Field maps
  (rather than positional arrays) let versions coexist: a decoder ignores fields it does
  not know and fills optional fields that are missing with their defaults.
* A **BlockId** is ``[term, height]``; a **Block** is
  ``[term, height, parent_term|nil, parent_height|nil, kind, payload, digest]``.
* A **frame** is ``[kind, version, cluster_id, sender, [message bytes, ...]]``: kind ``"p"``
  for a peer frame (sender = the sending node's id), ``"c"`` for a client frame (sender nil).
  A frame batches several encoded messages; each keeps its own ``[tag, {...}]`` encoding, so
  one encoded message can be placed into frames to several peers without re-encoding.

Decoding is the validation point: every field is type-checked (ints are ints, not bools;
bytes are bytes; ids are non-negative; digests are 32 bytes; Status values exist), and
every problem, whatever its cause, raises the single `CodecError`. Nothing else escapes
`decode_message` or `decode_frame` on any input.
"""
from __future__ import annotations

import dataclasses
import struct
import threading
from typing import Any, Callable, Iterable

import msgpack

from josefine.chain.block import Block, BlockKind
from josefine.messages import (
    PEER_MESSAGE_TYPES,
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
    Heartbeat,
    HeartbeatResp,
    PreVoteReq,
    PreVoteResp,
    Status,
    TimeoutNow,
    VoteReq,
    VoteResp,
)
from josefine.types import BlockId

__all__ = [
    "CLIENT_REQUEST_TYPES",
    "CLIENT_RESPONSE_TYPES",
    "CodecError",
    "DEFAULT_MAX_FRAME_BYTES",
    "PROTOCOL_VERSION",
    "REASONS",
    "TAGS",
    "decode_block",
    "decode_frame",
    "decode_message",
    "encode_block",
    "encode_client_frame",
    "encode_frame",
    "encode_message",
    "encode_propose_reply",
    "FRAME_ITEM_OVERHEAD",
    "frame_overhead",
    "packb",
    "unpackb",
]

PROTOCOL_VERSION = 1
DEFAULT_MAX_FRAME_BYTES = 16 * 1024 * 1024
DIGEST_BYTES = 32

PEER_FRAME = "p"
CLIENT_FRAME = "c"

REASONS = frozenset({"malformed", "unknown_tag", "wrong_cluster", "oversized", "bad_version"})
"""Every value `CodecError.reason` can take."""


class CodecError(ValueError):
    """Bytes that are not a valid message or frame, or a value that cannot be encoded.

    Attributes:
        reason: one of `REASONS`, for counting dropped input by cause.
    """

    def __init__(self, reason: str, detail: str = "") -> None:
        assert reason in REASONS, reason
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason


# ------------------------------------------------------------------------ plain helpers


def packb(obj: Any) -> bytes:
    """Pack plain data (no message classes); for callers that need raw msgpack."""
    return msgpack.packb(obj, use_bin_type=True)


def unpackb(data: bytes) -> Any:
    """Inverse of `packb`; raises whatever msgpack raises (no validation)."""
    return msgpack.unpackb(data, raw=False, strict_map_key=False)


def _refuse_ext(code: int, data: bytes) -> Any:
    # Extension types (incl. msgpack timestamps) are never part of the protocol.
    raise CodecError("malformed", f"extension type {code}")


def _unpack(data: Any) -> Any:
    try:
        return msgpack.unpackb(data, raw=False, strict_map_key=False, ext_hook=_refuse_ext)
    except CodecError:
        raise
    except Exception as exc:  # NB: msgpack raises a zoo (ValueError, TypeError, StackError...)
        raise CodecError("malformed", f"msgpack: {type(exc).__name__}: {exc}") from None


# One Packer per thread: msgpack.packb builds (and allocates a buffer for) a new Packer on
# every call, which costs more than packing a small message. Packers are not thread-safe.
_local = threading.local()


def _pack(obj: Any) -> bytes:
    try:
        packer = _local.packer
    except AttributeError:
        packer = _local.packer = msgpack.Packer(use_bin_type=True)
    try:
        return packer.pack(obj)  # NB: on error the Packer discards its partial buffer
    except Exception as exc:
        raise CodecError("malformed", f"cannot encode: {type(exc).__name__}: {exc}") from None


# --------------------------------------------------------------------------- validators
#
# Each validator takes a decoded msgpack value and returns the Python value for the
# dataclass field, or raises CodecError. `type(v) is int` (not isinstance) keeps bools out.


def _bad(what: str, v: Any) -> CodecError:
    return CodecError("malformed", f"expected {what}, got {type(v).__name__}")


def _nat(v: Any) -> int:
    if type(v) is int and v >= 0:
        return v
    raise _bad("non-negative int", v)


def _bool(v: Any) -> bool:
    if type(v) is bool:
        return v
    raise _bad("bool", v)


def _bytes(v: Any) -> bytes:
    if type(v) is bytes:
        return v
    raise _bad("bytes", v)


def _str(v: Any) -> str:
    if type(v) is str:
        return v
    raise _bad("str", v)


def _dict(v: Any) -> dict:
    if type(v) is dict:
        return v
    raise _bad("map", v)


def _any(v: Any) -> Any:
    return v


def _block_id(v: Any) -> BlockId:
    if type(v) is list and len(v) == 2:
        t, h = v
        if type(t) is int and type(h) is int and t >= 0 and h >= 0:
            return BlockId(t, h)
    raise _bad("block id [term, height]", v)


_KINDS = {int(k): k for k in BlockKind}
_STATUSES = {int(s): s for s in Status}


def _status(v: Any) -> Status:
    if type(v) is int:
        s = _STATUSES.get(v)
        if s is not None:
            return s
    raise _bad("status", v)


def _block(v: Any) -> Block:
    if type(v) is not list or len(v) != 7:
        raise _bad("block row of 7", v)
    t, h, pt, ph, kind, payload, digest = v
    if not (type(t) is int and type(h) is int and t >= 0 and h >= 0):
        raise _bad("block id", v)
    if pt is None and ph is None:
        if t or h:
            raise CodecError("malformed", f"block ({t},{h}) has no parent but is not genesis")
        parent = None
    elif type(pt) is int and type(ph) is int and 0 <= pt <= t and ph == h - 1:
        parent = BlockId(pt, ph)
    else:
        # A child's height is its parent's + 1, and terms never decrease along a chain.
        raise CodecError("malformed", f"block ({t},{h}) cannot have parent ({pt},{ph})")
    k = _KINDS.get(kind) if type(kind) is int else None
    if k is None:
        raise _bad("block kind", kind)
    if type(payload) is not bytes:
        raise _bad("payload bytes", payload)
    if type(digest) is not bytes or len(digest) != DIGEST_BYTES:
        raise CodecError("malformed", "block digest must be 32 bytes")
    return Block(BlockId(t, h), parent, k, payload, digest)


def _blocks(v: Any) -> tuple[Block, ...]:
    if type(v) is not list:
        raise _bad("block list", v)
    return tuple([_block(b) for b in v])


def _hint(v: Any) -> tuple[tuple[int, int], ...]:
    if type(v) is not list:
        raise _bad("hint list", v)
    out = []
    for pair in v:
        if type(pair) is not list or len(pair) != 2:
            raise _bad("hint pair", pair)
        out.append((_nat(pair[0]), _nat(pair[1])))
    return tuple(out)


def _opt(f: Callable[[Any], Any]) -> Callable[[Any], Any]:
    def check(v: Any) -> Any:
        return None if v is None else f(v)

    return check


_opt_nat = _opt(_nat)
_opt_block_id = _opt(_block_id)


# ------------------------------------------------------------------------- block rows


def _block_row(b: Block) -> list:
    i, p = b.id, b.parent
    return [i[0], i[1], None if p is None else p[0], None if p is None else p[1],
            int(b.kind), b.payload, b.digest]


# Encoded rows of recently sent blocks, so that one AppendBlocks run sent to several
# followers (and re-sent on retries) packs each block once. Keyed by id(block); the entry
# keeps the block alive, so the id cannot be reused while the entry exists. Dict
# operations are atomic under the GIL, so callers on any thread may share it (the byte
# count may drift under races; it is only a bound, reset with the cache).
_ROW_CACHE: dict[int, tuple[Block, bytes]] = {}
_ROW_CACHE_MAX = 4096
_ROW_CACHE_MAX_BYTES = 4 * 1024 * 1024
"""Bytes of cached rows. Each entry also keeps its Block (about as big) alive, so the cache
costs about twice this: at 16 MiB it held 28 MiB on a loaded leader (tracemalloc), while
one replication window is far smaller."""
_ROW_CACHE_MAX_ROW = 64 * 1024  # packing a big payload is a memcpy: not worth holding
_row_cache_bytes = 0


def _packed_row(b: Block) -> bytes:
    global _row_cache_bytes
    hit = _ROW_CACHE.get(id(b))
    if hit is not None and hit[0] is b:
        return hit[1]
    if type(b) is not Block:
        raise CodecError("malformed", f"expected Block, got {type(b).__name__}")
    row = _pack(_block_row(b))
    n = len(row)
    if n > _ROW_CACHE_MAX_ROW:
        return row
    if len(_ROW_CACHE) >= _ROW_CACHE_MAX or _row_cache_bytes + n > _ROW_CACHE_MAX_BYTES:
        _ROW_CACHE.clear()  # crude, but the working set is one replication window
        _row_cache_bytes = 0
    _ROW_CACHE[id(b)] = (b, row)
    _row_cache_bytes += n
    return row


def _array_header(n: int) -> bytes:
    if n < 16:
        return bytes((0x90 | n,))
    if n < 0x10000:
        return b"\xdc" + struct.pack(">H", n)
    return b"\xdd" + struct.pack(">I", n)


def encode_block(block: Block) -> bytes:
    """Encode one block as its row (for storage through the same codec)."""
    return _packed_row(block)


def decode_block(data: bytes) -> Block:
    """Inverse of `encode_block`; raises CodecError."""
    return _block(_unpack(data))


# ---------------------------------------------------------------------------- the table

TAGS: dict[int, type] = {
    # peer messages
    1: PreVoteReq,
    2: PreVoteResp,
    3: VoteReq,
    4: VoteResp,
    5: AppendBlocks,
    6: AppendResp,
    7: Heartbeat,
    8: HeartbeatResp,
    9: TimeoutNow,
    # client messages
    32: ClientPropose,
    33: ClientProposeResp,
    34: ClientRead,
    35: ClientReadResp,
    36: ClientStatus,
    37: ClientStatusResp,
    38: ClientTransfer,
    39: ClientAdmin,
    40: ClientAdminResp,
}
"""Stable wire tags. Never renumber or reuse a tag; add new ones."""

_PEER_FIELDS = {"src": _nat, "dst": _nat, "term": _nat}

_FIELDS: dict[type, dict[str, Callable[[Any], Any]]] = {
    PreVoteReq: {**_PEER_FIELDS, "head": _block_id},
    PreVoteResp: {**_PEER_FIELDS, "granted": _bool},
    VoteReq: {**_PEER_FIELDS, "head": _block_id, "transfer": _bool},
    VoteResp: {**_PEER_FIELDS, "granted": _bool},
    AppendBlocks: {**_PEER_FIELDS, "prev": _block_id, "commit": _block_id, "seq": _nat,
                   "blocks": _blocks},  # NB: blocks last: the fast encoder relies on it
    AppendResp: {**_PEER_FIELDS, "success": _bool, "seq": _nat, "match": _opt_block_id,
                 "rejected_prev": _opt_block_id, "hint": _hint, "commit": _opt_block_id},
    Heartbeat: {**_PEER_FIELDS, "commit": _opt_block_id, "seq": _nat},
    HeartbeatResp: {**_PEER_FIELDS, "seq": _nat},
    TimeoutNow: dict(_PEER_FIELDS),
    ClientPropose: {"client_id": _str, "seq": _nat, "command": _bytes},
    ClientProposeResp: {"client_id": _str, "seq": _nat, "status": _status, "result": _any,
                        "leader_hint": _opt_nat},
    ClientRead: {"client_id": _str, "read_id": _nat, "query": _bytes},
    ClientReadResp: {"client_id": _str, "read_id": _nat, "status": _status, "result": _any,
                     "leader_hint": _opt_nat},
    ClientStatus: {"client_id": _str, "read_id": _nat},
    ClientStatusResp: {"client_id": _str, "read_id": _nat, "status": _dict},
    ClientTransfer: {"client_id": _str, "read_id": _nat, "target": _nat},
    ClientAdmin: {"client_id": _str, "read_id": _nat, "op": _str, "args": _dict},
    ClientAdminResp: {"client_id": _str, "read_id": _nat, "ok": _bool, "result": _any,
                      "error": _str},
}
"""Field name -> validator, per message class. Field names are part of the wire format."""

CLIENT_REQUEST_TYPES: tuple[type, ...] = (ClientPropose, ClientRead, ClientStatus,
                                          ClientTransfer, ClientAdmin)
CLIENT_RESPONSE_TYPES: tuple[type, ...] = (ClientProposeResp, ClientReadResp, ClientStatusResp,
                                           ClientAdminResp)


class _Spec:
    __slots__ = ("tag", "cls", "names", "fields", "required")

    def __init__(self, tag: int, cls: type) -> None:
        self.tag = tag
        self.cls = cls
        self.fields = tuple(_FIELDS[cls].items())
        self.names = tuple(name for name, _ in self.fields)
        self.required = frozenset(
            f.name for f in dataclasses.fields(cls)
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING)


_BY_TAG: dict[int, _Spec] = {tag: _Spec(tag, cls) for tag, cls in TAGS.items()}
_BY_TYPE: dict[type, _Spec] = {spec.cls: spec for spec in _BY_TAG.values()}
_PEER_TYPES = frozenset(PEER_MESSAGE_TYPES)
_CLIENT_TYPES = frozenset(CLIENT_REQUEST_TYPES + CLIENT_RESPONSE_TYPES)
_APPEND_TAG = _BY_TYPE[AppendBlocks].tag
_PROPOSE_TAG = _BY_TYPE[ClientPropose].tag
_PROPOSE_RESP_TAG = _BY_TYPE[ClientProposeResp].tag
assert _BY_TYPE[ClientProposeResp].names == (
    "client_id", "seq", "status", "result", "leader_hint"), "update the unrolled encoder"


# ----------------------------------------------------------------------------- messages


def _encode_append(msg: AppendBlocks) -> bytes:
    # Pack the scalar fields with a nil placeholder for "blocks" (the last key, so the
    # packed nil is the last byte), then splice in the cached rows under an array header.
    head = _pack([_APPEND_TAG, {"src": msg.src, "dst": msg.dst, "term": msg.term,
                                "prev": msg.prev, "commit": msg.commit, "seq": msg.seq,
                                "blocks": None}])
    blocks = msg.blocks
    return b"".join([head[:-1], _array_header(len(blocks)), *[_packed_row(b) for b in blocks]])


def encode_message(msg: Any) -> bytes:
    """Encode one message as ``[tag, {field: value}]``.

    Encoding trusts the field types (decoding is the validation point).

    Raises:
        CodecError: `msg` is not a wire message, or a value cannot be packed.
    """
    cls = type(msg)
    if cls is AppendBlocks:
        return _encode_append(msg)
    if cls is ClientProposeResp:
        return encode_propose_reply(msg.client_id, msg.seq, msg.status, msg.result,
                                    msg.leader_hint)
    spec = _BY_TYPE.get(cls)
    if spec is None:
        raise CodecError("malformed", f"not a wire message: {cls.__name__}")
    return _pack([spec.tag, {name: getattr(msg, name) for name in spec.names}])


def encode_propose_reply(client_id: str, seq: int, status: Status, result: Any,
                         leader_hint: int | None) -> bytes:
    """`encode_message(ClientProposeResp(...))` without building the message: the hottest
    reply, sent once per write."""
    return _pack([_PROPOSE_RESP_TAG, {"client_id": client_id, "seq": seq, "status": status,
                                      "result": result, "leader_hint": leader_hint}])


def _decode_obj(obj: Any) -> Any:
    if type(obj) is not list or len(obj) < 2:
        raise CodecError("malformed", "message must be [tag, fields]")
    tag, body = obj[0], obj[1]
    if type(tag) is not int:
        raise CodecError("malformed", "tag must be an int")
    spec = _BY_TAG.get(tag)
    if spec is None:
        raise CodecError("unknown_tag", f"tag {tag}")
    if type(body) is not dict:
        raise CodecError("malformed", "fields must be a map")
    if tag == _PROPOSE_TAG:   # the hot request: checked inline, same rules as below
        cid, seq, cmd = body.get("client_id"), body.get("seq"), body.get("command")
        if type(cid) is str and type(seq) is int and seq >= 0 and type(cmd) is bytes:
            return ClientPropose(client_id=cid, seq=seq, command=cmd)
    kwargs = {}
    for name, check in spec.fields:
        v = body.get(name, body)  # the body itself is the "missing" sentinel
        if v is body:
            if name in spec.required:
                raise CodecError("malformed", f"{spec.cls.__name__}.{name} missing")
            continue
        kwargs[name] = check(v)
    try:
        return spec.cls(**kwargs)
    except Exception as exc:  # a validator gap must still surface as CodecError
        raise CodecError("malformed", f"{spec.cls.__name__}: {exc}") from None


def decode_message(data: bytes) -> Any:
    """Decode and validate one message; unknown fields are ignored.

    Raises:
        CodecError: reason "unknown_tag" for a tag not in `TAGS`, else "malformed".
    """
    return _decode_obj(_unpack(data))


# ------------------------------------------------------------------------------- frames


def _encode_frame(kind: str, cluster_id: str, sender: int | None, msgs: Iterable[Any]) -> bytes:
    encoded = [m if type(m) is bytes else encode_message(m) for m in msgs]
    return _pack([kind, PROTOCOL_VERSION, cluster_id, sender, encoded])


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
                 max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES) -> tuple[int | None, list]:
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
    obj = _unpack(data)
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
        sender = _nat(sender)
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

