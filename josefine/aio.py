"""asyncio faces of Josefine: `AsyncNode` for an embedded node, `AsyncClient` for a cluster.

`AsyncNode` adds no thread: `Node.propose/read/transfer_leadership` already return
`concurrent.futures.Future`s completed by the node's own actor threads, and
`asyncio.wrap_future` hands each result to the event loop thread-safely. An asyncio
application can therefore embed a node and await its operations without threads of its own.

`AsyncClient` has the verbs of `josefine.client.Client`, awaitable. The blocking client
already carries the hard parts (leader hints, retries under the same (client id, seq) so
a write applies exactly once, Curve credentials), so the asyncio client runs its requests
on a small pool of its own threads rather than copying that logic onto `zmq.asyncio`:
each pool thread is one client session of the underlying `Client`, and at most
`concurrency` requests are in flight at once.
"""
from __future__ import annotations

import asyncio
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable, Mapping, Sequence, TypeVar

from josefine.actors.node import Node
from josefine.client import Client
from josefine.errors import UnavailableError
from josefine.messages import StatusQuery
from josefine.runtime.status import NodeStatus
from josefine.security import ClientCredentials

__all__ = ["AsyncClient", "AsyncNode"]

T = TypeVar("T")


class AsyncNode:
    """Awaitable operations of a running `Node` (start it with `Node.start` as usual)."""

    def __init__(self, node: Node) -> None:
        self.node = node

    async def propose(self, data: bytes) -> Any:
        """Replicate one command; the state machine's result once committed and applied."""
        return await asyncio.wrap_future(self.node.propose(data))

    async def read(self, query: bytes) -> Any:
        """Linearizable read (ReadIndex)."""
        return await asyncio.wrap_future(self.node.read(query))

    async def transfer_leadership(self, to: int) -> int:
        """Hand this (leader) node's leadership to node `to`."""
        return int(await asyncio.wrap_future(self.node.transfer_leadership(to)))

    async def wait_for_leader(self, timeout: float = 10.0, interval: float = 0.02) -> int:
        """Until this node knows a leader (itself or a peer); its id. Polls the node's status
        between sleeps on the event loop, never blocking it for long."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            st = await self.status()
            if st.role == "stopped" or self.node.fatal_error is not None:
                raise UnavailableError(f"node {self.node.id} stopped")
            if st.leader is not None:
                return int(st.leader)
            await asyncio.sleep(interval)
        raise UnavailableError(f"no leader known to node {self.node.id} within {timeout} s")

    async def status(self, timeout: float = 5.0) -> NodeStatus:
        """The node's `NodeStatus`, answered by its role actor (no thread waits for it)."""
        node = self.node
        if node.stopped or node.links.role is None:
            return NodeStatus(id=node.id, role="stopped")
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[NodeStatus] = loop.create_future()

        def settle(st: NodeStatus) -> None:
            if not fut.done():
                fut.set_result(st)

        def reply(st: NodeStatus) -> None:   # on the role actor's thread
            loop.call_soon_threadsafe(settle, st)
        node.intake.tell_role(StatusQuery(reply=reply))
        try:
            return await asyncio.wait_for(fut, timeout)
        except TimeoutError:
            raise UnavailableError(f"node {node.id} did not answer a status query within "
                                   f"{timeout} s") from None


class AsyncClient:
    """`Client`'s verbs as coroutines. Use `async with AsyncClient(...) as c:` or `aclose()`."""

    def __init__(self, addresses: Sequence[str] | Mapping[int, str], cluster_id: str, *,
                 timeout: float = 10.0, request_timeout: float = 1.0,
                 credentials: ClientCredentials | None = None, concurrency: int = 8) -> None:
        self._wrap(Client(addresses, cluster_id, timeout=timeout,
                          request_timeout=request_timeout, credentials=credentials),
                   concurrency)

    def _wrap(self, client: Client, concurrency: int) -> None:
        if concurrency < 1:
            raise ValueError("concurrency must be >= 1")
        self.client = client
        self._pool = ThreadPoolExecutor(max_workers=concurrency,
                                        thread_name_prefix="josefine-aio")

    @classmethod
    def from_cluster_file(cls, path: str | None = None, *, admin: bool = False,
                          key_file: str | None = None, concurrency: int = 8,
                          **kw: Any) -> "AsyncClient":
        """As `Client.from_cluster_file`: addresses, cluster id and key from cluster.toml."""
        self = cls.__new__(cls)
        self._wrap(Client.from_cluster_file(path, admin=admin, key_file=key_file, **kw),
                   concurrency)
        return self

    async def _run(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._pool, fn, *args)

    async def put(self, key: str, value: Any) -> None:
        await self._run(self.client.put, key, value)

    async def get(self, key: str) -> Any:
        return await self._run(self.client.get, key)

    async def delete(self, key: str) -> bool:
        return await self._run(self.client.delete, key)

    async def cas(self, key: str, expected: Any, new: Any) -> bool:
        return await self._run(self.client.cas, key, expected, new)

    async def propose(self, command: bytes) -> Any:
        return await self._run(self.client.propose, command)

    async def read(self, query: bytes) -> Any:
        return await self._run(self.client.read, query)

    async def aclose(self) -> None:
        """Wait for requests in flight, then close every session's sockets."""
        await asyncio.get_running_loop().run_in_executor(None, self._pool.shutdown, True)
        self.client.close()

    async def __aenter__(self) -> "AsyncClient":
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.aclose()
