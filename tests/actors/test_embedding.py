"""The embedding API: a node's actors inside the caller's process."""
from __future__ import annotations

import dataclasses

import pytest

from josefine.runtime.status import NodeStatus
from josefine import KVStateMachine, Node, NodeConfig
from josefine.config import ConfigError
from josefine.security import generate_keypair, make_cluster_keys, write_keypair
from josefine.fsm.kv import kv_cas, kv_get, kv_put
from josefine.launch.ports import free_port_block

pytestmark = pytest.mark.timeout(60)


def _config(tmp_path, port: int, node_id: int = 1, peers=None) -> NodeConfig:  # noqa: ANN001
    """A secure node (the default kind): keys for every node made with make_cluster_keys."""
    address = f"tcp://127.0.0.1:{port}"
    cluster_file = make_cluster_keys(tmp_path / "keys", "embed",
                                     {**(peers or {}), node_id: address})
    return NodeConfig(node_id=node_id, cluster_id="embed", address=address,
                      peers=peers or {}, data_dir=str(tmp_path / f"n{node_id}"),
                      secret_key_file=str(tmp_path / "keys" / f"node-{node_id}.key_secret"),
                      cluster_file=str(cluster_file))


def test_a_secure_node_without_keys_refuses_to_start_with_a_clear_error(tmp_path):
    cfg = NodeConfig(node_id=1, cluster_id="embed", address=f"tcp://127.0.0.1:{free_port_block(1)}",
                     peers={}, data_dir=str(tmp_path / "n1"))
    with pytest.raises(ConfigError, match="secret_key_file.*insecure = true"):
        Node.start(cfg, KVStateMachine())
    bad = tmp_path / "loose.key_secret"
    write_keypair(bad, generate_keypair())
    bad.chmod(0o644)
    cfg = dataclasses.replace(_config(tmp_path, free_port_block(1)), secret_key_file=str(bad))
    with pytest.raises(ConfigError, match="accessible by group or others"):
        Node.start(cfg, KVStateMachine())


def test_an_insecure_node_runs_and_warns(tmp_path, caplog):
    cfg = NodeConfig(node_id=1, cluster_id="embed", address=f"tcp://127.0.0.1:{free_port_block(1)}",
                     peers={}, data_dir=str(tmp_path / "n1"), insecure=True)
    with caplog.at_level("WARNING"):
        node = Node.start(cfg, KVStateMachine())
    try:
        assert node.wait_for_leader(10) == 1
        assert node.propose(kv_put("k", "v")).result(10) == {"ok": True}
    finally:
        node.stop()
    assert any("INSECURE" in r.getMessage() and "node 1" in r.getMessage()
               for r in caplog.records)


def test_single_node_propose_read_status_and_recovery(tmp_path):
    port = free_port_block(1)
    node = Node.start(_config(tmp_path, port), KVStateMachine())
    try:
        assert node.wait_for_leader(10) == 1
        assert node.propose(kv_put("k", "v1")).result(10) == {"ok": True}
        assert node.propose(kv_cas("k", "v1", "v2")).result(10)["ok"] is True
        assert node.read(kv_get("k")).result(10) == {"value": "v2"}
        st = node.status()
        assert st["role"] == "leader" and st["id"] == 1 and st["applied"] == st["commit"]
        assert st["rss_bytes"] > 1 << 20 and st["leveldb_memory_bytes"] > 0   # diagnostics
        assert isinstance(st, NodeStatus) and st.role == "leader" and st.term >= 1
        assert st.to_dict()["head"] == st.head and set(st) == set(st.to_dict())
        assert st.writes["synced"] >= 2 and st.writes["total"] >= st.writes["synced"]
        assert node.transfer_leadership(1).result(10) == 1   # to itself: a no-op
    finally:
        node.stop()
    assert node.status()["role"] == "stopped"
    assert node.status().to_dict() == {"id": 1, "role": "stopped"}
    # a new node on the same data dir replays the committed chain into a fresh machine
    node = Node.start(_config(tmp_path, port), KVStateMachine())
    try:
        node.wait_for_leader(10)
        assert node.read(kv_get("k")).result(10) == {"value": "v2"}
    finally:
        node.stop()


def test_a_follower_forwards_proposals_and_serves_reads_itself(tmp_path):
    """docs/protocol.md A.8, A.10: the embedding API of a follower works like a leader's:
    its proposal is forwarded and answered once the follower has applied it, and its read
    is served from its own state at an index the leader confirmed."""
    base = free_port_block(2)
    addrs = {1: f"tcp://127.0.0.1:{base}", 2: f"tcp://127.0.0.1:{base + 1}"}
    nodes = [Node.start(_config(tmp_path, base + i - 1, i, {j: a for j, a in addrs.items()
                                                            if j != i})) for i in (1, 2)]
    try:
        leader = nodes[0].wait_for_leader(20)
        nodes[1].wait_for_leader(20)
        follower = next(n for n in nodes if n.id != leader)
        assert follower.propose(kv_put("a", "b")).result(10) == {"ok": True}
        by_id = {n.id: n for n in nodes}
        assert by_id[leader].read(kv_get("a")).result(10) == {"value": "b"}
        assert by_id[leader].propose(kv_put("a", "c")).result(10) == {"ok": True}
        assert follower.read(kv_get("a")).result(10) == {"value": "c"}
        st = follower.status()
        assert st.role == "follower" and st.forwarded_writes == 1 and st.follower_reads == 1
    finally:
        for n in nodes:
            n.stop()


def test_a_client_frame_gets_one_answer_per_request_key(tmp_path):
    """A pipelining client's frame (proposals, a read between them, an in-flight retry)
    goes through the batched intake: every distinct request gets exactly one answer; a
    retry of a (client id, seq) still in flight supersedes the first copy (one answer for
    the key, applied once)."""
    import threading

    from josefine.messages import (ClientPropose, ClientProposeResp, ClientRead,
                                   ClientReadResp, Status)
    port = free_port_block(1)
    node = Node.start(_config(tmp_path, port), KVStateMachine())
    got: list = []
    done = threading.Event()

    def capture(identity, msgs):  # noqa: ANN001
        assert identity == b"id-1"
        from josefine.transport.codec import decode_message
        for m in msgs if isinstance(msgs, list) else [msgs]:
            got.append(decode_message(m) if type(m) is bytes else m)   # hot replies: bytes
        if len(got) >= 3:
            done.set()
    try:
        assert node.wait_for_leader(10) == 1
        node.zt.reply_client_many = capture
        node.zt.reply_client = capture
        node.intake.on_client_batch(b"id-1", [
            ClientPropose(client_id="w", seq=1, command=kv_put("k", "1")),
            ClientPropose(client_id="w2", seq=1, command=kv_put("k", "2")),
            ClientRead(client_id="r", read_id=5, query=kv_get("k")),
            ClientPropose(client_id="w", seq=1, command=kv_put("k", "1")),   # a retry
        ])
        assert done.wait(10), got
        assert node.read(kv_get("k")).result(10) in ({"value": "1"}, {"value": "2"})
        assert node.status()["applied"] == node.status()["commit"]
    finally:
        node.stop()
    props = sorted((m.client_id, m.seq, m.status, str(m.result)) for m in got
                   if type(m) is ClientProposeResp)
    assert props == [("w", 1, Status.OK, "{'ok': True}"), ("w2", 1, Status.OK, "{'ok': True}")]
    reads = [m for m in got if type(m) is ClientReadResp]
    assert len(reads) == 1 and reads[0].status == Status.OK and reads[0].read_id == 5
    assert len(got) == 3
    assert node.applier.commands_applied == 2 and node.applier.duplicates == 1


def test_concurrent_proposals_from_many_threads_all_apply(tmp_path):
    """All of a node's own proposals share one session; numbering and queueing happen
    together, so no proposal is ever applied as a stale retry (it used to happen when two
    threads queued their seqs out of order)."""
    from concurrent.futures import ThreadPoolExecutor
    port = free_port_block(1)
    node = Node.start(_config(tmp_path, port), KVStateMachine())
    try:
        node.wait_for_leader(10)

        def writer(t: int) -> list:
            futs = [node.propose(kv_put(f"k{t}", str(i))) for i in range(2000)]
            return [f.result(30) for f in futs]
        with ThreadPoolExecutor(6) as ex:
            results = [r for rs in ex.map(writer, range(6)) for r in rs]
        assert results == [{"ok": True}] * 12000
        assert node.applier.stale == 0 and node.applier.commands_applied == 12000
    finally:
        node.stop()


def test_stopped_node_and_repeated_transfers_give_clear_answers(tmp_path):
    from josefine.errors import UnavailableError
    port = free_port_block(1)
    node = Node.start(_config(tmp_path, port), KVStateMachine())
    try:
        node.wait_for_leader(10)
        # two requests for the same target both get its outcome (the second used to
        # replace the first, which then never resolved)
        a, b = node.transfer_leadership(1), node.transfer_leadership(1)
        assert a.result(10) == 1 and b.result(10) == 1
    finally:
        node.stop()
    for fut in (node.propose(b"x"), node.read(kv_get("k")), node.transfer_leadership(1)):
        with pytest.raises(UnavailableError, match="stopped"):
            fut.result(1)


def test_proposals_beyond_the_intake_bound_are_answered_busy(tmp_path):
    from josefine.errors import BusyError
    port = free_port_block(1)
    node = Node.start(_config(tmp_path, port), KVStateMachine())
    try:
        node.wait_for_leader(10)
        node.intake.max_queued = 0    # every queue "full"
        with pytest.raises(BusyError):
            node.propose(kv_put("k", "v")).result(5)
        node.intake.max_queued = Node.MAX_QUEUED_PROPOSALS
        assert node.propose(kv_put("k", "v")).result(10) == {"ok": True}
    finally:
        node.stop()


def test_waiters_expire_local_requests_with_an_answer_and_drop_remote_ones(monkeypatch):
    """A request nobody answered for the expiry time is taken out of the registry; a local
    one (a Future) is told UNKNOWN instead of hanging forever."""
    from josefine.runtime import waiters as wmod
    from josefine.messages import Status
    w = wmod.Waiters(on_remote=lambda *a: remote.append(a))
    remote: list = []
    got: list = []
    clock = [1000.0]
    monkeypatch.setattr(wmod.time, "monotonic", lambda: clock[0])
    w.add("old-local", lambda s, r, h: got.append(s))
    w.add_remote_many(["old-remote"], b"id")
    clock[0] += wmod._EXPIRE_S + 1
    w.add_remote_many([f"k{i}" for i in range(4097)], b"id")   # triggers a sweep
    assert got == [Status.UNKNOWN] and remote == []
    assert not w.has("old-local") and not w.has("old-remote") and w.has("k0")


class _PortForward:
    """A TCP forwarder on loopback, standing in for a container's or a NAT's port mapping:
    connections to `listen` are piped to `target`."""

    def __init__(self, listen: int, target: int) -> None:
        import socket
        import threading
        self.target = target
        self.server = socket.create_server(("127.0.0.1", listen))
        self.conns: list = []
        self.thread = threading.Thread(target=self._accept, daemon=True)
        self.thread.start()

    def _accept(self) -> None:
        import socket
        import threading
        while True:
            try:
                a, _ = self.server.accept()
            except OSError:
                return
            b = socket.create_connection(("127.0.0.1", self.target))
            self.conns += [a, b]
            for src, dst in ((a, b), (b, a)):
                threading.Thread(target=self._pump, args=(src, dst), daemon=True).start()

    @staticmethod
    def _pump(src, dst) -> None:  # noqa: ANN001
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.close()
                except OSError:
                    pass

    def close(self) -> None:
        self.server.close()
        for c in self.conns:
            try:
                c.close()
            except OSError:
                pass


def test_a_node_listens_on_bind_and_is_reached_at_its_advertised_address(tmp_path):
    """bind vs address: the node listens on `bind` (port B); clients reach it at `address`
    (port A), which a port mapping forwards to B, as in a container or behind NAT."""
    from josefine.client import Client
    from josefine.config import load_cluster_config
    from josefine.security import client_credentials
    bind_port = free_port_block(2)
    public_port = bind_port + 1
    advertised = f"tcp://127.0.0.1:{public_port}"
    forward = _PortForward(public_port, bind_port)
    cluster_file = make_cluster_keys(tmp_path / "keys", "embed", {1: advertised})
    cfg = NodeConfig(node_id=1, cluster_id="embed", address=advertised, peers={},
                     data_dir=str(tmp_path / "n1"), bind=f"tcp://127.0.0.1:{bind_port}",
                     secret_key_file=str(tmp_path / "keys" / "node-1.key_secret"),
                     cluster_file=str(cluster_file))
    try:
        node = Node.start(cfg, KVStateMachine())
        try:
            assert node.zt.address == f"tcp://127.0.0.1:{bind_port}"
            node.wait_for_leader(10)
            creds = client_credentials(load_cluster_config(cluster_file),
                                       source=str(cluster_file))
            with Client({1: advertised}, "embed", timeout=10, credentials=creds) as c:
                c.put("k", "v")
                assert c.get("k") == "v"
        finally:
            node.stop()
    finally:
        forward.close()


def test_a_client_write_arriving_before_the_role_actor_exists_is_served(tmp_path, monkeypatch):
    """The transport listens before the role actor starts, so on a restart a client's write
    can reach the intake first. It must wait in the proposals channel and be served once
    the role actor runs; it used to trip an assert on the I/O thread and stop the node
    (seen in the power-loss chaos test). Real socket, real I/O thread, real intake: only
    the role actor's start is held back until the write is queued."""
    import threading
    import time

    from josefine.actors import node as node_module
    from josefine.config import load_cluster_config
    from josefine.client import Client
    from josefine.security import client_credentials

    port = free_port_block(1)
    cfg = _config(tmp_path, port)
    creds = client_credentials(load_cluster_config(cfg.cluster_file), source=cfg.cluster_file)
    client = Client({1: cfg.address}, "embed", timeout=20, credentials=creds)
    outcome: dict = {}

    def write() -> None:
        try:
            client.put("early", "bird")
            outcome["ok"] = True
        except Exception as exc:  # noqa: BLE001 - reported by the assert below
            outcome["error"] = exc
    writer = threading.Thread(target=write, daemon=True)
    real_start = node_module.RoleActor.start

    def held_start(node_id, links, fatal, core, gate, proposal_inbox, *a, **kw):  # noqa: ANN001
        writer.start()
        deadline = time.monotonic() + 15
        while len(proposal_inbox) == 0:
            assert time.monotonic() < deadline, "the client's write never reached the intake"
            time.sleep(0.01)
        return real_start(node_id, links, fatal, core, gate, proposal_inbox, *a, **kw)

    monkeypatch.setattr(node_module.RoleActor, "start", held_start)
    node = Node.start(cfg, KVStateMachine())
    try:
        writer.join(30)
        assert outcome == {"ok": True}
        assert not node.stopped and node.fatal_error is None
        assert node.wait_for_leader(10) == 1
        assert client.get("early") == "bird"
    finally:
        client.close()
        node.stop()
