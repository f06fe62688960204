"""Membership changes through the embedding API (docs/protocol.md A.12, "Runtime"): real
nodes in this process, growing, shrinking, and refusing bad changes."""
from __future__ import annotations

import threading
import time
from concurrent.futures import wait
from typing import Any

import pytest

from josefine import KVStateMachine, Node, NodeConfig
from josefine.client import Client
from josefine.errors import JosefineError, NotLeaderError, RejectedError
from josefine.fsm.kv import kv_get, kv_put
from josefine.launch.ports import free_port_block

pytestmark = pytest.mark.timeout(120)

CLUSTER = "mship"


def _until(pred, timeout: float, what: str):  # noqa: ANN001, ANN202
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        v = pred()
        if v:
            return v
        time.sleep(0.02)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


class _Cluster:
    """Embedded insecure nodes on consecutive loopback ports; all stopped at the end."""

    def __init__(self, tmp_path, n: int) -> None:  # noqa: ANN001
        self.tmp = tmp_path
        self.base = free_port_block(n)
        self.nodes: dict[int, Node] = {}

    def addr(self, i: int) -> str:
        return f"tcp://127.0.0.1:{self.base + i - 1}"

    def config(self, i: int, peers: list[int], join: bool = False, **kw: Any) -> NodeConfig:
        return NodeConfig(node_id=i, cluster_id=CLUSTER, address=self.addr(i),
                          peers={p: self.addr(p) for p in peers},
                          data_dir=str(self.tmp / f"n{i}"), insecure=True, join=join,
                          tick_ms=10, fsync=False, **kw)

    def start(self, i: int, peers: list[int], join: bool = False, **kw: Any) -> Node:
        node = self.nodes[i] = Node.start(self.config(i, peers, join, **kw), KVStateMachine())
        return node

    def stop_all(self) -> None:
        for node in self.nodes.values():
            node.stop()


def _roles(node: Node) -> dict[int, str]:
    return {m["id"]: m["role"] for m in node.status().members}


def _promote_when_caught_up(leader: Node, node_id: int, timeout: float = 20.0):  # noqa: ANN202
    """Promote, retrying while the leader says the learner still lags."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return leader.promote(node_id).result(10)
        except RejectedError as exc:
            if "not caught up" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def test_a_cluster_grows_from_one_to_three_voters_and_shrinks_with_writes_flowing(tmp_path):
    c = _Cluster(tmp_path, 3)
    stop = threading.Event()
    acked: list[int] = []
    writer_errors: list[Exception] = []
    client = None
    writer = None
    try:
        n1 = c.start(1, [])
        assert n1.wait_for_leader(10) == 1
        assert n1.propose(kv_put("k0", "0")).result(10) == {"ok": True}
        acked.append(0)
        client = Client({i: c.addr(i) for i in (1, 2, 3)}, CLUSTER, timeout=10,
                        request_timeout=0.5)

        def write() -> None:
            i = 1
            while not stop.is_set():
                try:
                    client.put(f"k{i}", str(i))
                    acked.append(i)
                except JosefineError as exc:   # not acknowledged: not checked below
                    writer_errors.append(exc)
                i += 1
        writer = threading.Thread(target=write, daemon=True)
        writer.start()
        _until(lambda: len(acked) > 20, 10, "writes before growing")

        # Node 2 joins: started with the current members as peers, it is no voter in its
        # own configuration, so it never campaigns while it waits to be added.
        n2 = c.start(2, [1], join=True)
        assert _roles(n2) == {1: "voter"}
        cfg = n1.add_learner(2, c.addr(2)).result(10)
        assert cfg.voters == {1} and cfg.learners == {2}
        assert n2.wait_for_leader(10) == 1
        with pytest.raises(NotLeaderError) as ei:   # a follower points at the leader
            n2.add_learner(3, c.addr(3)).result(10)
        assert ei.value.leader_hint == 1
        assert _promote_when_caught_up(n1, 2).voters == {1, 2}
        assert n2.status().elections == 0   # it never campaigned while joining

        n3 = c.start(3, [1, 2], join=True)
        assert n1.add_learner(3, c.addr(3)).result(10).learners == {3}
        assert _promote_when_caught_up(n1, 3).voters == {1, 2, 3}
        want = {1: "voter", 2: "voter", 3: "voter"}
        _until(lambda: all(_roles(n) == want for n in (n1, n2, n3)), 10,
               "every node to see three voters")
        assert n1.status().members[2]["address"] == c.addr(3)
        assert set(n1.zt.peers) == {2, 3} and set(n3.zt.peers) == {1, 2}
        before = len(acked)
        _until(lambda: len(acked) > before + 20, 10, "writes with three voters")

        # Shrink: remove voter 3, then stop it. The others drop their links to it.
        assert n1.remove_member(3).result(10).voters == {1, 2}
        _until(lambda: all(_roles(n) == {1: "voter", 2: "voter"} for n in (n1, n2)), 10,
               "the removal on both remaining nodes")
        _until(lambda: set(n1.zt.peers) == {2} and set(n2.zt.peers) == {1}, 10,
               "links to the removed node dropped")
        c.nodes.pop(3).stop()
        before = len(acked)
        _until(lambda: len(acked) > before + 20, 10, "writes after the removal")
        stop.set()
        writer.join(20)
        assert not writer.is_alive()
        assert n1.status().role == "leader"
        # Every acknowledged write is readable.
        futs = {i: n1.read(kv_get(f"k{i}")) for i in acked}
        wait(list(futs.values()), timeout=30)
        missing = [i for i, f in futs.items() if f.result() != {"value": str(i)}]
        assert not missing, f"acknowledged writes lost: {missing[:10]}"
        assert len(acked) > 60
    finally:
        stop.set()
        if writer is not None:
            writer.join(20)
        if client is not None:
            client.close()
        c.stop_all()


def test_bad_membership_changes_are_refused_by_name_and_change_nothing(tmp_path):
    c = _Cluster(tmp_path, 4)
    try:
        n1 = c.start(1, [])
        n1.wait_for_leader(10)
        n1.propose(kv_put("a", "1")).result(10)   # the leader has committed in its term
        start = n1.status().members

        def refused(fut, match: str) -> None:  # noqa: ANN001
            with pytest.raises(RejectedError, match=match):
                fut.result(10)
            assert n1.status().members == start   # nothing changed

        refused(n1.remove_member(1), "node 1 is the last voter")
        refused(n1.add_learner(1, c.addr(2)), r"node 1 is already a member \(voter\)")
        refused(n1.add_learner(2, c.addr(1)), f"address {c.addr(1)} is already node 1's")
        refused(n1.add_learner(2, "127.0.0.1:80"), "node 2's address: expected 'tcp://")
        refused(n1.promote(7), "node 7 is not a member")
        refused(n1.remove_member(7), "node 7 is not a member")
        refused(n1.promote(0), "node id must be an integer >= 1")

        # A second change while the first is not committed yet: both are queued before the
        # leader's write of the first is durable, so the first is still in progress.
        first = n1.add_learner(2, c.addr(2))
        second = n1.add_learner(3, c.addr(3))
        with pytest.raises(RejectedError, match="another membership change .* not "
                                                "committed yet"):
            second.result(10)
        assert first.result(10).learners == {2}   # node 2 does not even run: learners
        assert _roles(n1) == {1: "voter", 2: "learner"}   # don't count toward commit

        # Node 2 is not running, so it lags: it cannot be promoted.
        with pytest.raises(RejectedError, match="learner 2 is not caught up"):
            n1.promote(2).result(10)
        assert _roles(n1) == {1: "voter", 2: "learner"}
        assert n1.remove_member(2).result(10).ids == {1}
        assert _roles(n1) == {1: "voter"} and n1.zt.peers == {}

        # The same change twice at once: the second is refused here, and the first still
        # gets its own outcome (the core's refusal of a second one would be keyed alike).
        first = n1.add_learner(2, c.addr(2))
        with pytest.raises(RejectedError, match="add_learner of node 2 is already in progress"):
            n1.add_learner(2, c.addr(2)).result(10)
        assert first.result(10).learners == {2}
    finally:
        c.stop_all()


def test_a_restarted_node_takes_the_membership_from_its_snapshot(tmp_path):
    """Once the CONFIG blocks are compacted away, the snapshot is the only record of the
    membership: a joined node restarted with its original config (join, one peer) must
    come back with the three voters, and link to all of them."""
    c = _Cluster(tmp_path, 3)
    try:
        n1 = c.start(1, [])
        n1.wait_for_leader(10)
        n1.propose(kv_put("a", "1")).result(10)
        for i, peers in ((2, [1]), (3, [1, 2])):
            c.start(i, peers, join=True)
            n1.add_learner(i, c.addr(i)).result(10)
            _promote_when_caught_up(n1, i)
        last_config = n1.status().commit[1]
        n2 = c.nodes[2]
        _until(lambda: n2.status().applied[1] >= last_config, 10, "node 2 to apply it all")
        for k in range(2):   # two snapshots: the chain is cut at the older one
            n1.propose(kv_put(f"b{k}", "x")).result(10)
            _until(lambda: n2.status().applied == n1.status().commit, 10, "node 2 to apply")
            n2.take_snapshot()
        _until(lambda: n2.status().base[1] > last_config, 10, "node 2's chain compacted "
               "past the CONFIG blocks")
        n2.stop()
        n2 = c.nodes[2] = Node.start(c.config(2, [1], join=True), KVStateMachine())
        assert _roles(n2) == {1: "voter", 2: "voter", 3: "voter"}
        assert set(n2.zt.peers) == {1, 3}
        assert n1.propose(kv_put("c", "y")).result(10) == {"ok": True}
        _until(lambda: n2.status().applied == n1.status().applied, 10, "node 2 to catch up")
        assert n2.status().sm_digest == n1.status().sm_digest
    finally:
        c.stop_all()


def test_a_new_node_replaying_old_configurations_keeps_hearing_its_leader(tmp_path):
    """Node 4 catches up block by block through configurations that do not list the
    leader (node 3 joined later); its transport must keep the link to the leader it
    follows, or it would refuse the leader's next blocks and never catch up."""
    c = _Cluster(tmp_path, 4)
    one = {"max_batch_blocks": 1, "max_inflight": 1}
    try:
        n1 = c.start(1, [], **one)
        n1.wait_for_leader(10)
        n1.propose(kv_put("a", "1")).result(10)
        for i, peers in ((2, [1]), (3, [1, 2])):
            c.start(i, peers, join=True, **one)
            n1.add_learner(i, c.addr(i)).result(10)
            _promote_when_caught_up(n1, i)
        assert n1.transfer_leadership(3).result(10) == 3
        n3 = c.nodes[3]
        _until(lambda: n3.status().role == "leader", 10, "node 3 to lead")
        n3.propose(kv_put("b", "2")).result(10)   # its first commit of its term
        assert n3.remove_member(1).result(10).voters == {2, 3}
        c.nodes.pop(1).stop()
        for k in range(5):
            n3.propose(kv_put(f"c{k}", "3")).result(10)
        # Node 4's first CONFIG block on its way up says {1 voter, 2 learner}: no node 3.
        c.start(4, [2, 3], join=True, **one)
        n3.add_learner(4, c.addr(4)).result(10)
        assert _promote_when_caught_up(n3, 4).voters == {2, 3, 4}
        n4 = c.nodes[4]
        _until(lambda: n4.status().applied == n3.status().applied, 10, "node 4 caught up")
        assert set(n4.zt.peers) == {2, 3}
    finally:
        c.stop_all()
