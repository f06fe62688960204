"""The snapshot stream between two nodes' snapshot actors (josefine/actors/snapshots.py):
a real file crosses in acknowledged chunks, survives a lost chunk and a receiver that
restarts mid-way, and a file that does not verify is refused and reported, never handed
to the core. The two actors run for real; only the wire between them is a function here."""
from __future__ import annotations

import os
import threading
import time
from pathlib import Path
from typing import Any, Callable

import pytest

from josefine.actors.snapshots import RECV_SUFFIX, SnapshotActor
from josefine.messages import InstallSnapshot, SnapshotChunk, SnapshotStatus
from josefine.snapshot.files import SnapshotWriter, name_for, verify
from josefine.snapshot.meta import SnapshotMeta
from josefine.types import BlockId

pytestmark = pytest.mark.timeout(60)

CLUSTER = "xfer"
LAST = BlockId(3, 500)
DIGEST = bytes(range(32))


class _Ref:
    """Stands in for an actor ref: collects what it is told."""

    def __init__(self) -> None:
        self.got: list[Any] = []

    def tell(self, msg: Any) -> None:
        self.got.append(msg)


class _Wire:
    """Links of both nodes: peer messages go to the other node's snapshot actor, through
    `drop` (return True to lose a message)."""

    def __init__(self) -> None:
        self.actors: dict[int, Any] = {}
        self.drop: Callable[[Any], bool] = lambda m: False
        self.roles = {1: _Ref(), 2: _Ref()}

    def links(self, me: int) -> Any:
        wire = self

        class L:
            role = wire.roles[me]
            snapshots = None

            @staticmethod
            def send_msgs(msgs: list[Any]) -> None:
                for m in msgs:
                    ref = wire.actors.get(m.dst)
                    if ref is not None and not wire.drop(m):
                        try:
                            ref.tell(m)
                        except Exception:  # noqa: BLE001 - the receiver was stopped
                            pass
        return L


def _snapshot_file(directory: Path, size: int = 600_000) -> Path:
    meta = SnapshotMeta(CLUSTER, LAST, DIGEST, frozenset({1, 2, 3}), 1)
    with SnapshotWriter(directory, meta) as w:
        w.write(os.urandom(size))
    return w.path


def _wait(pred: Callable[[], Any], what: str, timeout: float = 20.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        v = pred()
        if v:
            return v
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.fixture
def pair(tmp_path):
    wire = _Wire()
    delivered: list[InstallSnapshot] = []
    dirs = {1: tmp_path / "a", 2: tmp_path / "b"}
    for d in dirs.values():
        d.mkdir()
    refs = []

    def start(me: int) -> Any:
        ref = SnapshotActor.start(me, wire.links(me), lambda where, exc: None, dirs[me],
                                  CLUSTER, delivered.append, chunk_size=64 * 1024, window=3,
                                  stall_s=0.3, give_up_s=3.0)
        wire.actors[me] = ref
        refs.append(ref)
        return ref

    start(1)
    start(2)
    yield wire, dirs, delivered, start
    for ref in refs:
        try:
            ref.stop()
        except Exception:  # noqa: BLE001 - stopped by the test already
            pass


def _offer(wire: _Wire, digest: bytes = DIGEST) -> None:
    wire.actors[1].tell(InstallSnapshot(src=1, dst=2, term=4, last=LAST, last_digest=digest,
                                        voters=(1, 2, 3)))


def test_a_snapshot_crosses_in_chunks_and_is_handed_over_once_durable(pair):
    wire, dirs, delivered, _ = pair
    src = _snapshot_file(dirs[1])
    chunks: list[SnapshotChunk] = []
    wire.drop = lambda m: (chunks.append(m) if type(m) is SnapshotChunk else None) and False
    _offer(wire)
    got = _wait(lambda: delivered, "the core to get the snapshot")
    assert got[0].last == LAST and got[0].last_digest == DIGEST and got[0].voters == (1, 2, 3)
    final = dirs[2] / name_for(LAST)
    assert final.read_bytes() == src.read_bytes() and verify(final)
    assert len(chunks) == -(-src.stat().st_size // (64 * 1024)), "one chunk per 64 KiB"
    status = _wait(lambda: [m for m in wire.roles[1].got if type(m) is SnapshotStatus],
                   "the sender's report")
    assert status[0].ok and status[0].peer == 2
    assert not list(dirs[2].glob(f"*{RECV_SUFFIX}*"))


def test_a_lost_chunk_is_sent_again(pair):
    wire, dirs, delivered, _ = pair
    src = _snapshot_file(dirs[1])
    lost = threading.Event()

    def drop(m: Any) -> bool:
        if type(m) is SnapshotChunk and m.offset == 2 * 64 * 1024 and not lost.is_set():
            lost.set()
            return True
        return False
    wire.drop = drop
    _offer(wire)
    _wait(lambda: delivered, "the core to get the snapshot")
    assert lost.is_set()
    assert (dirs[2] / name_for(LAST)).read_bytes() == src.read_bytes()


def test_a_receiver_restarting_mid_transfer_gets_it_from_the_start(pair):
    wire, dirs, delivered, start = pair
    src = _snapshot_file(dirs[1])
    seen: list[int] = []
    hold = threading.Event()

    def drop(m: Any) -> bool:
        if type(m) is SnapshotChunk:
            seen.append(m.offset)
            if m.offset >= 3 * 64 * 1024 and not hold.is_set():
                return True   # the receiver "crashes" after three chunks
        return False
    wire.drop = drop
    _offer(wire)
    _wait(lambda: len([o for o in seen if o >= 3 * 64 * 1024]) > 0, "chunks past the cut")
    wire.actors[2].stop()
    assert not list(dirs[2].glob(f"*{RECV_SUFFIX}*")), "a stopping receiver cleans up"
    stale = dirs[2] / f"{name_for(LAST)}{RECV_SUFFIX}-1"
    stale.write_bytes(b"half a file")   # what a crash (no clean stop) would leave
    start(2)   # a new receiver on the same directory: stale temp files go
    # (on_start runs on the actor's thread; a new transfer may then make its own temp
    # file under that name)
    _wait(lambda: not stale.exists() or not stale.read_bytes().startswith(b"half"),
          "the stale temp file to go")
    hold.set()
    _wait(lambda: delivered, "the transfer to restart and finish")
    assert (dirs[2] / name_for(LAST)).read_bytes() == src.read_bytes()
    assert seen.count(0) >= 2, "it started over from offset 0"


def test_a_file_that_does_not_match_the_offer_is_refused_and_reported(pair):
    wire, dirs, delivered, _ = pair
    _snapshot_file(dirs[1])
    _offer(wire, digest=bytes(32))   # the leader claims another digest than the file has
    status = _wait(lambda: [m for m in wire.roles[1].got if type(m) is SnapshotStatus],
                   "the sender's report")
    assert not status[0].ok
    time.sleep(0.2)   # (nothing more is coming; a late delivery would show up here)
    assert delivered == []
    assert not (dirs[2] / name_for(LAST)).exists()
    assert not list(dirs[2].glob(f"*{RECV_SUFFIX}*"))


def test_a_missing_file_is_reported_at_once(pair):
    wire, _, delivered, _ = pair
    _offer(wire)
    status = _wait(lambda: [m for m in wire.roles[1].got if type(m) is SnapshotStatus],
                   "the sender's report")
    assert not status[0].ok and status[0].last == LAST and delivered == []
