"""Blocks: the immutable unit of the chain (docs/protocol.md A.2).

A block's digest chains over its parent's digest, so equal id + equal digest implies
equal ancestry. The digest is a tripwire: a known id arriving with another digest means a
persistence bug or a double vote, never something to merge.

NORMAL payloads are batches of client commands in a small fixed binary layout (no msgpack:
the layout is part of what the digest covers, so it must never change with a library).
"""
from __future__ import annotations

import hashlib
import struct
from dataclasses import dataclass
from enum import IntEnum
from typing import Iterable

from josefine.types import GENESIS_ID, BlockId


class BlockKind(IntEnum):
    NORMAL = 0
    NOOP = 1
    CONFIG = 2


@dataclass(frozen=True, slots=True)
class Command:
    """One client command inside a NORMAL block; (client_id, seq) identify it for sessions."""

    client_id: str
    seq: int
    data: bytes


@dataclass(frozen=True, slots=True)
class Block:
    """An immutable chain block. `parent` is None only for genesis."""

    id: BlockId
    parent: BlockId | None
    kind: BlockKind
    payload: bytes
    digest: bytes

    @property
    def term(self) -> int:
        return self.id.term

    @property
    def height(self) -> int:
        return self.id.height


_HDR = struct.Struct(">QQBI")


def compute_digest(parent_digest: bytes, bid: BlockId, kind: int, payload: bytes) -> bytes:
    """sha256("CR1" | parent.digest | u64 term | u64 height | u8 kind | u32 len | payload)."""
    h = hashlib.sha256(b"CR1")
    h.update(parent_digest)
    h.update(_HDR.pack(bid.term, bid.height, int(kind), len(payload)))
    h.update(payload)
    return h.digest()


def genesis(cluster_id: str) -> Block:
    """The shared root block; its digest binds the chain to one cluster."""
    digest = hashlib.sha256(b"CR1-genesis" + cluster_id.encode()).digest()
    return Block(GENESIS_ID, None, BlockKind.NOOP, b"", digest)


def base_header(bid: BlockId, digest: bytes) -> Block:
    """The header a store keeps for a compacted snapshot base, in place of the block.

    Once a snapshot stands in for the chain up to its base, the base's payload and its own
    parent are history nobody may ask for again; what its children still need is the base's
    id (their `parent`) and its digest, which every child's digest chains over. So the header
    carries the real block's digest, no parent (there is nothing below it to point at, as
    for genesis) and an empty payload: `verify_digest(child, header.digest)` holds exactly
    when it held against the real block. Genesis is its own header.
    """
    return Block(bid, None, BlockKind.NOOP, b"", digest)


def make_block(parent: Block, term: int, kind: BlockKind, payload: bytes) -> Block:
    """Create the child of `parent` at `term` (only the leader of `term` calls this)."""
    bid = BlockId(term, parent.id.height + 1)
    return Block(bid, parent.id, kind, payload, compute_digest(parent.digest, bid, kind, payload))


def verify_digest(block: Block, parent_digest: bytes) -> bool:
    return compute_digest(parent_digest, block.id, block.kind, block.payload) == block.digest


_CMD = struct.Struct(">HQI")
_COUNT = struct.Struct(">I")


def encode_commands(commands: Iterable[Command]) -> bytes:
    """Pack a batch as u32 count, then per command u16 len|client_id|u64 seq|u32 len|data."""
    cmds = list(commands)
    parts = [_COUNT.pack(len(cmds))]
    for c in cmds:
        cid = c.client_id.encode()
        parts.append(_CMD.pack(len(cid), c.seq, len(c.data)))
        parts.append(cid)
        parts.append(c.data)
    return b"".join(parts)


def decode_commands(payload: bytes) -> list[Command]:
    """Inverse of encode_commands; raises ValueError on a malformed payload."""
    try:
        (n,) = _COUNT.unpack_from(payload, 0)
        off = _COUNT.size
        out = []
        for _ in range(n):
            lc, seq, ld = _CMD.unpack_from(payload, off)
            off += _CMD.size
            cid = payload[off:off + lc].decode()
            off += lc
            data = payload[off:off + ld]
            off += ld
            if len(data) != ld:
                raise ValueError("truncated command")
            out.append(Command(cid, seq, bytes(data)))
    except (struct.error, UnicodeDecodeError) as exc:
        raise ValueError(f"malformed command batch: {exc}") from exc
    if off != len(payload):
        raise ValueError("trailing bytes after command batch")
    return out
