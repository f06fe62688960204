"""A snapshot carries the membership to the node that installs it (A.12, A.14): the
receiving snapshot actor reads it from the file's body header and hands it to the core
with the `InstallSnapshot`, addresses and learners included."""
from __future__ import annotations

from typing import Any, BinaryIO, cast

import pytest

from josefine.actors.snapshots import SnapshotActor
from josefine.fsm.applier import Applier
from josefine.fsm.kv import KVStateMachine, kv_put
from josefine.messages import InstallSnapshot
from josefine.raft.membership import Config
from josefine.snapshot.files import SnapshotWriter
from josefine.snapshot.meta import SnapshotMeta
from josefine.types import BlockId
from tests.actors.test_snapshot_transfer import _wait, _Wire

pytestmark = pytest.mark.timeout(60)

CLUSTER = "xfer"
LAST = BlockId(3, 500)
DIGEST = bytes(range(32))


def test_an_installed_snapshot_hands_the_core_its_whole_membership(tmp_path):
    members = Config.of({1, 2}, {1: "tcp://127.0.0.1:7001", 2: "tcp://127.0.0.1:7002",
                                 3: "tcp://127.0.0.1:7003"}, learners={3})
    sm = KVStateMachine()
    sm.apply(kv_put("k", "v"))
    job = Applier(sm, applied=LAST, config=members).capture(block_digest=DIGEST,
                                                            config=members.voters)
    dirs = {1: tmp_path / "a", 2: tmp_path / "b"}
    for d in dirs.values():
        d.mkdir()
    with SnapshotWriter(dirs[1], SnapshotMeta(CLUSTER, LAST, DIGEST, members.voters, 1)) as w:
        job.write(cast(BinaryIO, w))
    wire = _Wire()
    delivered: list[InstallSnapshot] = []
    refs: list[Any] = []
    try:
        for me in (1, 2):
            ref = SnapshotActor.start(me, wire.links(me), lambda where, exc: None, dirs[me],
                                      CLUSTER, delivered.append, chunk_size=4096)
            wire.actors[me] = ref
            refs.append(ref)
        wire.actors[1].tell(InstallSnapshot(src=1, dst=2, term=4, last=LAST,
                                            last_digest=DIGEST, voters=(1, 2),
                                            config=members))
        got = _wait(lambda: delivered, "the core to get the snapshot")[0]
    finally:
        for ref in refs:
            ref.stop()
    assert got.voters == (1, 2)
    assert got.config == members   # from the received file, not the offer (never sent)
    assert got.config.member(3).address == "tcp://127.0.0.1:7003"
