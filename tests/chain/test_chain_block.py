"""Blocks: digest determinism, chaining, command batch encoding (docs/protocol.md A.2)."""
import hashlib
import struct

import pytest

from josefine.chain.block import (Block, BlockKind, Command, compute_digest, decode_commands,
                                  encode_commands, genesis, make_block, verify_digest)
from josefine.chain.store import decode_block, encode_block
from josefine.types import GENESIS_ID, BlockId

pytestmark = pytest.mark.timeout(60)


def test_genesis_is_per_cluster_and_deterministic():
    g1, g2, other = genesis("c1"), genesis("c1"), genesis("c2")
    assert g1 == g2
    assert g1.id == GENESIS_ID and g1.parent is None and g1.kind == BlockKind.NOOP
    assert g1.digest == hashlib.sha256(b"CR1-genesis" + b"c1").digest()
    assert g1.digest != other.digest


def test_digest_follows_the_spec_layout():
    g = genesis("c")
    b = make_block(g, 3, BlockKind.NORMAL, b"xyz")
    expected = hashlib.sha256(b"CR1" + g.digest + struct.pack(">QQBI", 3, 1, 0, 3) + b"xyz")
    assert b.digest == expected.digest()
    assert b.id == BlockId(3, 1) and b.parent == GENESIS_ID


def test_make_block_is_deterministic_and_chains():
    g = genesis("c")
    a1 = make_block(g, 1, BlockKind.NOOP, b"")
    a2 = make_block(genesis("c"), 1, BlockKind.NOOP, b"")
    assert a1 == a2
    b = make_block(a1, 2, BlockKind.NORMAL, b"p")
    assert b.id == BlockId(2, 2) and b.parent == a1.id
    assert verify_digest(b, a1.digest)
    # same id and payload on a different parent: different digest (digests chain)
    other_parent = make_block(g, 1, BlockKind.NORMAL, b"")
    b2 = make_block(other_parent, 2, BlockKind.NORMAL, b"p")
    assert b2.id == b.id and b2.digest != b.digest
    assert not verify_digest(b2, a1.digest)


@pytest.mark.parametrize("field,value", [("kind", BlockKind.CONFIG), ("payload", b"q"),
                                         ("id", BlockId(3, 2))])
def test_digest_covers_every_field(field, value):
    g = genesis("c")
    a = make_block(g, 1, BlockKind.NOOP, b"")
    b = make_block(a, 2, BlockKind.NORMAL, b"p")
    fields = {"id": b.id, "parent": b.parent, "kind": b.kind, "payload": b.payload,
              "digest": b.digest}
    fields[field] = value
    assert not verify_digest(Block(**fields), a.digest)


def test_compute_digest_changes_with_cluster():
    bid = BlockId(1, 1)
    assert compute_digest(genesis("a").digest, bid, 0, b"") != \
        compute_digest(genesis("b").digest, bid, 0, b"")


def test_commands_round_trip():
    cmds = [Command("client-1", 0, b""), Command("ü", 2**64 - 1, b"\x00" * 1000),
            Command("", 7, b"data")]
    assert decode_commands(encode_commands(cmds)) == cmds
    assert decode_commands(encode_commands([])) == []


@pytest.mark.parametrize("payload", [
    b"",
    b"\x00\x00",
    b"\x00\x00\x00\x01",                                     # count 1, no command
    encode_commands([Command("c", 1, b"abc")])[:-1],          # truncated data
    encode_commands([Command("c", 1, b"abc")]) + b"\x00",     # trailing byte
    struct.pack(">I", 1) + struct.pack(">HQI", 9, 1, 0) + b"ab",  # client id too short
    struct.pack(">I", 1) + struct.pack(">HQI", 2, 1, 0) + b"\xff\xfe",  # client id not UTF-8
])
def test_malformed_command_payload_raises_value_error(payload):
    with pytest.raises(ValueError):
        decode_commands(payload)


def test_block_record_round_trip():
    g = genesis("c")
    a = make_block(g, 1, BlockKind.NORMAL, encode_commands([Command("x", 1, b"y")]))
    b = make_block(a, 4, BlockKind.CONFIG, b"cfg")
    for blk in (g, a, b):
        back = decode_block(encode_block(blk))
        assert back == blk
        assert isinstance(back.kind, BlockKind) and isinstance(back.id, BlockId)


@pytest.mark.parametrize("data", [
    b"",
    b"\xc1",                                     # reserved msgpack byte
    encode_block(genesis("c"))[:-3],             # truncated
])
def test_decode_block_rejects_garbage(data):
    with pytest.raises(ValueError):
        decode_block(data)


def test_decode_block_rejects_wrong_shapes():
    from josefine.codec import packb
    d = b"\x00" * 32
    bad = [
        [1, 1, 0, 0, 0, b"", d, "extra"],
        [1, 1, 0, 0, 9, b"", d],          # unknown kind
        [1, 1, 0, 0, 0, "text", d],       # payload not bytes
        [1, 1, 0, 0, 0, b"", b"short"],   # digest length
        [1, 1, None, 0, 0, b"", d],       # half a parent
        [1, 1, None, None, 0, b"", d],    # parentless non-genesis
        [1, 3, 0, 1, 0, b"", d],          # parent height not height-1
        [1, 2, 2, 1, 0, b"", d],          # parent term above term
        [-1, 0, None, None, 0, b"", d],
        [True, 1, 0, 0, 0, b"", d],
    ]
    for rec in bad:
        with pytest.raises(ValueError):
            decode_block(packb(rec))


# Block records written by the store's own encoder before the codec moved to josefine/codec.py
# (made with genesis("golden") and a NORMAL block over a NOOP one). Existing data dirs hold
# exactly these bytes: they must keep decoding, and new records must keep being written so.
_GOLDEN_GENESIS = bytes.fromhex(
    "970000c0c001c400c4201465c2d7b2d5e99fe683216baf90d926a5730f05ad4ca2a111678e2a95f1d67b")
_GOLDEN_BLOCK = bytes.fromhex(
    "970302010100c4077061796c6f6164c42020ed8dbdc96b2ae1e9c6dbea63f7b4b6c815123474e0e83536fa"
    "ed19d690cf4b")


def test_block_records_of_existing_data_dirs_still_decode_and_encode_identically():
    g = genesis("golden")
    b = make_block(make_block(g, 1, BlockKind.NOOP, b""), 3, BlockKind.NORMAL, b"payload")
    assert decode_block(_GOLDEN_GENESIS) == g
    assert decode_block(_GOLDEN_BLOCK) == b
    assert encode_block(g) == _GOLDEN_GENESIS
    assert encode_block(b) == _GOLDEN_BLOCK


def test_store_and_wire_share_one_block_encoding():
    """The store writes blocks with the vocabulary codec's functions, not a copy of them."""
    from josefine import codec
    assert encode_block is codec.encode_block and decode_block is codec.decode_block
