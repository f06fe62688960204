"""A deliberately BROKEN node, for proving that the power-loss nemesis catches a store
that skips its fsync.

Importing this module (in a node process, before the node starts) makes every chain-store
write unsynced: the node then acknowledges blocks and votes that exist only in the page
cache. A process crash alone loses nothing (the kernel still has the data); a power cut
(the power-loss filesystem dropping what was never synced) loses acknowledged, committed
blocks, on every node at once when the whole cluster loses power.
"""
from __future__ import annotations

from josefine.chain import leveldb

_write = leveldb.LevelDBStore.write


def _write_without_sync(self, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003, ANN202
    kwargs["sync"] = False
    return _write(self, *args, **kwargs)


leveldb.LevelDBStore.write = _write_without_sync  # type: ignore[method-assign]
