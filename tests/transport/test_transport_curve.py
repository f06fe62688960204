"""CurveZMQ on the transport: who may connect, and what each key may say (issue 13).

Every test runs real sockets on loopback; the secure `cluster` fixture gives node i the key
NODE_KEYS[i] and makes every node trust nodes 1..n, CLIENT_KEY and ADMIN_KEY.
"""
from __future__ import annotations

import logging

import pytest
import zmq
from transport_helpers import (
    ADMIN_KEY,
    CLIENT_KEY,
    CLUSTER,
    NODE_KEYS,
    STRANGER_KEY,
    curve_dealer,
    drain,
    free_port,
    security_for,
    trust_for,
    wait_until,
)

from josefine.messages import (
    ClientAdmin,
    ClientAdminResp,
    ClientStatus,
    ClientTransfer,
    Heartbeat,
)
from josefine.security import TrustedKeys
from josefine.transport.client_conn import ClientConnection
from josefine.transport.codec import decode_frame, encode_client_frame, encode_frame
from josefine.transport.zmq_transport import ZmqTransport

pytestmark = pytest.mark.timeout(60)


def hb(src: int, dst: int, seq: int = 1) -> Heartbeat:
    return Heartbeat(src=src, dst=dst, term=1, commit=None, seq=seq)


@pytest.fixture
def ctx():
    c = zmq.Context()
    yield c
    c.destroy(linger=0)


def _no_handshake_and_refused(t: ZmqTransport) -> None:
    wait_until(lambda: t.stats()["handshakes_failed"] >= 1)


def test_members_link_up_and_exchange_over_curve(cluster):
    nodes = cluster(3)
    assert all(n.t.stats()["secure"] for n in nodes.values())
    nodes[1].t.send_peer(3, [hb(1, 3)])
    assert drain(nodes[3].inbox, 1) == [hb(1, 3)]


def test_a_node_with_an_unknown_key_cannot_join(cluster, ctx):
    nodes = cluster(2)
    target = nodes[2].t
    # An outsider holding a key nobody trusts, claiming to be node 1.
    s = curve_dealer(ctx, target.address, NODE_KEYS[2], STRANGER_KEY)
    for i in range(5):
        s.send(encode_frame(CLUSTER, 1, [hb(1, 2, seq=100 + i)]))
    _no_handshake_and_refused(target)
    assert target.stats()["handshakes_refused"] >= 1
    # A real transport configured with a wrong key (node 3's id, a stranger's key) too.
    rogue_t = ZmqTransport(1, CLUSTER, f"tcp://127.0.0.1:{free_port()}", {2: target.address},
                           lambda m: None, lambda i, m: None,
                           security=type(security_for(1, 2))(STRANGER_KEY, trust_for(2)))
    rogue_t.start()
    try:
        rogue_t.send_peer(2, [hb(1, 2, seq=999)])
        wait_until(lambda: target.stats()["handshakes_refused"] >= 2)
        assert rogue_t.peer_links() == {2: False}
    finally:
        rogue_t.stop()
    assert nodes[2].inbox.empty()
    # The real members still talk.
    nodes[1].t.send_peer(2, [hb(1, 2, seq=7)])
    assert drain(nodes[2].inbox, 1) == [hb(1, 2, seq=7)]


def test_a_plaintext_peer_cannot_connect_and_the_log_says_why(cluster, ctx, caplog):
    nodes = cluster(1)
    with caplog.at_level(logging.WARNING, logger="josefine.transport.zmq_transport"):
        s = curve_dealer(ctx, nodes[1].t.address, None, None)
        s.send(encode_frame(CLUSTER, 2, [hb(2, 1)]))
        _no_handshake_and_refused(nodes[1].t)
    assert nodes[1].inbox.empty()
    assert any("All nodes of a cluster must agree" in r.getMessage() for r in caplog.records)


def test_secure_and_insecure_nodes_do_not_mix(caplog):
    """One node secure, the other plaintext: no link comes up, and both logs say why."""
    addrs = {1: f"tcp://127.0.0.1:{free_port()}", 2: f"tcp://127.0.0.1:{free_port()}"}
    got: list = []
    secure = ZmqTransport(1, CLUSTER, addrs[1], addrs, got.append, lambda i, m: None,
                          security=security_for(1, 2), reconnect_ivl_ms=50)
    plain = ZmqTransport(2, CLUSTER, addrs[2], addrs, got.append, lambda i, m: None,
                         reconnect_ivl_ms=50)
    with caplog.at_level(logging.WARNING, logger="josefine.transport.zmq_transport"):
        secure.start()
        plain.start()
        try:
            wait_until(lambda: secure.stats()["handshakes_failed"] >= 1
                       and any("handshake with node 2" in r.getMessage()
                               for r in caplog.records))
            plain.send_peer(1, [hb(2, 1)])
            secure.send_peer(2, [hb(1, 2)])
            assert secure.peer_links() == {2: False} and plain.peer_links() == {1: False}
        finally:
            secure.stop()
            plain.stop()
    assert got == []


def test_a_client_without_the_client_key_can_neither_read_nor_write(cluster):
    nodes = cluster(1)
    addr = nodes[1].t.address
    for curve in (None, (STRANGER_KEY, NODE_KEYS[1].public)):
        with ClientConnection(addr, CLUSTER, "c1", curve=curve) as conn:
            with pytest.raises(TimeoutError):
                conn.request(ClientStatus(client_id="c1", read_id=1), timeout_s=0.5)
    assert nodes[1].requests.empty()
    # With the client key the same request gets through to the node.
    with ClientConnection(addr, CLUSTER, "c1", curve=(CLIENT_KEY, NODE_KEYS[1].public)) as conn:
        conn._socket().send(encode_client_frame(CLUSTER, [ClientStatus(client_id="c1",
                                                                       read_id=2)]))
        _, msg = nodes[1].requests.get(timeout=10)
    assert msg == ClientStatus(client_id="c1", read_id=2)


def test_a_client_key_cannot_send_peer_messages(cluster, ctx):
    nodes = cluster(2)
    target = nodes[2].t
    s = curve_dealer(ctx, target.address, NODE_KEYS[2], CLIENT_KEY)
    s.send(encode_frame(CLUSTER, 1, [hb(1, 2)]))
    wait_until(lambda: target.stats()["dropped_by_reason"]["unauthorized"] == 1)
    a = curve_dealer(ctx, target.address, NODE_KEYS[2], ADMIN_KEY)
    a.send(encode_frame(CLUSTER, 1, [hb(1, 2)]))
    wait_until(lambda: target.stats()["dropped_by_reason"]["unauthorized"] == 2)
    assert nodes[2].inbox.empty()


def test_a_peer_key_claiming_another_node_id_is_dropped_and_counted(cluster, ctx):
    nodes = cluster(3)
    target = nodes[2].t
    s = curve_dealer(ctx, target.address, NODE_KEYS[2], NODE_KEYS[3])   # node 3's key ...
    s.send(encode_frame(CLUSTER, 1, [hb(1, 2)]))                        # ... claims node 1
    wait_until(lambda: target.stats()["dropped_by_reason"]["impersonation"] == 1)
    assert nodes[2].inbox.empty()
    # node 3's key speaking as node 3 is fine
    s.send(encode_frame(CLUSTER, 3, [hb(3, 2)]))
    assert drain(nodes[2].inbox, 1) == [hb(3, 2)]


def test_admin_requests_need_an_admin_key(cluster, ctx):
    nodes = cluster(1)
    t = nodes[1].t
    c = curve_dealer(ctx, t.address, NODE_KEYS[1], CLIENT_KEY)
    c.send(encode_client_frame(CLUSTER, [
        ClientAdmin(client_id="c", read_id=1, op="faults", args={}),
        ClientTransfer(client_id="c", read_id=2, target=1),
        ClientStatus(client_id="c", read_id=3)]))
    replies = []
    while len(replies) < 2:
        assert c.poll(10_000)
        _, msgs = decode_frame(c.recv(), CLUSTER, 1 << 20)
        replies += msgs
    assert replies == [ClientAdminResp(client_id="c", read_id=1, ok=False,
                                       error="admin key required"),
                       ClientAdminResp(client_id="c", read_id=2, ok=False,
                                       error="admin key required")]
    _, status = nodes[1].requests.get(timeout=10)   # the non-admin request went through
    assert status == ClientStatus(client_id="c", read_id=3)
    assert t.stats()["dropped_by_reason"]["unauthorized"] == 2
    a = curve_dealer(ctx, t.address, NODE_KEYS[1], ADMIN_KEY)
    a.send(encode_client_frame(CLUSTER, [ClientAdmin(client_id="a", read_id=1, op="faults")]))
    _, admin = nodes[1].requests.get(timeout=10)
    assert admin == ClientAdmin(client_id="a", read_id=1, op="faults")


def test_a_removed_key_is_cut_off_at_its_next_frame(cluster, ctx):
    nodes = cluster(1)
    t = nodes[1].t
    c = curve_dealer(ctx, t.address, NODE_KEYS[1], CLIENT_KEY)
    c.send(encode_client_frame(CLUSTER, [ClientStatus(client_id="c", read_id=1)]))
    nodes[1].requests.get(timeout=10)
    t.set_trust(TrustedKeys({1: (NODE_KEYS[1].public,)}, clients=(), admins=()))
    c.send(encode_client_frame(CLUSTER, [ClientStatus(client_id="c", read_id=2)]))
    wait_until(lambda: t.stats()["dropped_by_reason"]["untrusted_key"] == 1)
    assert nodes[1].requests.empty()
    fresh = curve_dealer(ctx, t.address, NODE_KEYS[1], CLIENT_KEY)   # and cannot reconnect
    fresh.send(encode_client_frame(CLUSTER, [ClientStatus(client_id="c", read_id=3)]))
    wait_until(lambda: t.stats()["handshakes_refused"] >= 1)
    assert nodes[1].requests.empty()


def test_rotating_a_peer_key_without_stopping_the_other_node():
    """Node 2 gets a new key: node 1 trusts both (set_trust), rebuilds its link to node 2
    for the new server key, and the restarted node 2 talks with the new key; forgetting the
    old key then refuses it."""
    addrs = {1: f"tcp://127.0.0.1:{free_port()}", 2: f"tcp://127.0.0.1:{free_port()}"}
    inbox1: list = []
    inbox2: list = []
    old2, new2 = NODE_KEYS[2], NODE_KEYS[9]
    trust_old = trust_for(2)
    t1 = ZmqTransport(1, CLUSTER, addrs[1], addrs, inbox1.append, lambda i, m: None,
                      security=security_for(1, 2), reconnect_ivl_ms=50)
    t2 = ZmqTransport(2, CLUSTER, addrs[2], addrs, inbox2.append, lambda i, m: None,
                      security=security_for(2, 2), reconnect_ivl_ms=50)
    t1.start()
    t2.start()
    try:
        wait_until(lambda: t1.peer_links() == {2: True} and t2.peer_links() == {1: True})
        both = TrustedKeys({1: trust_old.peers[1], 2: (new2.public, old2.public)},
                           trust_old.clients, trust_old.admins)
        t1.set_trust(both)
        wait_until(lambda: t1.peer_links() == {2: False})   # node 2 still serves the old key
        t2.stop()
        t2 = ZmqTransport(2, CLUSTER, addrs[2], addrs, inbox2.append, lambda i, m: None,
                          security=type(security_for(2, 2))(new2, both), reconnect_ivl_ms=50)
        t2.start()
        wait_until(lambda: t1.peer_links() == {2: True} and t2.peer_links() == {1: True},
                   timeout=15)
        t2.send_peer(1, [hb(2, 1, seq=5)])
        wait_until(lambda: hb(2, 1, seq=5) in inbox1)
        # The old key of node 2 is forgotten: a connection holding it is refused.
        t1.set_trust(TrustedKeys({1: trust_old.peers[1], 2: (new2.public,)},
                                 trust_old.clients, trust_old.admins))
        c = zmq.Context()
        try:
            s = curve_dealer(c, addrs[1], NODE_KEYS[1], old2)
            s.send(encode_frame(CLUSTER, 2, [hb(2, 1, seq=6)]))
            wait_until(lambda: t1.stats()["handshakes_refused"] >= 1)
        finally:
            c.destroy(linger=0)
        assert hb(2, 1, seq=6) not in inbox1
    finally:
        t1.stop()
        t2.stop()
