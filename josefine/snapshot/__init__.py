"""Snapshots: durable files that stand in for a prefix of the chain (docs/snapshots.md).

This package owns the file format and the fsync/rename discipline only. It knows nothing
of the node, the core or the state machine: a state machine streams its state into a
`SnapshotWriter` and restores from a `SnapshotReader`, and the node decides when.
"""
from __future__ import annotations

from josefine.snapshot.files import (
    CHUNK_SIZE,
    CorruptSnapshotError,
    SnapshotFile,
    SnapshotReader,
    SnapshotWriter,
    latest_valid,
    list_snapshots,
    prune,
    snapshot_name,
    verify,
    write_snapshot,
)
from josefine.snapshot.meta import SnapshotMeta

__all__ = [
    "CHUNK_SIZE",
    "CorruptSnapshotError",
    "SnapshotFile",
    "SnapshotMeta",
    "SnapshotReader",
    "SnapshotWriter",
    "latest_valid",
    "list_snapshots",
    "prune",
    "snapshot_name",
    "verify",
    "write_snapshot",
]
