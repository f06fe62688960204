"""ZmqTransport over loopback: delivery, batching, clients, hostile input, faults, failures."""
from __future__ import annotations

import queue
import threading
import time

import msgpack  # test-only: to forge frames
import pytest
import zmq
from transport_helpers import (CLIENT_KEY, CLUSTER, NODE_KEYS, chain_of, curve_dealer, drain,
                               free_port, wait_until)

from josefine.security import KeyPair

from josefine.messages import (
    AppendBlocks,
    ClientPropose,
    ClientProposeResp,
    ClientStatus,
    ClientStatusResp,
    Heartbeat,
    HeartbeatResp,
    Status,
    VoteReq,
)
from josefine.transport.codec import (
    CodecError,
    decode_frame,
    encode_client_frame,
    encode_frame,
    encode_message,
)
from josefine.transport.zmq_transport import ZmqTransport
from josefine.types import BlockId

pytestmark = pytest.mark.timeout(60)


def hb(src: int, dst: int, seq: int) -> Heartbeat:
    return Heartbeat(src=src, dst=dst, term=1, commit=None, seq=seq)


@pytest.fixture
def rogue():
    """Factory for raw DEALER sockets (closed at teardown), like a hostile or buggy client
    or member: rogue(address, server_id, key) connects with Curve `key` (default: the
    client key) to node `server_id` of a secure test cluster."""
    ctx = zmq.Context()
    socks = []

    def make(address: str, server: int = 1, key: KeyPair | None = CLIENT_KEY) -> zmq.Socket:
        s = curve_dealer(ctx, address, NODE_KEYS[server], key)
        socks.append(s)
        return s

    yield make
    for s in socks:
        s.close(linger=0)
    ctx.term()


def test_peers_exchange_messages(cluster):
    nodes = cluster(3)
    g, blocks = chain_of(16)
    ab = AppendBlocks(src=1, dst=2, term=3, prev=g.id, blocks=blocks, commit=g.id, seq=1)
    nodes[1].t.send({2: [ab], 3: [hb(1, 3, 1)]})
    nodes[2].t.send_peer(1, [HeartbeatResp(src=2, dst=1, term=3, seq=1)])
    assert drain(nodes[2].inbox, 1) == [ab]
    assert drain(nodes[3].inbox, 1) == [hb(1, 3, 1)]
    assert drain(nodes[1].inbox, 1) == [HeartbeatResp(src=2, dst=1, term=3, seq=1)]
    # the sender counts a frame just after handing it to libzmq: it may lag the receiver
    wait_until(lambda: nodes[1].t.stats()["messages_out"] == 2)
    s = nodes[1].t.stats()
    assert s["messages_in"] == 1 and s["dropped_frames"] == 0


def test_messages_of_one_call_travel_in_one_frame_in_order(cluster):
    nodes = cluster(2)
    msgs = [hb(1, 2, i) for i in range(50)]
    nodes[1].t.send_peer(2, msgs)
    assert drain(nodes[2].inbox, 50) == msgs
    assert nodes[2].t.stats()["frames_in"] == 1
    wait_until(lambda: nodes[1].t.stats()["messages_out"] == 50)
    assert nodes[1].t.stats()["frames_out"] == 1


def test_queued_messages_are_coalesced(cluster):
    nodes = cluster(2)
    n = 2000
    for i in range(n):
        nodes[1].t.send_peer(2, [hb(1, 2, i)])
    got = drain(nodes[2].inbox, n)
    assert [m.seq for m in got] == list(range(n))  # per-peer order kept
    wait_until(lambda: nodes[1].t.stats()["messages_out"] == n)
    assert nodes[1].t.stats()["frames_out"] < n


def test_large_batches_are_split_to_fit_max_frame_bytes(cluster):
    nodes = cluster(2, max_frame_bytes=8192)
    g, blocks = chain_of(10, payload=b"x" * 1500)  # ~1.6 kB per message
    msgs = [AppendBlocks(src=1, dst=2, term=3, prev=g.id, blocks=(b,), commit=g.id, seq=i)
            for i, b in enumerate(blocks)]
    too_big = AppendBlocks(src=1, dst=2, term=3, prev=g.id, blocks=blocks, commit=g.id, seq=99)
    nodes[1].t.send_peer(2, [msgs[0], too_big, *msgs[1:]])
    assert drain(nodes[2].inbox, 10) == msgs
    wait_until(lambda: nodes[1].t.stats()["messages_out"] == 10)
    s = nodes[1].t.stats()
    assert s["frames_out"] >= 2 and s["outbound_oversized"] == 1


def test_client_request_answered_through_reply_client(cluster, rogue):
    nodes = cluster(1)
    node = nodes[1]
    client = rogue(node.t.address)
    req = ClientPropose(client_id="c1", seq=1, command=b"put")
    client.send(encode_client_frame(CLUSTER, [req]))
    identity, got = node.requests.get(timeout=10)
    assert got == req and isinstance(identity, bytes)
    resp = ClientProposeResp(client_id="c1", seq=1, status=Status.OK, result=b"done")
    node.t.reply_client(identity, resp)
    assert client.poll(10_000)
    assert decode_frame(client.recv(), CLUSTER) == (None, [resp])
    node.t.reply_client(b"\x00no-such-client", resp)  # unroutable: silently dropped
    node.t.send_peer(1, [])  # nothing to send is fine
    wait_until(lambda: node.t.stats()["client_replies"] == 2)
    assert node.t.running
    with pytest.raises(TypeError):
        node.t.reply_client("not bytes", resp)
    with pytest.raises(CodecError):
        node.t.reply_client(identity, object())


def test_hostile_input_is_counted_and_dropped(cluster, rogue):
    nodes = cluster(2, max_frame_bytes=64 * 1024)
    target = nodes[2].t
    vote = VoteReq(src=1, dst=2, term=3, head=BlockId(1, 1))
    bad = rogue(target.address, 2, NODE_KEYS[1])   # a member gone bad: node 1's own key
    sends = {
        "malformed": [b"\xc1garbage", msgpack.packb(["p", 1, CLUSTER, 1, [b"\x93"]]),
                      [b"two", b"parts"]],
        "wrong_cluster": [encode_frame("other", 1, [vote])],
        "bad_version": [msgpack.packb(["p", 9, CLUSTER, 1, []])],
        "unknown_tag": [msgpack.packb(["p", 1, CLUSTER, 1, [msgpack.packb([77, {}])]])],
        "unknown_sender": [encode_frame(CLUSTER, 9, [VoteReq(src=9, dst=2, term=3,
                                                             head=BlockId(1, 1))]),
                           encode_frame(CLUSTER, 2, [VoteReq(src=2, dst=2, term=3,
                                                             head=BlockId(1, 1))])],
        "wrong_destination": [encode_frame(CLUSTER, 1, [VoteReq(src=1, dst=3, term=3,
                                                                head=BlockId(1, 1))])],
        "unexpected_message": [encode_client_frame(CLUSTER, [ClientProposeResp(
            client_id="c", seq=1, status=Status.OK)])],
    }
    for frames in sends.values():
        for f in frames:
            bad.send_multipart(f) if isinstance(f, list) else bad.send(f)
    expected = {reason: len(frames) for reason, frames in sends.items()}
    wait_until(lambda: all(target.stats()["dropped_by_reason"][r] == n
                           for r, n in expected.items()))
    assert target.stats()["dropped_frames"] == sum(expected.values())
    assert nodes[2].inbox.empty()

    # An oversized frame: libzmq (MAXMSGSIZE) refuses it by closing the connection.
    before = target.stats()["inbound_disconnects"]
    bad.send(b"\x00" * (64 * 1024 + 1))
    wait_until(lambda: target.stats()["inbound_disconnects"] > before)
    # ... the rogue's DEALER reconnects by itself, and is still judged frame by frame
    wait_until(lambda: (bad.send(encode_frame("other", 1, [vote])) or True)
               and target.stats()["dropped_by_reason"]["wrong_cluster"] > 1, timeout=15,
               interval=0.2)

    # The transport still delivers good traffic.
    nodes[1].t.send_peer(2, [vote])
    assert drain(nodes[2].inbox, 1) == [vote]
    assert target.running


def test_oversized_frames_that_get_past_libzmq_are_still_refused(cluster, rogue):
    # With MAXMSGSIZE equal to max_frame_bytes libzmq stops them first; the codec's own
    # check is the second line, counted as "oversized".
    nodes = cluster(1, max_frame_bytes=1000)
    t = nodes[1].t
    t.max_frame_bytes = 10  # only the decode check changes; libzmq's limit stays 1000
    rogue(t.address).send(encode_client_frame(CLUSTER, [ClientStatus(client_id="c")]))
    wait_until(lambda: t.stats()["dropped_by_reason"]["oversized"] == 1)


def test_partition_drops_then_heal_delivers(cluster):
    nodes = cluster(2)
    a, b = nodes[1], nodes[2]
    a.t.send_peer(2, [hb(1, 2, 0)])  # links are up
    assert drain(b.inbox, 1) == [hb(1, 2, 0)]
    a.t.faults.partition([2])  # a alone cuts both directions
    a.t.send_peer(2, [hb(1, 2, 1)])
    b.t.send_peer(1, [HeartbeatResp(src=2, dst=1, term=1, seq=1)])
    wait_until(lambda: a.t.stats()["fault_dropped_out"] == 1
               and a.t.stats()["fault_dropped_in"] == 1)
    assert a.inbox.empty() and b.inbox.empty()
    a.t.faults.heal()
    a.t.send_peer(2, [hb(1, 2, 2)])
    b.t.send_peer(1, [HeartbeatResp(src=2, dst=1, term=1, seq=2)])
    assert drain(b.inbox, 1) == [hb(1, 2, 2)]
    assert drain(a.inbox, 1) == [HeartbeatResp(src=2, dst=1, term=1, seq=2)]


def test_one_way_loss_and_drop_probability(cluster):
    nodes = cluster(2)
    a, b = nodes[1], nodes[2]
    a.t.faults.block_outbound([2])
    a.t.send_peer(2, [hb(1, 2, 1)])
    b.t.send_peer(1, [HeartbeatResp(src=2, dst=1, term=1, seq=1)])
    assert drain(a.inbox, 1) == [HeartbeatResp(src=2, dst=1, term=1, seq=1)]
    wait_until(lambda: a.t.stats()["fault_dropped_out"] == 1)
    a.t.faults.clear()
    a.t.faults.set_link(2, drop_out=1.0)
    a.t.send_peer(2, [hb(1, 2, i) for i in range(5)])
    wait_until(lambda: a.t.stats()["fault_dropped_out"] == 6)
    a.t.faults.clear()
    a.t.send_peer(2, [hb(1, 2, 99)])
    assert drain(b.inbox, 1) == [hb(1, 2, 99)]


def test_delay_holds_messages_back(cluster):
    nodes = cluster(2)
    a, b = nodes[1], nodes[2]
    a.t.send_peer(2, [hb(1, 2, 0)])
    drain(b.inbox, 1)
    a.t.faults.set_link(2, delay_ms=300)
    t0 = time.monotonic()
    a.t.send_peer(2, [hb(1, 2, i) for i in range(1, 4)])
    assert drain(b.inbox, 3) == [hb(1, 2, i) for i in range(1, 4)]
    assert time.monotonic() - t0 >= 0.29
    assert a.t.stats()["fault_delayed"] == 3


def test_unknown_destination_is_counted(cluster):
    nodes = cluster(2)
    nodes[1].t.send_peer(7, [hb(1, 7, 1)])
    nodes[1].t.send_peer(1, [hb(1, 1, 1)])  # itself: not a peer
    wait_until(lambda: nodes[1].t.stats()["unknown_destination"] == 2)
    with pytest.raises(CodecError):
        nodes[1].t.send_peer(2, ["not a message"])


def test_callback_failure_is_fatal_and_reported(cluster):
    nodes = cluster(2, start=False)
    reported: queue.Queue = queue.Queue()
    a, b = nodes[1].t, nodes[2].t

    def explode(msg):
        raise RuntimeError("role actor is dead")

    b._on_peer_message = explode
    b._on_fatal = reported.put
    a.start()
    b.start()
    wait_until(lambda: a.peer_links()[2])
    a.send_peer(2, [hb(1, 2, 1)])
    exc = reported.get(timeout=10)
    assert isinstance(exc, RuntimeError) and b.fatal_error is exc
    wait_until(lambda: not b.running)
    b.stop()
    b.stop()


def test_on_fatal_may_stop_the_transport_itself(cluster):
    nodes = cluster(2, start=False)
    a, b = nodes[1].t, nodes[2].t
    done = threading.Event()

    def explode(msg):
        raise RuntimeError("boom")

    def on_fatal(exc):
        b.stop()  # from the I/O thread itself: must not deadlock
        done.set()

    b._on_peer_message = explode
    b._on_fatal = on_fatal
    a.start()
    b.start()
    wait_until(lambda: a.peer_links()[2])
    a.send_peer(2, [hb(1, 2, 1)])
    assert done.wait(10)


def test_bind_failure_raises_from_start():
    port = free_port()
    addr = f"tcp://127.0.0.1:{port}"
    first = ZmqTransport(1, CLUSTER, addr, {}, print, print)
    first.start()
    try:
        second = ZmqTransport(2, CLUSTER, addr, {}, print, print)
        with pytest.raises(zmq.ZMQError):
            second.start()
        second.stop()
        with pytest.raises(RuntimeError):
            first.start()
    finally:
        first.stop()


def test_wildcard_port_and_stop_is_idempotent():
    t = ZmqTransport(1, CLUSTER, "tcp://127.0.0.1:*", {2: "tcp://127.0.0.1:1"}, print, print)
    t.stop()  # before start: fine
    t = ZmqTransport(1, CLUSTER, "tcp://127.0.0.1:*", {2: "tcp://127.0.0.1:1"}, print, print)
    t.start()
    assert t.address.startswith("tcp://127.0.0.1:") and not t.address.endswith(":*")
    assert t.running
    t.send_peer(2, [hb(1, 2, 1)])  # peer down: dropped, never blocks
    wait_until(lambda: t.stats()["send_dropped"] == 1)
    t.stop()
    t.stop()
    assert not t.running
    t.send_peer(2, [hb(1, 2, 2)])  # after stop: ignored


def test_stats_shape(cluster):
    s = cluster(1)[1].t.stats()
    assert s["dropped_frames"] == 0
    assert set(s["dropped_by_reason"]) >= {"malformed", "unknown_tag", "wrong_cluster",
                                          "oversized", "bad_version", "unknown_sender"}


def test_log_lines_name_the_node(cluster, rogue, caplog):
    nodes = cluster(1)
    with caplog.at_level("WARNING", logger="josefine.transport.zmq_transport"):
        b = rogue(nodes[1].t.address)
        for _ in range(5):
            b.send(b"junk")
        wait_until(lambda: nodes[1].t.stats()["dropped_by_reason"]["malformed"] == 5)
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 1  # rate limited: one per reason per interval
    assert lines[0].startswith("node 1: dropped inbound frame (malformed)")


def test_encoded_message_reused_for_several_peers(cluster):
    # The codec hands the same bytes to every follower's frame; check the fast path agrees.
    nodes = cluster(3)
    g, blocks = chain_of(4)
    for dst in (2, 3):
        nodes[1].t.send_peer(dst, [AppendBlocks(src=1, dst=dst, term=3, prev=g.id,
                                                blocks=blocks, commit=g.id, seq=dst)])
    assert drain(nodes[2].inbox, 1)[0].blocks == blocks
    assert drain(nodes[3].inbox, 1)[0].blocks == blocks
    assert encode_message(ClientStatusResp(client_id="c", read_id=1))  # sanity


def test_a_wake_up_racing_the_drain_is_never_lost(monkeypatch):
    # The I/O thread may only sleep in poll while the wake flag is clear or the pipe holds
    # a byte; otherwise every later _wake() is skipped and queued sends (and stop) hang.
    # Here a sender wakes the thread at the worst moment: while it drains the pipe.
    import os

    import josefine.transport.zmq_transport as zt
    t = ZmqTransport(1, CLUSTER, "tcp://127.0.0.1:1", {1: "tcp://127.0.0.1:1"},
                     lambda m: None, lambda i, m: None)
    r, w = os.pipe()
    os.set_blocking(r, False)
    os.set_blocking(w, False)
    t._wake_r, t._wake_w = r, w
    real_read = os.read
    raced = []

    def read_with_a_sender_racing(fd, n):
        if not raced:
            raced.append(True)
            t._wake()   # another thread queues a message and wakes the I/O thread now
        return real_read(fd, n)

    try:
        for pending_before in (False, True):
            raced.clear()
            if pending_before:
                t._wake()
            monkeypatch.setattr(zt.os, "read", read_with_a_sender_racing)
            t._drain_wake()
            monkeypatch.setattr(zt.os, "read", real_read)
            left = b""
            try:
                left = real_read(r, 16)
            except BlockingIOError:
                pass
            assert raced
            assert not t._wake_pending or left, "flag set over an empty pipe: wake-ups lost"
            t._wake_pending = False
    finally:
        os.close(r)
        os.close(w)
        t._wake_r = t._wake_w = None
        t.stop()
