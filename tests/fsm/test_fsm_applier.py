"""Applier: committed blocks -> state machine, exactly once, in order, with sessions."""
import pytest

from josefine.chain.block import BlockKind, Command, encode_commands, genesis, make_block
from josefine.fsm.applier import Applier
from josefine.fsm.kv import KVStateMachine, kv_get, kv_put
from josefine.types import GENESIS_ID

pytestmark = pytest.mark.timeout(60)

G = genesis("c")


class CountingSM:
    """Counts applies; no digest/snapshot (exercises the optional parts being absent)."""

    def __init__(self):
        self.applied = []

    def apply(self, command):
        self.applied.append(command)
        if command == b"boom":
            raise RuntimeError("kaboom")
        return len(self.applied)

    def query(self, query):
        return len(self.applied)


def normal(parent, cmds, term=1):
    return make_block(parent, term, BlockKind.NORMAL, encode_commands(cmds))


def test_applies_commands_in_order():
    ap = Applier(KVStateMachine())
    b1 = normal(G, [Command("c1", 1, kv_put("a", "1")), Command("c2", 1, kv_put("b", "2"))])
    out = ap.apply_block(b1)
    assert [(c.client_id, r) for c, r in out] == [("c1", {"ok": True}), ("c2", {"ok": True})]
    assert ap.applied == b1.id
    assert ap.query(kv_get("b")) == {"value": "2"}


def test_noop_and_config_blocks_have_no_effect():
    sm = CountingSM()
    ap = Applier(sm)
    n = make_block(G, 1, BlockKind.NOOP, b"")
    c = make_block(n, 1, BlockKind.CONFIG, b"whatever")
    assert ap.apply_block(n) == [] and ap.apply_block(c) == []
    assert sm.applied == [] and ap.applied == c.id


def test_retry_returns_cached_result_and_applies_once():
    sm = CountingSM()
    ap = Applier(sm)
    b1 = normal(G, [Command("c", 1, b"x")])
    b2 = normal(b1, [Command("c", 1, b"x"), Command("c", 1, b"x")])  # retries in a later block
    b3 = normal(b2, [Command("c", 2, b"y"), Command("c", 2, b"y")])  # and within one block
    assert [r for _, r in ap.apply_block(b1)] == [1]
    assert [r for _, r in ap.apply_block(b2)] == [1, 1]
    assert [r for _, r in ap.apply_block(b3)] == [2, 2]
    assert sm.applied == [b"x", b"y"]
    assert ap.stats()["duplicates"] == 3


def test_stale_sequence_is_not_applied():
    sm = CountingSM()
    ap = Applier(sm)
    b1 = normal(G, [Command("c", 5, b"five")])
    b2 = normal(b1, [Command("c", 3, b"three")])
    ap.apply_block(b1)
    (cmd, res), = ap.apply_block(b2)
    assert res == {"error": "stale sequence"}
    assert sm.applied == [b"five"]


def test_evicted_session_is_deterministic_across_replicas():
    def replica():
        ap = Applier(KVStateMachine(), max_sessions=2)
        parent = G
        for i, cid in enumerate(["a", "b", "a", "c", "d", "a"]):
            blk = normal(parent, [Command(cid, i + 1, kv_put(cid, str(i)))])
            ap.apply_block(blk)
            parent = blk
        return ap, parent
    (ap1, last), (ap2, _) = replica(), replica()
    assert ap1.sm_digest() == ap2.sm_digest()
    assert [s.client_id for s in ap1.sessions] == ["d", "a"]
    assert ap1.stats()["evictions"] == 3  # b, then a, then c
    # "b" was evicted: its old seq is treated as new (documented price of a bounded table)
    blk = normal(last, [Command("b", 2, kv_put("b", "again"))])
    (_, res), = ap1.apply_block(blk)
    assert res == {"ok": True}


def test_out_of_order_blocks_are_refused():
    ap = Applier(CountingSM())
    b1 = normal(G, [Command("c", 1, b"1")])
    b2 = normal(b1, [Command("c", 2, b"2")])
    with pytest.raises(ValueError):
        ap.apply_block(b2)          # skips b1
    with pytest.raises(ValueError):
        ap.apply_block(G)           # genesis is never applied
    ap.apply_block(b1)
    with pytest.raises(ValueError):
        ap.apply_block(b1)          # twice
    other = normal(G, [Command("c", 9, b"9")], term=2)
    other_child = normal(other, [], term=2)
    with pytest.raises(ValueError):
        ap.apply_block(other_child)  # right height, wrong branch
    assert ap.applied == b1.id
    ap.apply_block(b2)
    assert ap.applied == b2.id


def test_state_machine_exception_becomes_error_result():
    sm = CountingSM()
    ap = Applier(sm)
    b1 = normal(G, [Command("c", 1, b"boom"), Command("d", 1, b"ok")])
    out = ap.apply_block(b1)
    assert "kaboom" in out[0][1]["error"] and out[1][1] == 2
    # the error is cached like any result
    b2 = normal(b1, [Command("c", 1, b"boom")])
    (_, res), = ap.apply_block(b2)
    assert res["error"].startswith("state machine raised")
    assert ap.stats()["sm_errors"] == 1


def test_malformed_payload_is_skipped_deterministically():
    sm = CountingSM()
    ap = Applier(sm)
    bad = make_block(G, 1, BlockKind.NORMAL, b"\x00\x00\x00\x05junk")
    assert ap.apply_block(bad) == []
    assert ap.applied == bad.id and sm.applied == [] and ap.stats()["malformed_blocks"] == 1


def test_sm_digest_tracks_applied_state_and_sessions():
    a1, a2 = Applier(KVStateMachine()), Applier(KVStateMachine())
    assert a1.sm_digest() == a2.sm_digest()
    b1 = normal(G, [Command("c", 1, kv_put("k", "v"))])
    a1.apply_block(b1)
    assert a1.sm_digest() != a2.sm_digest()
    a2.apply_block(b1)
    assert a1.sm_digest() == a2.sm_digest()
    # same SM state at a different applied id -> different digest
    n = make_block(b1, 1, BlockKind.NOOP, b"")
    a2.apply_block(n)
    assert a1.sm_digest() != a2.sm_digest()
    # works without SM digest support
    c = Applier(CountingSM())
    assert isinstance(c.sm_digest(), bytes)


def test_applier_starts_at_given_base():
    b1 = normal(G, [])
    ap = Applier(KVStateMachine(), applied=b1.id)
    b2 = normal(b1, [])
    ap.apply_block(b2)
    assert ap.applied == b2.id
    assert Applier(KVStateMachine()).applied == GENESIS_ID


def test_commands_handed_in_give_the_same_results_as_decoding_the_payload():
    """The leader passes the commands it proposed instead of decoding its own block; the
    outcome (results, sessions, digest) must not depend on which path was taken."""
    cmds = [Command("c1", 1, kv_put("a", "1")), Command("c1", 1, kv_put("a", "1")),
            Command("c2", 4, kv_put("b", "2"))]
    b1 = normal(G, cmds)
    b2 = normal(b1, [Command("c2", 3, kv_put("b", "old"))])   # stale retry
    decoded, handed = Applier(KVStateMachine()), Applier(KVStateMachine())
    assert decoded.apply_block(b1) == handed.apply_block(b1, tuple(cmds))
    assert decoded.apply_block(b2) == handed.apply_block(b2, [Command("c2", 3, kv_put("b", "old"))])
    assert decoded.sm_digest() == handed.sm_digest()
    assert decoded.stats() == handed.stats()
