"""Open and reopen a MemoryStore or a LevelDBStore the same way, for the tests that run the
ChainStore contract against both."""
from __future__ import annotations

from josefine.chain.leveldb import LevelDBStore
from josefine.chain.memory import MemoryStore


class MemFactory:
    """`reopen` keeps the same MemoryStore: its contents are the 'disk'."""

    def __init__(self, tmp_path, cluster: str):  # noqa: ANN001
        self.store = MemoryStore(cluster)

    def open(self):  # noqa: ANN201
        return self.store

    def reopen(self, store):  # noqa: ANN001, ANN201
        store.close()
        return self.store


class LevelFactory:
    def __init__(self, tmp_path, cluster: str):  # noqa: ANN001
        self.path = tmp_path / "db"
        self.cluster = cluster

    def open(self):  # noqa: ANN201
        return LevelDBStore(self.path, self.cluster)

    def reopen(self, store):  # noqa: ANN001, ANN201
        store.close()
        return LevelDBStore(self.path, self.cluster)


FACTORIES = {"memory": MemFactory, "leveldb": LevelFactory}
