"""The vocabulary codec: how messages, blocks and records become msgpack bytes and back.

This is the only module in the project that imports msgpack (STYLE 3.4). It knows the
vocabulary (`josefine.messages`, `josefine.chain.block`) and nothing about sockets or
frames: `josefine.transport.codec` wraps encoded messages in frames, and the chain store
and the state machines write their records with `packb` / `encode_block` from here. So
`chain/` and `fsm/` depend on this module, never on `transport/`. Nothing here does I/O.

Layouts (protocol version 1; every one of them is also an on-disk or on-wire format, so
none may change without a new version):

* A **message** is ``[tag, {field: value}]``. Tags come from the explicit table `TAGS`
  and never change once shipped; they are never derived from class order. The field map
  is derived from the message's dataclass (`wire_fields`): its field names, in declaration
  order, each checked on decode by a validator chosen from the field's declared type. A
  decoder ignores fields it does not know and fills missing optional ones with their
  defaults, so versions that add a field can coexist.
* A **BlockId** is ``[term, height]``.
* A **Block** is the row ``[term, height, parent_term|nil, parent_height|nil, kind,
  payload, digest]``. The same row is a block on the wire (inside AppendBlocks) and a block
  record in LevelDB (``b/…`` keys): one encoding, one decoder, one set of checks.
* A **stream record** (`write_record` / `read_record`) is a 4-byte big-endian length, then
  that many bytes of msgpack. Snapshots are sequences of them, so a large state is written
  and read one record at a time instead of as one object.

Decoding is the validation point: every field is type-checked (ints are non-negative ints,
not bools; bytes are bytes; digests are 32 bytes; enum values exist), and every problem,
whatever its cause, raises the single `CodecError` (a `ValueError`). Nothing else escapes
`decode_message` or `decode_block` on any input.
"""
from __future__ import annotations

import dataclasses
import struct
import threading
import types
import typing
from collections.abc import Callable
from typing import Any, BinaryIO, Union

import msgpack

from josefine.chain.block import Block, BlockKind
from josefine.messages import (
    WIRE_MESSAGE_TYPES,
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
    InstallSnapshotResp,
    SnapshotChunk,
    SnapshotChunkAck,
    VoteReq,
    VoteResp,
)
from josefine.types import BlockId

__all__ = [
    "DIGEST_BYTES",
    "MAX_RECORD_BYTES",
    "REASONS",
    "TAGS",
    "CodecError",
    "decode_block",
    "decode_message",
    "encode_block",
    "encode_message",
    "pack",
    "packb",
    "read_record",
    "tag_of",
    "unpack",
    "unpackb",
    "wire_fields",
    "write_record",
]

DIGEST_BYTES = 32

REASONS = frozenset({"malformed", "unknown_tag", "wrong_cluster", "oversized", "bad_version"})
"""Every value `CodecError.reason` can take (the last three are raised by frame decoding)."""


class CodecError(ValueError):
    """Bytes that are not a valid message, block or frame, or a value that cannot be encoded.

    Attributes:
        reason: one of `REASONS`, for counting dropped input by cause.
    """

    def __init__(self, reason: str, detail: str = "") -> None:
        assert reason in REASONS, reason
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason


# ------------------------------------------------------------------------ plain helpers


def packb(obj: Any) -> bytes:
    """Pack plain data (no message classes): records on disk, state machine commands.

    Raises whatever msgpack raises for a value it cannot pack (callers such as the session
    table catch that and fall back), unlike `pack`.
    """
    data: bytes = msgpack.packb(obj, use_bin_type=True)
    return data


def unpackb(data: bytes) -> Any:
    """Inverse of `packb`; raises whatever msgpack raises (no validation)."""
    return msgpack.unpackb(data, raw=False, strict_map_key=False)


def _refuse_ext(code: int, data: bytes) -> Any:
    # Extension types (incl. msgpack timestamps) are never part of the protocol.
    raise CodecError("malformed", f"extension type {code}")


def unpack(data: Any) -> Any:
    """Unpack untrusted bytes into plain data; any failure is a `CodecError("malformed")`."""
    try:
        return msgpack.unpackb(data, raw=False, strict_map_key=False, ext_hook=_refuse_ext)
    except CodecError:
        raise
    except Exception as exc:  # NB: msgpack raises a zoo (ValueError, TypeError, StackError...)
        raise CodecError("malformed", f"msgpack: {type(exc).__name__}: {exc}") from None


# One Packer per thread: msgpack.packb builds (and allocates a buffer for) a new Packer on
# every call, which costs more than packing a small message. Packers are not thread-safe.
_local = threading.local()


def pack(obj: Any) -> bytes:
    """Pack plain data on this thread's reusable Packer; failures raise `CodecError`."""
    try:
        packer = _local.packer
    except AttributeError:
        packer = _local.packer = msgpack.Packer(use_bin_type=True)
    try:
        data: bytes = packer.pack(obj)  # NB: on error the Packer discards its partial buffer
        return data
    except Exception as exc:
        raise CodecError("malformed", f"cannot encode: {type(exc).__name__}: {exc}") from None


# ------------------------------------------------------------------------ stream records

MAX_RECORD_BYTES = 256 * 1024 * 1024
"""Largest stream record `read_record` accepts by default: far above any frame (16 MiB by
default), so any value a command can carry fits, while a corrupt length prefix is refused
before anything is read."""

_RECORD_LEN = struct.Struct(">I")
_READ_CHUNK = 1024 * 1024


def write_record(out: BinaryIO, obj: Any) -> int:
    """Write `obj` as one length-prefixed record; return the number of bytes written.

    Raises:
        CodecError: `obj` cannot be packed, or packs to more than `MAX_RECORD_BYTES`
            (nothing is written then).
    """
    data = pack(obj)
    n = len(data)
    if n > MAX_RECORD_BYTES:
        raise CodecError("oversized", f"record of {n} > {MAX_RECORD_BYTES} bytes")
    out.write(_RECORD_LEN.pack(n))
    out.write(data)
    return _RECORD_LEN.size + n


def _read_exact(inp: BinaryIO, n: int) -> bytes:
    # Read in bounded chunks, so a length prefix that promises more than the stream holds
    # costs what the stream holds, not what the prefix claims.
    first = inp.read(min(n, _READ_CHUNK)) or b""
    if len(first) == n:
        return first
    parts, got = [first], len(first)
    while got < n:
        chunk = inp.read(min(n - got, _READ_CHUNK))
        if not chunk:
            raise CodecError("malformed", f"stream ends after {got} of {n} bytes")
        parts.append(chunk)
        got += len(chunk)
    return b"".join(parts)


def read_record(inp: BinaryIO, max_bytes: int = MAX_RECORD_BYTES) -> Any:
    """Read one record written by `write_record` and return its plain data.

    Reads exactly the record's bytes, so records of several writers can follow each other
    in one stream. The content is unpacked but not validated: that is the caller's job.

    Raises:
        CodecError: the stream ends inside the record or the body is not msgpack
            ("malformed"), or the length exceeds `max_bytes` ("oversized").
    """
    (n,) = _RECORD_LEN.unpack(_read_exact(inp, _RECORD_LEN.size))
    if n > max_bytes:
        raise CodecError("oversized", f"record of {n} > {max_bytes} bytes")
    return unpack(_read_exact(inp, n))


# --------------------------------------------------------------------------- validators
#
# Each validator takes a decoded msgpack value and returns the Python value for the
# dataclass field, or raises CodecError. `type(v) is int` (not isinstance) keeps bools out.

Validator = Callable[[Any], Any]


def _bad(what: str, v: Any) -> CodecError:
    return CodecError("malformed", f"expected {what}, got {type(v).__name__}")


def _nat(v: Any) -> int:
    # Every int of the vocabulary is a node id, term, height, count or sequence number.
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


def _dict(v: Any) -> dict[Any, Any]:
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
    parent: BlockId | None
    if pt is None and ph is None:
        if t or h:
            raise CodecError("malformed", f"block ({t},{h}) has no parent but is not genesis")
        parent = None
    elif type(pt) is int and type(ph) is int and 0 <= pt <= t and 0 <= ph == h - 1:
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
        raise CodecError("malformed", f"block digest must be {DIGEST_BYTES} bytes")
    return Block(BlockId(t, h), parent, k, payload, digest)


def _optional(f: Validator) -> Validator:
    def check(v: Any) -> Any:
        return None if v is None else f(v)

    return check


def _tuple_of(f: Validator) -> Validator:
    # A Python tuple[X, ...] travels as a msgpack array and comes back as a tuple again.
    def check(v: Any) -> tuple[Any, ...]:
        if type(v) is not list:
            raise _bad("array", v)
        return tuple([f(x) for x in v])

    return check


def _fixed(fs: tuple[Validator, ...]) -> Validator:
    # A fixed-size tuple[X, Y] travels as a msgpack array of that size.
    def check(v: Any) -> tuple[Any, ...]:
        if type(v) is not list or len(v) != len(fs):
            raise _bad(f"array of {len(fs)}", v)
        return tuple([f(x) for f, x in zip(fs, v, strict=True)])

    return check


_BY_ANNOTATION: dict[Any, Validator] = {
    int: _nat, bool: _bool, bytes: _bytes, str: _str, Any: _any, dict: _dict,
    BlockId: _block_id, Block: _block, Status: _status,
}


def _validator(tp: Any) -> Validator:
    """The decode check for a field declared with type `tp` (refuses types it cannot check).

    Deriving the check from the declaration is what keeps the wire format and the dataclass
    from drifting apart: a new field gets a check, and a type nobody taught the codec
    stops the import instead of travelling unchecked.
    """
    found = _BY_ANNOTATION.get(tp)
    if found is not None:
        return found
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is dict:
        return _dict
    if origin in (Union, types.UnionType) and len(args) == 2 and type(None) in args:
        (inner,) = [a for a in args if a is not type(None)]
        return _optional(_validator(inner))
    if origin is tuple and len(args) == 2 and args[1] is Ellipsis:
        return _tuple_of(_validator(args[0]))
    if origin is tuple and args and Ellipsis not in args:
        return _fixed(tuple(_validator(a) for a in args))
    raise TypeError(f"the codec cannot check a field of type {tp!r}")


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
    10: InstallSnapshotResp,
    11: SnapshotChunk,
    12: SnapshotChunkAck,
    13: ReadIndexReq,
    14: ReadIndexResp,
    15: ForwardPropose,
    16: ForwardProposeResp,
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

if set(TAGS.values()) != set(WIRE_MESSAGE_TYPES) or len(TAGS) != len(WIRE_MESSAGE_TYPES):
    raise ImportError("codec TAGS and messages.WIRE_MESSAGE_TYPES disagree")


class _Spec:
    """What the codec knows about one message class, derived once from its dataclass."""

    __slots__ = ("cls", "fields", "names", "required", "tag")

    def __init__(self, tag: int, cls: type) -> None:
        hints = typing.get_type_hints(cls)
        dc_fields = dataclasses.fields(cls)
        self.tag = tag
        self.cls = cls
        self.fields: tuple[tuple[str, Validator], ...] = tuple(
            (f.name, _validator(hints[f.name])) for f in dc_fields)
        self.names: tuple[str, ...] = tuple(f.name for f in dc_fields)
        self.required = frozenset(
            f.name for f in dc_fields
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING)


_BY_TAG: dict[int, _Spec] = {tag: _Spec(tag, cls) for tag, cls in TAGS.items()}
_BY_TYPE: dict[type, _Spec] = {spec.cls: spec for spec in _BY_TAG.values()}


def wire_fields(cls: type) -> tuple[str, ...]:
    """The field names `cls` travels with, in order (its dataclass fields); KeyError if it
    is not a wire message."""
    return _BY_TYPE[cls].names


def tag_of(cls: type) -> int:
    """The stable tag of wire message class `cls`; KeyError if it is not one."""
    return _BY_TYPE[cls].tag


# ------------------------------------------------------------------------- block rows


def _block_row(b: Block) -> list[Any]:
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


def _checked_row(b: Block) -> bytes:
    if type(b) is not Block:
        raise CodecError("malformed", f"expected Block, got {type(b).__name__}")
    return pack(_block_row(b))


def _sent_row(b: Block) -> bytes:
    """The row of a block about to be sent, from (and into) the row cache."""
    global _row_cache_bytes
    hit = _ROW_CACHE.get(id(b))
    if hit is not None and hit[0] is b:
        return hit[1]
    row = _checked_row(b)
    n = len(row)
    if n > _ROW_CACHE_MAX_ROW:
        return row
    if len(_ROW_CACHE) >= _ROW_CACHE_MAX or _row_cache_bytes + n > _ROW_CACHE_MAX_BYTES:
        _ROW_CACHE.clear()  # crude, but the working set is one replication window
        _row_cache_bytes = 0
    _ROW_CACHE[id(b)] = (b, row)
    _row_cache_bytes += n
    return row


def encode_block(block: Block) -> bytes:
    """Encode one block as its row: the block record the chain store writes.

    Reuses a row already packed for sending, but never adds to the row cache: a follower
    stores every block it receives and sends almost none, so caching its stored rows would
    only hold memory.

    Raises:
        CodecError: `block` is not a Block, or a field cannot be packed.
    """
    hit = _ROW_CACHE.get(id(block))
    if hit is not None and hit[0] is block:
        return hit[1]
    return _checked_row(block)


def decode_block(data: bytes) -> Block:
    """Inverse of `encode_block` (also reads block records written before this module).

    Raises:
        CodecError: `data` is not a well-formed block row (reason "malformed").
    """
    return _block(unpack(data))


def _array_header(n: int) -> bytes:
    if n < 16:
        return bytes((0x90 | n,))
    if n < 0x10000:
        return b"\xdc" + struct.pack(">H", n)
    return b"\xdd" + struct.pack(">I", n)


# ----------------------------------------------------------------------------- messages

_APPEND_TAG = tag_of(AppendBlocks)
_APPEND_HEAD_FIELDS = ("src", "dst", "term", "prev", "commit", "seq")
if set(_APPEND_HEAD_FIELDS) | {"blocks"} != set(wire_fields(AppendBlocks)):
    raise ImportError("update _encode_append: AppendBlocks fields changed")


def _encode_append(msg: AppendBlocks) -> bytes:
    # Pack the scalar fields with a nil placeholder for "blocks" (the last key here, so the
    # packed nil is the last byte), then splice in the cached rows under an array header.
    # The field map is a map: its key order is free, decoders look keys up by name.
    head = pack([_APPEND_TAG, {"src": msg.src, "dst": msg.dst, "term": msg.term,
                               "prev": msg.prev, "commit": msg.commit, "seq": msg.seq,
                               "blocks": None}])
    blocks = msg.blocks
    return b"".join([head[:-1], _array_header(len(blocks)), *[_sent_row(b) for b in blocks]])


def encode_message(msg: Any) -> bytes:
    """Encode one message as ``[tag, {field: value}]``.

    Encoding trusts the field types (decoding is the validation point).

    Raises:
        CodecError: `msg` is not a wire message, or a value cannot be packed.
    """
    cls = type(msg)
    if cls is AppendBlocks:
        return _encode_append(msg)
    spec = _BY_TYPE.get(cls)
    if spec is None:
        raise CodecError("malformed", f"not a wire message: {cls.__name__}")
    return pack([spec.tag, {name: getattr(msg, name) for name in spec.names}])


_PROPOSE_TAG = tag_of(ClientPropose)
if wire_fields(ClientPropose) != ("client_id", "seq", "command", "any_node"):
    raise ImportError("update the ClientPropose fast path in decode_obj")


def decode_obj(obj: Any) -> Any:
    """Build and validate one message from its unpacked ``[tag, {field: value}]`` form.

    Raises:
        CodecError: reason "unknown_tag" for a tag not in `TAGS`, else "malformed".
    """
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
        anyn = body.get("any_node", False)
        if type(cid) is str and type(seq) is int and seq >= 0 and type(cmd) is bytes \
                and type(anyn) is bool:
            return ClientPropose(client_id=cid, seq=seq, command=cmd, any_node=anyn)
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
    return decode_obj(unpack(data))
