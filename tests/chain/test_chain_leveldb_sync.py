"""`LevelDBStore` asks LevelDB itself for a synced write exactly when the Ready needs one.

`store.syncs` counts what the store *meant* to do; these tests look one level lower, at the
calls that reach plyvel, because a store that counts a sync but hands plyvel `sync=False`
(or drops the flag) loses acked data on a power cut and nothing else would notice. The
plyvel handle is wrapped by replacing the module's `plyvel` with one whose `DB` returns a
recording proxy (plyvel's own types can be neither subclassed nor patched).
"""
from __future__ import annotations

import types
from typing import Self

import plyvel
import pytest

import josefine.chain.leveldb as leveldb_mod
from josefine.runtime.executor import CommitMarker, ReadyRouter, Route
from josefine.runtime.writer import Writer
from josefine.chain.block import BlockKind, genesis, make_block
from josefine.chain.leveldb import LevelDBStore
from josefine.chain.store import HardState
from josefine.messages import AppendBlocks, Heartbeat, VoteReq
from josefine.raft.core import CoreConfig, RaftCore
from josefine.raft.ready import Ready
from josefine.types import GENESIS_ID

pytestmark = pytest.mark.timeout(60)

CLUSTER = "sync"
G = genesis(CLUSTER)


class _BatchSpy:
    def __init__(self, real, sync: bool, log: list) -> None:
        self._real, self._sync, self._log = real, sync, log

    def put(self, key: bytes, value: bytes) -> None:
        self._real.put(key, value)

    def delete(self, key: bytes) -> None:
        self._real.delete(key)

    def write(self) -> None:
        self._real.write()
        self._log.append(("batch", self._sync))

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.write()


class _DBSpy:
    """A plyvel DB whose mutating calls are logged as (kind, sync as plyvel received it)."""

    def __init__(self, real, log: list) -> None:
        self._real, self._log = real, log

    def write_batch(self, transaction: bool = False, sync: bool = False) -> _BatchSpy:
        return _BatchSpy(self._real.write_batch(transaction=transaction, sync=sync),
                         bool(sync), self._log)

    def put(self, key: bytes, value: bytes, sync: bool = False) -> None:
        self._real.put(key, value, sync=sync)
        self._log.append(("put", bool(sync)))

    def delete(self, key: bytes, sync: bool = False) -> None:
        self._real.delete(key, sync=sync)
        self._log.append(("delete", bool(sync)))

    def __getattr__(self, name: str):
        return getattr(self._real, name)


@pytest.fixture
def plyvel_log(monkeypatch):
    log: list = []
    fake = types.SimpleNamespace(DB=lambda *a, **k: _DBSpy(plyvel.DB(*a, **k), log))
    monkeypatch.setattr(leveldb_mod, "plyvel", fake)
    return log


@pytest.fixture
def store(tmp_path, plyvel_log):
    s = LevelDBStore(tmp_path / "db", CLUSTER)
    plyvel_log.clear()   # opening writes genesis; the tests look at what comes after
    yield s
    s.close()


A = make_block(G, 1, BlockKind.NOOP, b"")
B = make_block(A, 1, BlockKind.NOOP, b"")

WRITES = {
    "hard state": {"hard_state": HardState(1, 2)},
    "blocks and head": {"blocks": [A, B], "head": B.id},
    "commit marker": {"blocks": [A], "commit": A.id},
    "base and compaction": {"blocks": [A, B], "head": B.id, "base": A},
}


@pytest.mark.parametrize("what", sorted(WRITES))
@pytest.mark.parametrize("sync", [True, False])
def test_write_hands_plyvel_the_sync_flag_it_was_given(store, plyvel_log, what, sync):
    store.write(**WRITES[what], sync=sync)
    assert plyvel_log == [("batch", sync)]   # one batch: all-or-nothing, synced as asked
    assert store.syncs == int(sync)


def write_ready(router: ReadyRouter, writer: Writer, r: Ready) -> None:
    """Persist one Ready exactly as a node does: the runtime's router decides whether it
    goes to the writer at all, the writer plans and writes it (josefine/runtime/)."""
    routed = router.route(r, backlog=False)
    if routed.route is Route.QUEUE:
        writer.write(routed.queued)


def test_a_ready_that_needs_sync_reaches_plyvel_synced_and_a_commit_marker_does_not(
        store, plyvel_log):
    core = RaftCore(CoreConfig(node_id=1, voters=frozenset({1, 2, 3}), election_ticks=100),
                    G, loader=store.get_block)
    core.start()

    steps = [
        ("vote", VoteReq(src=2, dst=1, term=3, head=GENESIS_ID)),
        ("append", AppendBlocks(src=2, dst=1, term=3, prev=GENESIS_ID,
                                blocks=(make_block(G, 3, BlockKind.NOOP, b""),),
                                commit=GENESIS_ID, seq=1)),
    ]
    b1 = steps[1][1].blocks[0]
    steps.append(("commit", Heartbeat(src=2, dst=1, term=3, commit=b1.id, seq=2)))
    seen = {}
    router, writer = ReadyRouter(), Writer(store, fsync=True)
    for name, msg in steps:
        r = core.step(msg)
        plyvel_log.clear()
        write_ready(router, writer, r)
        seen[name] = (r, list(plyvel_log))

    r, log = seen["vote"]
    assert r.needs_sync and r.hard_state == HardState(3, 2) and r.messages
    assert log == [("batch", True)]
    r, log = seen["append"]
    assert r.needs_sync and r.blocks == [b1] and r.messages
    assert log == [("batch", True)]
    r, log = seen["commit"]
    assert not r.needs_sync and r.commit == b1.id, r
    assert log == []   # the lazy marker waits for the next write: no write, no fsync
    # ...and rides along with it
    plyvel_log.clear()
    b2 = make_block(b1, 3, BlockKind.NOOP, b"")
    write_ready(router, writer, core.step(AppendBlocks(src=2, dst=1, term=3, prev=b1.id,
                                                       blocks=(b2,), commit=GENESIS_ID,
                                                       seq=3)))
    assert plyvel_log == [("batch", True)]
    assert store.load().commit == b1.id and store.load().head == b2.id
    # a write of the marker alone is never synced
    plyvel_log.clear()
    writer.write([CommitMarker(b2.id)])
    assert plyvel_log == [("batch", False)]
    # and with fsync off (benchmarks), nothing asks for one
    plyvel_log.clear()
    b3 = make_block(b2, 3, BlockKind.NOOP, b"")
    write_ready(ReadyRouter(), Writer(store, fsync=False),
                core.step(AppendBlocks(src=2, dst=1, term=3, prev=b2.id, blocks=(b3,),
                                       commit=b2.id, seq=4)))
    assert plyvel_log == [("batch", False)]
    assert store.load().hard_state == HardState(3, 2) and store.load().head == b3.id
