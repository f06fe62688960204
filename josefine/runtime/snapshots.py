"""A node's snapshots at run time: taking them, choosing one on restart (docs/protocol.md
A.13, A.14; file format in docs/snapshots.md).

The pure core only hears that a snapshot exists (`SnapshotTaken`) and asks for one to be
sent (`InstallSnapshot`); everything that touches files is here and in
josefine/actors/snapshots.py (the chunk stream between nodes).

Durability order, which restart relies on: a snapshot file is durable (fsync, rename,
directory fsync) before the core hears of it, so the store's base, which the core moves
only after that, always has a valid file at or above it. `prune` keeps the two newest, and
the core compacts only up to the older of them (`keep_previous_snapshot`), so a torn
newest file still leaves one to start from.
"""
from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, cast

from josefine.chain.block import Block
from josefine.errors import JosefineError
from josefine.fsm.applier import Applier, SnapshotJob
from josefine.snapshot.files import (CorruptSnapshotError, SnapshotFile, SnapshotReader,
                                     SnapshotWriter, list_snapshots, name_for, prune, verify)
from josefine.snapshot.meta import SnapshotMeta
from josefine.types import GENESIS_ID, BlockId

__all__ = ["KEEP_SNAPSHOTS", "SNAPSHOT_DIR", "NoUsableSnapshotError", "SnapshotStats",
           "SnapshotTaker", "choose_restart_snapshot", "restore_from"]

log = logging.getLogger(__name__)

SNAPSHOT_DIR = "snapshots"
"""Name of the snapshot directory inside a node's data dir."""
KEEP_SNAPSHOTS = 2
"""Snapshot files kept after each new one: the newest and the one the chain is cut at."""


@dataclass
class SnapshotStats:
    """Counters of one node's snapshot work, for status and metrics. Each field has one
    writer (the FSM driver, its snapshot thread, or the snapshot actor); readers may see
    a value a moment old."""

    taken: int = 0
    """Snapshots this node wrote of its own state."""
    failed: int = 0
    """Snapshot writes that failed (the node goes on and tries again later)."""
    last_seconds: float = 0.0
    """How long the last snapshot write took (capture to durable file)."""
    last_bytes: int = 0
    """Size of the newest snapshot file this node wrote or restored (it paces the next
    one: see `FsmActor._maybe_snapshot`)."""
    installed: int = 0
    """Snapshots received from a leader and restored into the state machine."""
    sent: int = 0
    """Snapshot files streamed to followers completely."""
    received: int = 0
    """Snapshot files received, verified and made durable."""
    transfer_failures: int = 0
    """Transfers that failed, either way (refused, unusable file, no progress)."""

    def to_dict(self) -> dict[str, float | int]:
        return dict(self.__dict__)


class NoUsableSnapshotError(JosefineError):
    """The chain was compacted, but no valid snapshot at or above its base is on disk: the
    state machine cannot be rebuilt, and the node refuses to start."""


def choose_restart_snapshot(directory: Path, node_id: int, cluster_id: str, base: Block,
                            blocks: Mapping[BlockId, Block]) -> SnapshotFile | None:
    """The newest snapshot a restart can restore (A.13), or None to replay from genesis.

    Usable: it verifies completely, belongs to this cluster, and its base is the store's
    base or a stored block with the same digest (so the blocks after it are on disk).
    Newer files that are corrupt or not on this chain are logged and skipped.

    Raises:
        NoUsableSnapshotError: the store was compacted (its base is not genesis) and no
            usable file is left.
    """
    for path in list_snapshots(directory):
        try:
            info = verify(path)
        except CorruptSnapshotError as exc:
            log.error("node %d: skipping corrupt snapshot %s: %s", node_id, path.name,
                      exc.reason)
            continue
        m = info.meta
        if m.cluster_id != cluster_id:
            log.error("node %d: skipping snapshot %s of cluster %r", node_id, path.name,
                      m.cluster_id)
            continue
        if m.base.height < base.id.height:
            break   # the blocks after it are compacted away: older ones are no better
        if m.base == base.id and m.base_digest == base.digest:
            return info
        stored = blocks.get(m.base)
        if stored is not None and stored.digest == m.base_digest:
            return info
        log.warning("node %d: skipping snapshot %s: its base is not on this node's chain",
                    node_id, path.name)
    if base.id != GENESIS_ID:
        raise NoUsableSnapshotError(
            f"node {node_id}: the chain on disk starts at {base.id} (compacted), but "
            f"{directory} holds no valid snapshot at or above it, so the state cannot be "
            "rebuilt. Put a good snapshot file back, or wipe this node's data dir and let "
            "it catch up from the cluster.")
    return None


def restore_from(applier: Applier, path: Path) -> SnapshotMeta:
    """Replace `applier`'s state by the snapshot file at `path`, verifying as it reads;
    returns the file's header."""
    with SnapshotReader(path) as reader:
        info = applier.restore(cast(BinaryIO, reader))   # it reads like a binary file
        if info.applied != reader.meta.base:
            raise CorruptSnapshotError(path, f"body is of {info.applied}, header says "
                                       f"{reader.meta.base}")
        return reader.meta


class SnapshotTaker:
    """Writes captured snapshots into the node's snapshot directory, one at a time.

    A frozen job (`SnapshotJob.frozen`) is written on a background thread, so the FSM
    driver goes on applying; a live one is written on the caller's thread. `on_done` is
    called with the job once its file is durable (and older files pruned); `on_error` with
    the exception if writing failed (the node goes on: it tries again at the next
    threshold)."""

    def __init__(self, node_id: int, cluster_id: str, directory: Path,
                 on_done: Callable[[SnapshotJob], None],
                 on_error: Callable[[BaseException], None] | None = None,
                 stats: SnapshotStats | None = None) -> None:
        self.node_id = node_id
        self.cluster_id = cluster_id
        self.directory = directory
        self.on_done = on_done
        self.on_error = on_error
        self._busy = threading.Event()
        self.stats = stats if stats is not None else SnapshotStats()

    @property
    def busy(self) -> bool:
        return self._busy.is_set()

    def take(self, job: SnapshotJob) -> bool:
        """Start writing `job`; False (nothing done) while another write is running."""
        if self._busy.is_set():
            return False
        self._busy.set()
        if job.frozen:
            threading.Thread(target=self._run, args=(job,), daemon=True,
                             name=f"node{self.node_id}-snapshot").start()
        else:
            self._run(job)
        return True

    def _run(self, job: SnapshotJob) -> None:
        t0 = time.monotonic()
        try:
            info = job.info
            meta = SnapshotMeta(self.cluster_id, info.applied, info.digest, info.config,
                                self.node_id)
            with SnapshotWriter(self.directory, meta) as w:
                job.write(cast(BinaryIO, w))   # it writes like a binary file
            size = w.path.stat().st_size
            prune(self.directory, KEEP_SNAPSHOTS, trusted=[w.path], node_id=self.node_id)
        except BaseException as exc:   # a full disk must not stop the node
            self.stats.failed += 1
            log.error("node %d: writing snapshot of %s failed: %s", self.node_id,
                      job.info.applied, exc)
            self._busy.clear()
            if self.on_error is not None:
                self.on_error(exc)
            return
        self.stats.last_seconds = elapsed = time.monotonic() - t0
        self.stats.taken += 1
        self.stats.last_bytes = size
        log.info("node %d: snapshot of %s written in %.3f s (%s)", self.node_id,
                 info.applied, elapsed, name_for(info.applied))
        self._busy.clear()
        self.on_done(job)
