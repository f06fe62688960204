"""Applier snapshots: header, sessions and state machine streamed, restored exactly-once safe."""
import io

import pytest

from josefine.chain.block import BlockKind, Command, encode_commands, genesis, make_block
from josefine.codec import write_record
from josefine.fsm import SnapshotInfo
from josefine.fsm.applier import Applier
from josefine.fsm.kv import KVStateMachine, kv_cas, kv_get, kv_put
from josefine.types import BlockId

pytestmark = pytest.mark.timeout(60)

G = genesis("c")
DIGEST = bytes(range(32))
CONFIG = frozenset({1, 2, 3})


class CountingKV(KVStateMachine):
    """The KV machine, counting the commands that reach it."""

    def __init__(self):
        super().__init__()
        self.applies = 0

    def apply(self, command):
        self.applies += 1
        return super().apply(command)


class PlainSM:
    """A state machine without snapshot()/restore()."""

    def apply(self, command):
        return None

    def query(self, query):
        return None


def normal(parent, cmds, term=1):
    return make_block(parent, term, BlockKind.NORMAL, encode_commands(cmds))


def busy_applier():
    """An applier with several clients, retries and a NOOP behind it; returns (ap, last)."""
    ap = Applier(KVStateMachine())
    b1 = normal(G, [Command("c1", 1, kv_put("a", "1")), Command("c2", 7, kv_put(b"b", b"2"))])
    b2 = normal(b1, [Command("c1", 2, kv_cas("a", "1", "one")),
                     Command("c2", 7, kv_put(b"b", b"2")), Command("c3", 1, kv_get("a"))])
    b3 = make_block(b2, 2, BlockKind.NOOP, b"")
    for b in (b1, b2, b3):
        ap.apply_block(b)
    return ap, b3


def snapshot(ap, digest=DIGEST, config=CONFIG) -> bytes:
    out = io.BytesIO()
    ap.snapshot(out, block_digest=digest, config=config)
    return out.getvalue()


def state(ap):
    return ap.applied, ap.sessions.dump(), list(ap.sm.items())


def test_round_trip_carries_applied_digest_config_sessions_and_state():
    ap, last = busy_applier()
    snap = snapshot(ap)
    other = Applier(KVStateMachine())
    info = other.restore(io.BytesIO(snap))
    assert info == SnapshotInfo(last.id, DIGEST, CONFIG)
    assert other.applied == last.id
    assert other.sessions.dump() == ap.sessions.dump()
    assert list(other.sm.items()) == [("a", "one"), (b"b", b"2")]
    assert other.sm_digest() == ap.sm_digest()
    assert snapshot(other) == snap            # restored state snapshots to the same bytes


def test_snapshot_returns_what_restore_will_report():
    ap, last = busy_applier()
    out = io.BytesIO()
    info = ap.snapshot(out, block_digest=DIGEST, config=frozenset({5}))
    assert info == Applier(KVStateMachine()).restore(io.BytesIO(out.getvalue()))
    assert info.config == frozenset({5}) and info.applied == last.id


def test_restore_replaces_everything_the_target_had():
    ap, last = busy_applier()
    snap = snapshot(ap)
    target = Applier(KVStateMachine())
    parent = G
    for i in range(5):        # further along, other clients, other keys
        blk = normal(parent, [Command(f"x{i}", 1, kv_put(f"x{i}", "v"))])
        target.apply_block(blk)
        parent = blk
    target.restore(io.BytesIO(snap))
    assert state(target) == state(ap)


def test_exactly_once_survives_a_restore():
    ap = Applier(CountingKV())
    b1 = normal(G, [Command("c", 1, kv_cas("k", None, "first")),
                    Command("d", 5, kv_put("x", "y"))])
    ap.apply_block(b1)
    snap = snapshot(ap)

    fresh = Applier(CountingKV())
    fresh.restore(io.BytesIO(snap))
    b2 = normal(b1, [Command("c", 1, kv_cas("k", None, "first")),   # retry of an applied one
                     Command("d", 4, kv_put("x", "old"))])          # stale
    (_, dup), (_, stale) = fresh.apply_block(b2)
    assert dup == {"ok": True, "value": "first"}     # the cached result, not a failed cas
    assert stale == {"error": "stale sequence"}
    assert fresh.sm.applies == 0                     # neither reached the state machine
    assert fresh.query(kv_get("x")) == {"value": "y"}
    assert fresh.stats()["duplicates"] == 1 and fresh.stats()["stale"] == 1
    b3 = normal(b2, [Command("c", 2, kv_put("k", "second"))])        # and new ones apply
    (_, res), = fresh.apply_block(b3)
    assert res == {"ok": True} and fresh.sm.applies == 1


def test_equal_states_give_identical_bytes():
    ap1, _ = busy_applier()
    ap2, _ = busy_applier()
    assert snapshot(ap1) == snapshot(ap2)
    # the config is a set: the order it iterates in (here 9, 1, 17 and 17, 1, 9, as the
    # ids collide in the hash table) must not matter, and either restores
    c1, c2 = frozenset([9, 1, 17]), frozenset([17, 1, 9])
    assert snapshot(ap1, config=c1) == snapshot(ap1, config=c2)
    assert Applier(KVStateMachine()).restore(io.BytesIO(snapshot(ap1, config=c2))).config == c1
    # and each part is in the bytes
    assert snapshot(ap1, config=frozenset({1, 2})) != snapshot(ap1)
    assert snapshot(ap1, digest=bytes(32)) != snapshot(ap1)


@pytest.mark.parametrize("digest, config", [
    (b"short", CONFIG), (None, CONFIG), (DIGEST, frozenset()), (DIGEST, frozenset({-1})),
    (DIGEST, frozenset({True})),
])
def test_snapshot_refuses_a_bad_digest_or_config_before_writing(digest, config):
    ap, _ = busy_applier()
    out = io.BytesIO()
    with pytest.raises(ValueError):
        ap.snapshot(out, block_digest=digest, config=config)
    assert out.getvalue() == b""


def test_a_state_machine_without_snapshots_is_refused_clearly():
    ap = Applier(PlainSM())
    out = io.BytesIO()
    with pytest.raises(TypeError, match="snapshot"):
        ap.snapshot(out, block_digest=DIGEST, config=CONFIG)
    assert out.getvalue() == b""
    inp = io.BytesIO(snapshot(busy_applier()[0]))
    with pytest.raises(TypeError, match="snapshot"):
        ap.restore(inp)
    assert inp.tell() == 0
    assert ap.apply_block(normal(G, [Command("c", 1, b"x")]))[0][1] is None  # still applies


def test_a_truncated_snapshot_changes_nothing_at_every_cut():
    snap = snapshot(busy_applier()[0])
    target = Applier(KVStateMachine())
    target.apply_block(normal(G, [Command("mine", 1, kv_put("mine", "1"))]))
    before = state(target)
    for cut in range(len(snap)):
        with pytest.raises(ValueError):
            target.restore(io.BytesIO(snap[:cut]))
        assert state(target) == before, cut
    target.restore(io.BytesIO(snap))
    assert state(target) != before


def _header(**kw):
    h = {"tag": "josefine-snapshot", "version": 1, "applied": [2, 3], "digest": DIGEST,
         "config": [1, 2, 3]}
    h.update(kw)
    return list(h.values())


def _good_sessions():
    return [["josefine-sessions", 1, 1], ["c", 1, {"ok": True}, 1]]


def _good_kv():
    return [["josefine-kv", 1, 1], ["a", "1"]]


def _stream(header, sessions, kv):
    out = io.BytesIO()
    for rec in [header, *sessions, *kv]:
        write_record(out, rec)
    return out.getvalue()


BAD = {
    "wrong tag": (_header(tag="applier1"), _good_sessions(), _good_kv()),
    "wrong version": (_header(version=2), _good_sessions(), _good_kv()),
    "applied not an id": (_header(applied=[2]), _good_sessions(), _good_kv()),
    "applied negative": (_header(applied=[2, -3]), _good_sessions(), _good_kv()),
    "digest too short": (_header(digest=DIGEST[:31]), _good_sessions(), _good_kv()),
    "digest a str": (_header(digest="x" * 32), _good_sessions(), _good_kv()),
    "config empty": (_header(config=[]), _good_sessions(), _good_kv()),
    "config unsorted": (_header(config=[2, 1]), _good_sessions(), _good_kv()),
    "config repeated": (_header(config=[1, 1]), _good_sessions(), _good_kv()),
    "config not ints": (_header(config=["1"]), _good_sessions(), _good_kv()),
    "header too short": (_header()[:4], _good_sessions(), _good_kv()),
    "sessions missing": (_header(), [], _good_kv()),
    "session row bad": (_header(), [["josefine-sessions", 1, 1], ["c", "1", None, 1]], _good_kv()),
    "kv missing": (_header(), _good_sessions(), []),
    "kv pair bad": (_header(), _good_sessions(), [["josefine-kv", 1, 1], ["a", 1]]),
    "kv out of order": (_header(), _good_sessions(),
                        [["josefine-kv", 1, 2], ["b", "1"], ["a", "2"]]),
}


def test_the_crafted_good_stream_restores():
    """The rejections below are for their named defect, not for how the streams are built."""
    ap = Applier(KVStateMachine())
    info = ap.restore(io.BytesIO(_stream(_header(), _good_sessions(), _good_kv())))
    assert info == SnapshotInfo(BlockId(2, 3), DIGEST, CONFIG)
    assert ap.sessions.dump() == [["c", 1, {"ok": True}, 1]]
    assert ap.query(kv_get("a")) == {"value": "1"}


@pytest.mark.parametrize("name", sorted(BAD))
def test_an_invalid_snapshot_is_refused_and_changes_nothing(name):
    ap, _ = busy_applier()
    before = state(ap)
    with pytest.raises(ValueError):
        ap.restore(io.BytesIO(_stream(*BAD[name])))
    assert state(ap) == before
