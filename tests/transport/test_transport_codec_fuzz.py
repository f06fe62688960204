"""Property tests: whatever bytes arrive, decoding returns a message or raises CodecError."""
from __future__ import annotations

import os

import msgpack  # test-only: to forge wire data
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from transport_helpers import CLUSTER, sample_messages

from josefine.chain.block import Block, BlockKind
from josefine.messages import AppendBlocks, AppendResp, PEER_MESSAGE_TYPES
from josefine.transport.codec import (
    TAGS,
    CodecError,
    decode_frame,
    decode_message,
    encode_client_frame,
    encode_frame,
    encode_message,
)
from josefine.types import BlockId

pytestmark = pytest.mark.timeout(60)

FUZZ = settings(max_examples=int(os.environ.get("JOSEFINE_FUZZ_EXAMPLES", "250")), deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

_SAMPLES = sample_messages()
_PEER = [m for m in _SAMPLES if type(m) in PEER_MESSAGE_TYPES]
_CLIENT = [m for m in _SAMPLES if type(m) not in PEER_MESSAGE_TYPES]
VALID_FRAMES = (
    [encode_frame(CLUSTER, m.src, [m]) for m in _PEER]
    + [encode_frame(CLUSTER, 1, [m for m in _PEER if m.src == 1])]
    + [encode_client_frame(CLUSTER, [m]) for m in _CLIENT]
)
VALID_MESSAGES = [encode_message(m) for m in _SAMPLES]


def decodes_or_codec_error(fn, data) -> None:
    try:
        fn(data)
    except CodecError as exc:
        assert exc.reason in {"malformed", "unknown_tag", "wrong_cluster", "oversized",
                              "bad_version"}


def decode_any_frame(data):
    return decode_frame(data, CLUSTER, 1 << 20)


@FUZZ
@given(st.binary(max_size=512))
def test_random_bytes(data):
    decodes_or_codec_error(decode_message, data)
    decodes_or_codec_error(decode_any_frame, data)


@st.composite
def mutated(draw, corpus):
    data = bytearray(draw(st.sampled_from(corpus)))
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.sampled_from(["flip", "truncate", "insert", "delete", "set"]))
        if not data:
            break
        i = draw(st.integers(0, len(data) - 1))
        if op == "flip":
            data[i] ^= 1 << draw(st.integers(0, 7))
        elif op == "truncate":
            del data[i:]
        elif op == "insert":
            data[i:i] = draw(st.binary(min_size=1, max_size=8))
        elif op == "delete":
            del data[i:i + draw(st.integers(1, 8))]
        else:
            data[i] = draw(st.sampled_from([0x00, 0x7F, 0x80, 0x90, 0xC0, 0xC1, 0xC2, 0xC3,
                                            0xC4, 0xCC, 0xD0, 0xD9, 0xDC, 0xDE, 0xFF]))
    return bytes(data)


@FUZZ
@given(mutated(VALID_FRAMES))
def test_mutated_frames(data):
    decodes_or_codec_error(decode_any_frame, data)


@FUZZ
@given(mutated(VALID_MESSAGES))
def test_mutated_messages(data):
    decodes_or_codec_error(decode_message, data)


# msgpack values of every kind, nested; used as field values of real tags, so that the
# validators (not just the unpacker) meet hostile shapes.
msgpack_values = st.recursive(
    st.none() | st.booleans() | st.integers(-2**63, 2**64 - 1) | st.floats(allow_nan=True)
    | st.text(max_size=8) | st.binary(max_size=40),
    lambda inner: st.lists(inner, max_size=8) | st.dictionaries(
        st.text(max_size=8) | st.integers(-5, 5), inner, max_size=5),
    max_leaves=25,
)
field_names = st.sampled_from(["src", "dst", "term", "head", "granted", "transfer", "prev",
                               "blocks", "commit", "seq", "success", "match", "rejected_prev",
                               "hint", "client_id", "command", "status", "result", "leader_hint",
                               "read_id", "query", "target", "op", "args", "ok", "error", "x"])


@settings(FUZZ, max_examples=max(1, FUZZ.max_examples // 3))
@given(st.sampled_from(sorted(TAGS) + [0, 10, 41, -1]),
       st.dictionaries(field_names, msgpack_values, max_size=8))
def test_hostile_field_values(tag, body):
    data = msgpack.packb([tag, body], use_bin_type=True)
    decodes_or_codec_error(decode_message, data)


@FUZZ
@given(msgpack_values)
def test_arbitrary_msgpack_documents(obj):
    data = msgpack.packb(obj, use_bin_type=True)
    decodes_or_codec_error(decode_message, data)
    decodes_or_codec_error(decode_any_frame, data)


# ------------------------------------------------------------- generated round trips

nat = st.integers(0, 2**64 - 1)
block_ids = st.builds(BlockId, nat, nat)


@st.composite
def blocks(draw):
    kind = draw(st.sampled_from(list(BlockKind)))
    payload, digest = draw(st.binary(max_size=64)), draw(st.binary(min_size=32, max_size=32))
    if draw(st.integers(0, 9)) == 0:  # genesis
        return Block(BlockId(0, 0), None, kind, payload, digest)
    term, height = draw(nat), draw(st.integers(1, 2**64 - 1))
    parent = BlockId(draw(st.integers(0, term)), height - 1)
    return Block(BlockId(term, height), parent, kind, payload, digest)


@settings(max_examples=200, deadline=None)
@given(st.builds(AppendBlocks, src=nat, dst=nat, term=nat, prev=block_ids,
                 blocks=st.lists(blocks(), max_size=20).map(tuple), commit=block_ids, seq=nat))
def test_generated_append_blocks_round_trip(msg):
    assert decode_message(encode_message(msg)) == msg


@settings(max_examples=200, deadline=None)
@given(st.builds(AppendResp, src=nat, dst=nat, term=nat, success=st.booleans(), seq=nat,
                 match=st.none() | block_ids, rejected_prev=st.none() | block_ids,
                 hint=st.lists(st.tuples(nat, nat), max_size=16).map(tuple),
                 commit=st.none() | block_ids))
def test_generated_append_resp_round_trip(msg):
    assert decode_message(encode_message(msg)) == msg


@FUZZ
@given(st.sampled_from(VALID_MESSAGES), st.data())
def test_one_field_of_a_valid_message_replaced(data, hyp):
    tag, body = msgpack.unpackb(data, strict_map_key=False)
    name = hyp.draw(st.sampled_from(sorted(body)))
    body[name] = hyp.draw(msgpack_values)
    forged = msgpack.packb([tag, body], use_bin_type=True)
    decodes_or_codec_error(decode_message, forged)


@FUZZ
@given(st.data())
def test_one_block_field_replaced(hyp):
    msg = next(m for m in _PEER if isinstance(m, AppendBlocks) and len(m.blocks) == 3)
    tag, body = msgpack.unpackb(encode_message(msg))
    row = body["blocks"][hyp.draw(st.integers(0, 2))]
    row[hyp.draw(st.integers(0, 6))] = hyp.draw(msgpack_values)
    decodes_or_codec_error(decode_message, msgpack.packb([tag, body], use_bin_type=True))
