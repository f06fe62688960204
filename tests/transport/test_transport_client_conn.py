"""ClientConnection: request/reply matching, stale replies, timeouts and reconnection."""
from __future__ import annotations

import queue
import threading

import pytest
from transport_helpers import CLUSTER, free_port, wait_until

from josefine.messages import (
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
    Status,
)
from josefine.transport.client_conn import ClientConnection
from josefine.transport.zmq_transport import ZmqTransport

pytestmark = pytest.mark.timeout(60)


class Server:
    """A one-node transport whose requests are answered by `handler` on a worker thread."""

    def __init__(self, address: str, handler):
        self.seen: list = []
        self._q: queue.Queue = queue.Queue()
        self.t = ZmqTransport(1, CLUSTER, address, {}, lambda m: None,
                              lambda ident, m: self._q.put((ident, m)))
        self._handler = handler
        self._worker = threading.Thread(target=self._serve, daemon=True)

    def start(self) -> Server:
        self.t.start()
        self._worker.start()
        return self

    def _serve(self) -> None:
        while True:
            item = self._q.get()
            if item is None:
                return
            ident, m = item
            self.seen.append(m)
            for reply in self._handler(m):
                self.t.reply_client(ident, reply)

    def stop(self) -> None:
        self._q.put(None)
        self._worker.join(5)
        self.t.stop()


def echo(m):
    if isinstance(m, ClientPropose):
        return [ClientProposeResp(client_id=m.client_id, seq=m.seq, status=Status.OK,
                                  result=m.command)]
    if isinstance(m, ClientRead):
        return [ClientReadResp(client_id=m.client_id, read_id=m.read_id, status=Status.OK,
                               result=m.query)]
    if isinstance(m, ClientStatus):
        return [ClientStatusResp(client_id=m.client_id, read_id=m.read_id, status={"role": "x"})]
    return [ClientAdminResp(client_id=m.client_id, read_id=m.read_id, ok=True)]


@pytest.fixture
def servers():
    made: list[Server] = []

    def make(handler=echo, address=None) -> Server:
        s = Server(address or f"tcp://127.0.0.1:{free_port()}", handler).start()
        made.append(s)
        return s

    yield make
    for s in made:
        s.stop()


def test_requests_get_their_replies(servers):
    srv = servers()
    with ClientConnection(srv.t.address, CLUSTER, "c1") as conn:
        r = conn.request(ClientPropose(client_id="c1", seq=1, command=b"put"), 10)
        assert r == ClientProposeResp(client_id="c1", seq=1, status=Status.OK, result=b"put")
        assert conn.request(ClientRead(client_id="c1", read_id=5, query=b"q"), 10).result == b"q"
        assert conn.request(ClientStatus(client_id="c1", read_id=6), 10).status == {"role": "x"}
        assert conn.request(ClientAdmin(client_id="c1", read_id=7, op="x"), 10).ok
        assert conn.request(ClientTransfer(client_id="c1", read_id=8, target=2), 10).ok


def test_stale_and_foreign_replies_are_ignored(servers):
    def noisy(m):
        return [
            ClientProposeResp(client_id=m.client_id, seq=m.seq - 1, status=Status.OK),  # stale
            ClientProposeResp(client_id="someone-else", seq=m.seq, status=Status.OK),
            ClientReadResp(client_id=m.client_id, read_id=m.seq, status=Status.OK),  # wrong kind
            ClientProposeResp(client_id=m.client_id, seq=m.seq, status=Status.BUSY),
        ]

    srv = servers(noisy)
    with ClientConnection(srv.t.address, CLUSTER, "c1") as conn:
        for seq in (5, 6):
            r = conn.request(ClientPropose(client_id="c1", seq=seq, command=b""), 10)
            assert (r.seq, r.status) == (seq, Status.BUSY)


def test_timeout_then_reconnect_without_stale_delivery(servers):
    address = f"tcp://127.0.0.1:{free_port()}"
    conn = ClientConnection(address, CLUSTER, "c1")
    try:
        with pytest.raises(TimeoutError):  # nobody listens yet
            conn.request(ClientPropose(client_id="c1", seq=1, command=b"lost"), 0.3)
        srv = servers(address=address)
        r = conn.request(ClientPropose(client_id="c1", seq=2, command=b"x"), 10)
        assert r.seq == 2
        # the request that timed out was thrown away with its socket, never delivered late
        assert [m.seq for m in srv.seen] == [2]
    finally:
        conn.close()


def test_unanswered_request_times_out_and_the_connection_recovers(servers):
    def only_even(m):
        return echo(m) if m.seq % 2 == 0 else []

    srv = servers(only_even)
    conn = ClientConnection(srv.t.address, CLUSTER, "c1")
    with pytest.raises(TimeoutError):
        conn.request(ClientPropose(client_id="c1", seq=1, command=b""), 0.3)
    assert conn.request(ClientPropose(client_id="c1", seq=2, command=b""), 10).seq == 2
    conn.close()
    conn.close()
    # usable again after close: reconnects lazily
    assert conn.request(ClientPropose(client_id="c1", seq=4, command=b""), 10).seq == 4
    conn.close()


def test_replies_from_another_cluster_are_ignored(servers):
    srv = servers()
    conn = ClientConnection(srv.t.address, "other-cluster", "c1")
    try:
        # the node refuses the request itself (wrong cluster), so nothing comes back
        with pytest.raises(TimeoutError):
            conn.request(ClientStatus(client_id="c1", read_id=1), 0.3)
        wait_until(lambda: srv.t.stats()["dropped_by_reason"]["wrong_cluster"] == 1)
    finally:
        conn.close()


def test_bad_requests_are_refused_locally():
    conn = ClientConnection("tcp://127.0.0.1:1", CLUSTER, "c1")
    with pytest.raises(TypeError):
        conn.request(Heartbeat(src=1, dst=2, term=1, commit=None, seq=1), 1)
    with pytest.raises(ValueError):
        conn.request(ClientStatus(client_id="c2"), 1)
    conn.close()
