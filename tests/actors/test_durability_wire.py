"""Acks and votes leave a real node only after the synced write that backs them returned.

The test stands where a peer stands: a started `Node` (secure ZmqTransport, LevelDB) and,
on the other side of the wire, raw ZeroMQ sockets holding node 2's Curve key and speaking
the codec. It touches no actor: whichever thread writes the chain, `LevelDBStore.write` is
wrapped at class level to stamp when each write starts and returns, and it holds every
write back for a moment before it reaches the disk, so that a message released before its
write returned would be seen on the wire first. A granted vote promises a synced hard state
(term, voted_for); a successful AppendResp promises its blocks are synced.
"""
from __future__ import annotations

import threading
import time
from dataclasses import dataclass

import pytest
import zmq

from josefine import KVStateMachine, Node, NodeConfig
from josefine.chain.block import BlockKind, genesis, make_block
from josefine.chain.leveldb import LevelDBStore
from josefine.launch.ports import free_port_block
from josefine.messages import AppendBlocks, AppendResp, VoteReq, VoteResp
from josefine.security import load_keypair, make_cluster_keys
from josefine.transport.codec import decode_frame, encode_frame
from josefine.types import GENESIS_ID

pytestmark = pytest.mark.timeout(60)

CLUSTER = "durable-wire"
HOLD_S = 0.3
"""How long each write is held before it reaches the disk: a message released before its
write returned reaches the fake peer within this window, long before the write returns."""
TERM = 50


@dataclass
class WriteRecord:
    started: float
    returned: float | None
    sync: bool
    hard_state: object
    block_ids: tuple


@dataclass
class Arrival:
    at: float
    msg: object


@pytest.fixture
def timed_writes(monkeypatch):
    """Every `LevelDBStore.write` of this test, stamped and held back by HOLD_S."""
    records: list[WriteRecord] = []
    lock = threading.Lock()
    real_write = LevelDBStore.write

    def write(self, **kw):
        rec = WriteRecord(time.monotonic(), None, bool(kw.get("sync", True)),
                          kw.get("hard_state"), tuple(b.id for b in kw.get("blocks", ())))
        with lock:
            records.append(rec)
        time.sleep(HOLD_S)   # the window a premature ack would show up in; not a wait
        real_write(self, **kw)
        rec.returned = time.monotonic()

    monkeypatch.setattr(LevelDBStore, "write", write)
    return records


class FakePeer:
    """Node 2, as seen by node 1: a Curve ROUTER at node 2's address that receives node 1's
    frames (stamped on arrival), and a Curve DEALER into node 1 that sends frames from 2."""

    def __init__(self, keys_dir, addr1: str, addr2: str) -> None:
        me = load_keypair(keys_dir / "node-2.key_secret")
        node1 = load_keypair(keys_dir / "node-1.key_secret")
        self.ctx = zmq.Context()
        self.inbound = self.ctx.socket(zmq.ROUTER)
        self.inbound.setsockopt(zmq.LINGER, 0)
        self.inbound.curve_secretkey, self.inbound.curve_publickey = me.secret, me.public
        self.inbound.curve_server = True
        self.inbound.bind(addr2)
        self.out = self.ctx.socket(zmq.DEALER)
        self.out.setsockopt(zmq.LINGER, 0)
        self.out.curve_secretkey, self.out.curve_publickey = me.secret, me.public
        self.out.curve_serverkey = node1.public
        self.out.connect(addr1)
        self.arrivals: list[Arrival] = []

    def send(self, msg: object) -> None:
        self.out.send(encode_frame(CLUSTER, 2, [msg]))

    def wait_for(self, pred, timeout: float = 10.0) -> Arrival:
        """Receive until a message matching `pred` arrives; every arrival is stamped the
        moment recv returns."""
        deadline = time.monotonic() + timeout
        while True:
            for a in self.arrivals:
                if pred(a.msg):
                    return a
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"no matching message; got {[a.msg for a in self.arrivals]}")
            if self.inbound.poll(int(left * 1000) + 1):
                _identity, frame = self.inbound.recv_multipart()
                at = time.monotonic()
                sender, msgs = decode_frame(frame, CLUSTER)
                assert sender == 1
                self.arrivals.extend(Arrival(at, m) for m in msgs)

    def close(self) -> None:
        self.inbound.close(0)
        self.out.close(0)
        self.ctx.term()


def _wait(pred, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.01)


def test_votes_and_acks_reach_the_wire_only_after_their_synced_write_returned(
        tmp_path, timed_writes):
    base = free_port_block(2)
    addr1, addr2 = f"tcp://127.0.0.1:{base}", f"tcp://127.0.0.1:{base + 1}"
    keys = tmp_path / "keys"
    cluster_file = make_cluster_keys(keys, CLUSTER, {1: addr1, 2: addr2})
    # Elections slow enough that node 1 stays a quiet follower while the peer drives it.
    cfg = NodeConfig(node_id=1, cluster_id=CLUSTER, address=addr1, peers={2: addr2},
                     data_dir=str(tmp_path / "n1"), election_ticks=500,
                     secret_key_file=str(keys / "node-1.key_secret"),
                     cluster_file=str(cluster_file))
    peer = FakePeer(keys, addr1, addr2)
    node = Node.start(cfg, KVStateMachine())
    try:
        _wait(lambda: node.zt.peer_links().get(2))   # node 1's link to us is up
        assert node.config.fsync

        # 1. A vote: granting it promises (TERM, voted_for=2) is on disk.
        vote = None
        deadline = time.monotonic() + 10
        while vote is None:   # our DEALER's handshake may still be under way: resend
            peer.send(VoteReq(src=2, dst=1, term=TERM, head=GENESIS_ID))
            try:
                vote = peer.wait_for(lambda m: type(m) is VoteResp and m.term == TERM,
                                     timeout=1.0)
            except AssertionError:
                if time.monotonic() > deadline:
                    raise
        assert vote.msg.granted, vote.msg
        backing = [w for w in timed_writes if w.hard_state is not None
                   and (w.hard_state.term, w.hard_state.voted_for) == (TERM, 2)]
        assert backing, f"no write of the promised hard state: {timed_writes}"
        w = backing[0]
        assert w.sync, "the vote's hard state was written without sync"
        assert w.returned is not None and w.returned < vote.at, (
            "VoteResp left before the write of the vote returned")

        # 2. An append: a successful ack promises the blocks are on disk.
        g = genesis(CLUSTER)
        b1 = make_block(g, TERM, BlockKind.NOOP, b"")
        b2 = make_block(b1, TERM, BlockKind.NOOP, b"")
        peer.send(AppendBlocks(src=2, dst=1, term=TERM, prev=g.id, blocks=(b1, b2),
                               commit=g.id, seq=1))
        ack = peer.wait_for(lambda m: type(m) is AppendResp and m.seq == 1)
        assert ack.msg.success and ack.msg.match == b2.id, ack.msg
        backing = [w for w in timed_writes if b2.id in w.block_ids]
        assert backing, f"no write of the acked blocks: {timed_writes}"
        w = backing[0]
        assert b1.id in w.block_ids   # one AppendBlocks, one Ready, one batch
        assert w.sync, "the acked blocks were written without sync"
        assert w.returned is not None and w.returned < ack.at, (
            "AppendResp left before the write of its blocks returned")

        # Nothing else on the wire promised more than was durable when it arrived.
        for a in peer.arrivals:
            m = a.msg
            if type(m) is VoteResp and m.granted:
                assert any(x.sync and x.returned is not None and x.returned < a.at
                           and x.hard_state is not None
                           and (x.hard_state.term, x.hard_state.voted_for) == (m.term, 2)
                           for x in timed_writes), m
            if type(m) is AppendResp and m.success and m.match is not None \
                    and m.match != GENESIS_ID:
                assert any(x.sync and x.returned is not None and x.returned < a.at
                           and m.match in x.block_ids for x in timed_writes), m
    finally:
        node.stop()
        peer.close()
    assert node.fatal_error is None
