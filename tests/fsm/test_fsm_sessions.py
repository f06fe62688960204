"""Client session table: duplicates, stale sequence numbers, deterministic eviction."""
import io

import pytest

from josefine.codec import write_record
from josefine.fsm.sessions import STALE_RESULT, SessionTable, Verdict

pytestmark = pytest.mark.timeout(60)


def test_new_duplicate_stale():
    t = SessionTable()
    assert t.check("c", 1) == (Verdict.NEW, None)
    t.record("c", 1, {"r": 1}, height=5)
    assert t.check("c", 1) == (Verdict.DUPLICATE, {"r": 1})
    assert t.check("c", 0) == (Verdict.STALE, STALE_RESULT)
    assert t.check("c", 2) == (Verdict.NEW, None)
    t.record("c", 4, "four", height=6)  # gaps are allowed
    assert t.check("c", 4) == (Verdict.DUPLICATE, "four")
    assert t.check("c", 1)[0] is Verdict.STALE
    s = t.get("c")
    assert (s.last_seq, s.result, s.height) == (4, "four", 6)
    assert len(t) == 1


def test_eviction_is_least_recently_applied():
    t = SessionTable(max_sessions=3)
    t.record("a", 1, None, 1)
    t.record("b", 1, None, 2)
    t.record("c", 1, None, 3)
    t.record("a", 2, None, 4)   # a is now the most recent
    t.record("d", 1, None, 5)   # evicts b, the oldest last-applied height
    assert [s.client_id for s in t] == ["c", "a", "d"]
    assert "b" not in t and t.evictions == 1
    assert t.check("b", 1) == (Verdict.NEW, None)


def test_eviction_ties_follow_order_within_a_block():
    t = SessionTable(max_sessions=2)
    t.record("z", 1, None, 7)
    t.record("y", 1, None, 7)
    t.record("x", 1, None, 8)
    assert [s.client_id for s in t] == ["y", "x"]


def test_same_history_same_table_and_digest():
    def run():
        t = SessionTable(max_sessions=5)
        for i in range(50):
            t.record(f"c{(i * 7) % 11}", i, {"i": i}, i // 3)
        return t
    t1, t2 = run(), run()
    assert t1.dump() == t2.dump() and t1.digest() == t2.digest()
    assert len(t1) == 5


def test_dump_load_round_trip_keeps_order():
    t = SessionTable(max_sessions=10)
    for cid in ["q", "a", "m"]:
        t.record(cid, 3, [cid], 1)
    u = SessionTable(max_sessions=10)
    u.load(t.dump())
    assert u.dump() == t.dump() and u.digest() == t.digest()
    with pytest.raises(ValueError):
        u.load([["a", "not-an-int", None, 1]])
    assert u.dump() == t.dump()


def _snapshot(t: SessionTable) -> bytes:
    out = io.BytesIO()
    t.snapshot(out)
    return out.getvalue()


def test_snapshot_restore_round_trip_keeps_order_and_reads_only_its_stream():
    t = SessionTable(max_sessions=10)
    for cid in ["q", "a", "m"]:
        t.record(cid, 3, {"r": [cid, b"\x00"]}, 1)
    t.record("a", 4, None, 2)
    u = SessionTable(max_sessions=10)
    u.record("other", 1, None, 1)
    inp = io.BytesIO(_snapshot(t) + b"next")
    u.restore(inp)
    assert inp.read() == b"next"
    assert u.dump() == t.dump() and u.digest() == t.digest()
    assert [s.client_id for s in u] == ["q", "m", "a"]
    assert _snapshot(u) == _snapshot(t)


@pytest.mark.parametrize("rows", [
    [["a", "not-an-int", None, 1]],
    [["a", 1, None]],
    [["a", -1, None, 1]],
    [[7, 1, None, 1]],
    [["a", 1, None, 1], ["a", 2, None, 2]],     # one client twice
])
def test_restore_refuses_bad_rows_and_keeps_the_table(rows):
    t = SessionTable()
    t.record("keep", 1, "me", 1)
    before = _snapshot(t)
    out = io.BytesIO()
    write_record(out, ["josefine-sessions", 1, len(rows)])
    for row in rows:
        write_record(out, row)
    with pytest.raises(ValueError):
        t.restore(io.BytesIO(out.getvalue()))
    with pytest.raises(ValueError):
        t.load(rows)
    assert _snapshot(t) == before


def test_restore_refuses_truncated_streams_and_keeps_the_table():
    src = SessionTable()
    for i in range(4):
        src.record(f"c{i}", i, {"i": i}, i)
    snap = _snapshot(src)
    t = SessionTable()
    t.record("keep", 1, "me", 1)
    before = _snapshot(t)
    for cut in range(len(snap)):
        with pytest.raises(ValueError):
            t.restore(io.BytesIO(snap[:cut]))
        assert _snapshot(t) == before


def test_restore_into_a_smaller_table_evicts_the_oldest():
    src = SessionTable(max_sessions=5)
    for cid in ["a", "b", "c", "d"]:
        src.record(cid, 1, None, 1)
    t = SessionTable(max_sessions=2)
    t.restore(io.BytesIO(_snapshot(src)))
    assert [s.client_id for s in t] == ["c", "d"] and t.evictions == 2


def test_max_sessions_must_be_positive():
    with pytest.raises(ValueError):
        SessionTable(0)
