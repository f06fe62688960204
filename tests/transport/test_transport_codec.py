"""Codec: stable tags, round trips of every message, field validation, frames."""
from __future__ import annotations

import dataclasses

import msgpack  # test-only: to forge wire data the codec itself would never write
import pytest
from transport_helpers import CLUSTER, chain_of, sample_messages

from josefine import codec as vocab
from josefine import messages
from josefine.chain.block import Block, BlockKind, genesis
from josefine.messages import (
    AppendBlocks,
    AppendResp,
    ClientPropose,
    ClientProposeResp,
    ClientStatus,
    Heartbeat,
    Status,
    VoteReq,
)
from josefine.transport import codec
from josefine.transport.codec import (
    PROTOCOL_VERSION,
    TAGS,
    CodecError,
    decode_block,
    decode_frame,
    decode_message,
    encode_block,
    encode_client_frame,
    encode_frame,
    encode_message,
)
from josefine.types import BlockId

pytestmark = pytest.mark.timeout(60)


def raw(obj) -> bytes:
    return msgpack.packb(obj, use_bin_type=True)


def reason(data: bytes, frame: bool = False) -> str:
    with pytest.raises(CodecError) as info:
        if frame:
            decode_frame(data, CLUSTER, 1 << 20)
        else:
            decode_message(data)
    assert info.value.reason in codec.REASONS
    return info.value.reason


# ------------------------------------------------------------------------------ the table


def test_tags_are_the_published_ones():
    expected = {1: "PreVoteReq", 2: "PreVoteResp", 3: "VoteReq", 4: "VoteResp",
                5: "AppendBlocks", 6: "AppendResp", 7: "Heartbeat", 8: "HeartbeatResp",
                9: "TimeoutNow", 10: "InstallSnapshotResp", 11: "SnapshotChunk",
                12: "SnapshotChunkAck", 13: "ReadIndexReq", 14: "ReadIndexResp",
                15: "ForwardPropose", 16: "ForwardProposeResp", 32: "ClientPropose", 33: "ClientProposeResp", 34: "ClientRead",
                35: "ClientReadResp", 36: "ClientStatus", 37: "ClientStatusResp",
                38: "ClientTransfer", 39: "ClientAdmin", 40: "ClientAdminResp"}
    assert {tag: cls.__name__ for tag, cls in TAGS.items()} == expected


# ---------------------------------------------------------------------------- round trips


@pytest.mark.parametrize("msg", sample_messages(), ids=lambda m: type(m).__name__)
def test_round_trip(msg):
    back = decode_message(encode_message(msg))
    assert back == msg
    assert type(back) is type(msg)
    for f in dataclasses.fields(msg):
        v = getattr(back, f.name)
        if isinstance(getattr(msg, f.name), BlockId):
            assert type(v) is BlockId
        if f.name == "status" and isinstance(v, Status):
            assert type(v) is Status
    if isinstance(back, AppendBlocks):
        assert type(back.blocks) is tuple
        for b in back.blocks:
            assert type(b.id) is BlockId and type(b.kind) is BlockKind
    if isinstance(back, AppendResp):
        assert type(back.hint) is tuple and all(type(p) is tuple for p in back.hint)


def test_wire_shape_is_tag_and_field_map():
    msg = Heartbeat(src=1, dst=2, term=3, commit=BlockId(3, 4), seq=5)
    assert msgpack.unpackb(encode_message(msg)) == [
        7, {"src": 1, "dst": 2, "term": 3, "commit": [3, 4], "seq": 5}]
    g, blocks = chain_of(1)
    ab = AppendBlocks(src=1, dst=2, term=3, prev=g.id, blocks=blocks, commit=g.id, seq=1)
    tag, body = msgpack.unpackb(encode_message(ab))
    b = blocks[0]
    assert tag == 5
    assert body["blocks"] == [[3, 1, 0, 0, 0, b.payload, b.digest]]
    assert msgpack.unpackb(encode_block(g)) == [0, 0, None, None, 1, b"", g.digest]


def test_blocks_encode_identically_across_followers_and_after_id_reuse():
    g, blocks = chain_of(16)
    a = encode_message(AppendBlocks(src=1, dst=2, term=3, prev=g.id, blocks=blocks, commit=g.id,
                                    seq=1))
    b = encode_message(AppendBlocks(src=1, dst=3, term=3, prev=g.id, blocks=blocks, commit=g.id,
                                    seq=1))
    assert a != b and decode_message(b).blocks == blocks
    for i in range(200):  # throwaway blocks: ids get reused; the cache must not confuse them
        _, bs = chain_of(2, term=i + 1, payload=bytes([i]))
        m = AppendBlocks(src=1, dst=2, term=i + 1, prev=g.id, blocks=bs, commit=g.id, seq=i)
        assert decode_message(encode_message(m)) == m


def test_row_cache_is_bounded():
    g, big = chain_of(3, payload=b"x" * 100_000)  # too big to be worth caching
    _, small = chain_of(3)

    def send(bs):
        m = AppendBlocks(src=1, dst=2, term=3, prev=g.id, blocks=bs, commit=g.id, seq=1)
        assert decode_message(encode_message(m)).blocks == bs

    vocab._ROW_CACHE.clear()
    send((*big, *small))
    assert set(vocab._ROW_CACHE) == {id(b) for b in small}
    for i in range(vocab._ROW_CACHE_MAX + 10):
        _, bs = chain_of(1, term=i + 1)
        send(bs)
    assert len(vocab._ROW_CACHE) <= vocab._ROW_CACHE_MAX
    assert vocab._row_cache_bytes <= vocab._ROW_CACHE_MAX_BYTES


def test_stored_blocks_reuse_sent_rows_but_do_not_fill_the_cache():
    """A follower stores every block it receives and sends none: storing must not make the
    row cache hold them. A leader's stored row is the one it already packed for sending."""
    g, blocks = chain_of(2)
    vocab._ROW_CACHE.clear()
    for b in blocks:
        assert decode_block(encode_block(b)) == b
    assert vocab._ROW_CACHE == {}
    encode_message(AppendBlocks(src=1, dst=2, term=3, prev=g.id, blocks=blocks, commit=g.id,
                                seq=1))
    assert encode_block(blocks[0]) is vocab._ROW_CACHE[id(blocks[0])][1]


def test_block_codec_round_trip():
    g, blocks = chain_of(2)
    for b in (g, *blocks):
        assert decode_block(encode_block(b)) == b
    with pytest.raises(CodecError):
        decode_block(b"\x90")


def test_unknown_fields_are_ignored_and_missing_optional_ones_defaulted():
    data = raw([36, {"client_id": "c", "future_field": [1, 2], 7: "x"}])
    assert decode_message(data) == ClientStatus(client_id="c", read_id=0)
    data = raw([6, {"src": 2, "dst": 1, "term": 3, "success": True}, "extra element"])
    assert decode_message(data) == AppendResp(src=2, dst=1, term=3, success=True)


def test_unknown_tag():
    assert reason(raw([99, {}])) == "unknown_tag"
    assert reason(raw([31, {"src": 1}])) == "unknown_tag"


@pytest.mark.parametrize("obj", [
    None, 5, "x", [], [1], {"a": 1}, ["1", {}], [True, {}], [1.0, {}], [1, []], [1, None],
    [3, {"src": 1, "dst": 2, "term": 3}],                                   # head missing
    [3, {"src": 1, "dst": 2, "term": True, "head": [1, 1]}],               # bool as int
    [3, {"src": 1, "dst": 2, "term": -1, "head": [1, 1]}],                 # negative
    [3, {"src": 1, "dst": 2, "term": 1.0, "head": [1, 1]}],                # float as int
    [3, {"src": 1, "dst": 2, "term": 1, "head": [1, -1]}],                 # negative height
    [3, {"src": 1, "dst": 2, "term": 1, "head": [1, 1, 1]}],               # id of 3
    [3, {"src": 1, "dst": 2, "term": 1, "head": [1, True]}],
    [3, {"src": 1, "dst": 2, "term": 1, "head": [1, 1], "transfer": 1}],   # int as bool
    [2, {"src": 1, "dst": 2, "term": 1, "granted": None}],
    [32, {"client_id": "c", "seq": 1, "command": "text, not bytes"}],
    [32, {"client_id": b"c", "seq": 1, "command": b""}],
    [33, {"client_id": "c", "seq": 1, "status": 17}],                      # no such Status
    [33, {"client_id": "c", "seq": 1, "status": True}],
    [33, {"client_id": "c", "seq": 1, "status": 0, "leader_hint": "3"}],
    [37, {"client_id": "c", "read_id": 1, "status": [1]}],                 # dict expected
    [39, {"client_id": "c", "read_id": 1, "op": "x", "args": None}],
    [6, {"src": 1, "dst": 2, "term": 1, "success": False, "hint": [[1]]}],
    [6, {"src": 1, "dst": 2, "term": 1, "success": False, "hint": [[1, -2]]}],
    [6, {"src": 1, "dst": 2, "term": 1, "success": False, "hint": 3}],
    [6, {"src": 1, "dst": 2, "term": 1, "success": False, "match": [1]}],
    [7, {"src": 1, "dst": 2, "term": 1, "commit": None}],                  # seq missing
])
def test_malformed_messages(obj):
    assert reason(raw(obj)) == "malformed"


def _append_with_row(row) -> bytes:
    return raw([5, {"src": 1, "dst": 2, "term": 3, "prev": [0, 0], "commit": [0, 0], "seq": 1,
                    "blocks": [row]}])


@pytest.mark.parametrize("row", [
    [3, 1, 0, 0, 0, b"p", b"d" * 31],            # short digest
    [3, 1, 0, 0, 0, b"p", b"d" * 33],
    [3, 1, 0, 0, 0, b"p", "d" * 32],             # digest as str
    [3, 1, 0, 0, 0, "p", b"d" * 32],             # payload as str
    [3, 1, 0, None, 0, b"p", b"d" * 32],         # half a parent
    [3, 1, None, None, 0, b"p", b"d" * 32],      # parentless but not genesis
    [3, 2, 0, 0, 0, b"p", b"d" * 32],            # parent height not height - 1
    [3, 1, 4, 0, 0, b"p", b"d" * 32],            # parent term above term
    [3, 1, -1, 0, 0, b"p", b"d" * 32],
    [3, 1, 0, 0, 9, b"p", b"d" * 32],            # no such kind
    [3, 1, 0, 0, False, b"p", b"d" * 32],
    [3, -1, 0, 0, 0, b"p", b"d" * 32],
    [3, 0, 0, -1, 0, b"p", b"d" * 32],           # height 0 under a parent at height -1
    [3, 1, 0, 0, 0, b"p"],                       # short row
    {"term": 3},
])
def test_malformed_blocks(row):
    assert reason(_append_with_row(row)) == "malformed"
    assert decode_message(_append_with_row([3, 1, 0, 0, 0, b"p", b"d" * 32])).blocks[0] == Block(
        BlockId(3, 1), BlockId(0, 0), BlockKind.NORMAL, b"p", b"d" * 32)


def test_extension_types_and_garbage_are_malformed():
    assert reason(raw([32, {"client_id": "c", "seq": 1, "command": msgpack.ExtType(5, b"x")}])) \
        == "malformed"
    assert reason(b"") == "malformed"
    assert reason(b"\xc1") == "malformed"                 # never-used byte
    assert reason(raw([1, {}]) + b"\x00") == "malformed"  # trailing data
    assert reason(b"\x92\x01") == "malformed"             # truncated


def test_encode_rejects_what_is_not_a_message():
    with pytest.raises(CodecError):
        encode_message({"src": 1})
    with pytest.raises(CodecError):
        encode_message(messages.Tick())
    with pytest.raises(CodecError):  # unpackable result value
        encode_message(ClientProposeResp(client_id="c", seq=1, status=Status.OK, result=object()))
    g = genesis(CLUSTER)
    with pytest.raises(CodecError):
        encode_message(AppendBlocks(src=1, dst=2, term=1, prev=g.id, blocks=("x",), commit=g.id,
                                    seq=1))


# --------------------------------------------------------------------------------- frames


def test_peer_frame_round_trip_with_batching(samples):
    peer = [m for m in samples if type(m) in messages.PEER_MESSAGE_TYPES and m.src == 1]
    data = encode_frame(CLUSTER, 1, peer)
    assert decode_frame(data, CLUSTER, 1 << 20) == (1, peer)
    # pre-encoded messages are placed as they are
    pre = [encode_message(m) for m in peer]
    assert encode_frame(CLUSTER, 1, pre) == data
    assert msgpack.unpackb(data)[:4] == ["p", PROTOCOL_VERSION, CLUSTER, 1]


def test_client_frame_round_trip(samples):
    client = [m for m in samples if type(m).__name__.startswith("Client")]
    assert decode_frame(encode_client_frame(CLUSTER, client), CLUSTER) == (None, client)


def test_frame_reasons():
    msg = VoteReq(src=1, dst=2, term=3, head=BlockId(1, 1))
    good = encode_frame(CLUSTER, 1, [msg])
    assert decode_frame(good, CLUSTER, len(good)) == (1, [msg])
    with pytest.raises(CodecError) as info:
        decode_frame(good, CLUSTER, len(good) - 1)
    assert info.value.reason == "oversized"
    with pytest.raises(CodecError) as info:
        decode_frame(good, "other-cluster", 1 << 20)
    assert info.value.reason == "wrong_cluster"
    assert reason(raw(["p", 2, CLUSTER, 1, []]), frame=True) == "bad_version"
    assert reason(raw(["p", 2]), frame=True) == "bad_version"  # v2 may lay out the rest anew
    assert reason(raw(["p", 0, CLUSTER, 1, []]), frame=True) == "bad_version"
    assert reason(raw(["p", "1", CLUSTER, 1, []]), frame=True) == "malformed"
    assert reason(raw(["x", 1, CLUSTER, 1, []]), frame=True) == "malformed"
    assert reason(raw(["p", 1, CLUSTER, 1]), frame=True) == "malformed"
    assert reason(raw(["p", 1, CLUSTER, -1, []]), frame=True) == "malformed"
    assert reason(raw(["p", 1, CLUSTER, 1, [raw([1, {}])]]), frame=True) == "malformed"
    assert reason(raw(["p", 1, CLUSTER, 1, [raw([77, {}])]]), frame=True) == "unknown_tag"
    assert reason(raw(["p", 1, CLUSTER, 1, [[3, {}]]]), frame=True) == "malformed"  # not bin
    assert reason(raw(["p", 1, b"bytes-cluster", 1, []]), frame=True) == "malformed"
    with pytest.raises(CodecError) as info:
        decode_frame("a str", CLUSTER)
    assert info.value.reason == "malformed"


def test_frame_kinds_carry_only_their_messages():
    vote = VoteReq(src=1, dst=2, term=3, head=BlockId(1, 1))
    prop = ClientPropose(client_id="c", seq=1, command=b"x")
    assert reason(encode_frame(CLUSTER, 1, [prop]), frame=True) == "malformed"
    assert reason(encode_client_frame(CLUSTER, [vote]), frame=True) == "malformed"
    assert reason(encode_frame(CLUSTER, 2, [vote]), frame=True) == "malformed"  # src != sender
    assert reason(raw(["c", 1, CLUSTER, 5, []]), frame=True) == "malformed"


def test_frame_header_may_grow():
    vote = VoteReq(src=1, dst=2, term=3, head=BlockId(1, 1))
    data = raw(["p", 1, CLUSTER, 1, [encode_message(vote)], {"future": True}])
    assert decode_frame(data, CLUSTER) == (1, [vote])


def test_codec_error_is_a_value_error_with_a_reason():
    err = CodecError("oversized", "big")
    assert isinstance(err, ValueError) and err.reason == "oversized" and "big" in str(err)


def test_packb_helpers_still_work():
    assert codec.unpackb(codec.packb({"a": [1, b"x"]})) == {"a": [1, b"x"]}


@pytest.mark.parametrize("obj", [
    [32, {"client_id": "c", "seq": -1, "command": b"x"}],
    [32, {"client_id": "c", "seq": True, "command": b"x"}],
    [32, {"client_id": "c", "command": b"x"}],
    [32, {"client_id": 7, "seq": 1, "command": b"x"}],
])
def test_client_propose_fast_path_refuses_what_the_general_rules_refuse(obj):
    assert reason(raw(obj)) == "malformed"


def test_hot_messages_encode_exactly_like_the_general_field_map():
    """ClientPropose decodes and ClientProposeResp encodes through unrolled fast paths; they
    must stay byte-for-byte and value-for-value what the table-driven code produces."""
    resp = ClientProposeResp(client_id="c", seq=9, status=Status.BUSY, result={"ok": True},
                             leader_hint=3)
    assert msgpack.unpackb(encode_message(resp)) == [
        33, {"client_id": "c", "seq": 9, "status": int(Status.BUSY), "result": {"ok": True},
             "leader_hint": 3}]
    back = decode_message(encode_message(resp))
    assert back == resp and type(back.status) is Status
    req = decode_message(raw([32, {"client_id": "c", "seq": 0, "command": b"x", "new": 1}]))
    assert req == ClientPropose(client_id="c", seq=0, command=b"x")
