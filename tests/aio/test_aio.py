"""asyncio faces: an embedded node awaited without threads of the application's own, and
`AsyncClient` against a real cluster whose leader is killed in the middle."""
from __future__ import annotations

import asyncio
import signal
import threading

import pytest

from josefine import KVStateMachine, Node
from josefine.aio import AsyncClient, AsyncNode
from josefine.errors import NotLeaderError, UnavailableError
from josefine.fsm.kv import kv_cas, kv_get, kv_put
from josefine.launch.ports import free_port_block
from josefine.config import NodeConfig
from josefine.security import make_cluster_keys
from tests.cluster.helpers import leader_of, running_cluster, statuses

pytestmark = pytest.mark.timeout(180)


def _config(tmp_path, port: int, peers=None) -> NodeConfig:  # noqa: ANN001
    """Node 1 of a secure cluster (keys for every node made with make_cluster_keys)."""
    address = f"tcp://127.0.0.1:{port}"
    cluster_file = make_cluster_keys(tmp_path / "keys", "aio", {**(peers or {}), 1: address})
    return NodeConfig(node_id=1, cluster_id="aio", address=address, peers=peers or {},
                      data_dir=str(tmp_path / "n1"),
                      secret_key_file=str(tmp_path / "keys" / "node-1.key_secret"),
                      cluster_file=str(cluster_file))


def test_an_embedded_node_is_awaited_without_extra_threads(tmp_path):
    node = Node.start(_config(tmp_path, free_port_block(1)), KVStateMachine())
    try:
        node.wait_for_leader(10)   # the node's own threads (timer included) are all up
        before = {t.ident for t in threading.enumerate()}

        async def main() -> tuple:
            an = AsyncNode(node)
            assert await an.wait_for_leader(10) == 1
            r1 = await an.propose(kv_put("k", "v1"))
            many = await asyncio.gather(*(an.propose(kv_put(f"p{i}", str(i))) for i in range(50)))
            r2 = await an.propose(kv_cas("k", "v1", "v2"))
            got = await an.read(kv_get("k"))
            st = await an.status()
            to_self = await an.transfer_leadership(1)
            return r1, many, r2, got, st, to_self

        r1, many, r2, got, st, to_self = asyncio.run(main())
        assert r1 == {"ok": True} and all(m == {"ok": True} for m in many)
        assert r2["ok"] is True and got == {"value": "v2"}
        assert st.role == "leader" and st.applied == st.commit and to_self == 1
        # the wrappers started no thread (asyncio.run's loop lives on this thread)
        assert [t.name for t in threading.enumerate() if t.ident not in before] == []
    finally:
        node.stop()

    async def after_stop() -> None:
        an = AsyncNode(node)
        assert (await an.status()).role == "stopped"
        with pytest.raises(UnavailableError, match="stopped"):
            await an.propose(kv_put("k", "late"))
    asyncio.run(after_stop())


def test_an_async_node_that_is_not_leader_raises_the_public_error(tmp_path):
    """A 2-node config whose peer never starts: no leader, so a proposal is refused."""
    cfg = _config(tmp_path, free_port_block(2), peers={2: "tcp://127.0.0.1:1"})
    node = Node.start(cfg, KVStateMachine())
    try:
        async def main() -> None:
            with pytest.raises(NotLeaderError):
                await AsyncNode(node).propose(kv_put("k", "v"))
        asyncio.run(main())
    finally:
        node.stop()


@pytest.mark.cluster
def test_async_client_put_get_cas_across_a_leader_kill(tmp_path):
    with running_cluster(tmp_path / "cluster") as rc:
        launcher, addrs, creds = rc.launcher, rc.addrs, rc.creds

        async def main() -> dict[str, str]:
            acked: dict[str, str] = {}
            async with AsyncClient.from_cluster_file(str(launcher.cluster_path), timeout=30,
                                                     concurrency=4) as c:
                async def writer(w: int, n: int, start: int) -> None:
                    for i in range(start, start + n):
                        await c.put(f"w{w}-{i}", f"v{i}")
                        acked[f"w{w}-{i}"] = f"v{i}"
                await asyncio.gather(*(writer(w, 25, 0) for w in range(4)))
                assert await c.cas("w0-0", "v0", "swapped") is True
                acked["w0-0"] = "swapped"
                assert await c.cas("w0-0", "v0", "again") is False
                old = leader_of(addrs, launcher.cluster_id, creds)
                assert old is not None
                old_term = statuses(addrs, launcher.cluster_id, credentials=creds)[old]["term"]
                killer = asyncio.get_running_loop().run_in_executor(
                    None, launcher.kill, old, signal.SIGKILL)
                killed, *_ = await asyncio.gather(killer, *(writer(w, 25, 25) for w in range(4)))
                assert killed is True
                new = leader_of(addrs, launcher.cluster_id, creds)   # writes went on after it
                assert new is not None
                assert statuses(addrs, launcher.cluster_id, credentials=creds)[new]["term"] \
                    > old_term
                for k, v in acked.items():
                    assert await c.get(k) == v, k
                assert await c.delete("w1-0") is True and await c.get("w1-0") is None
                del acked["w1-0"]
            return acked

        acked = asyncio.run(main())
        assert len(acked) == 4 * 50 - 1
