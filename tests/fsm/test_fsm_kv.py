"""The built-in key-value state machine."""
import io
import tracemalloc

import pytest

from josefine.codec import packb, write_record
from josefine.fsm.api import DigestStateMachine, SnapshotStateMachine, StateMachine
from josefine.fsm.kv import KVStateMachine, kv_cas, kv_delete, kv_get, kv_put

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def kv():
    return KVStateMachine()


def test_protocols(kv):
    assert isinstance(kv, StateMachine)
    assert isinstance(kv, SnapshotStateMachine)
    assert isinstance(kv, DigestStateMachine)


def test_put_get_delete(kv):
    assert kv.query(kv_get("a")) == {"value": None}
    assert kv.apply(kv_put("a", "1")) == {"ok": True}
    assert kv.query(kv_get("a")) == {"value": "1"}
    assert kv.apply(kv_put("a", "2")) == {"ok": True}
    assert kv.query(kv_get("a")) == {"value": "2"}
    assert kv.apply(kv_delete("a")) == {"ok": True, "existed": True}
    assert kv.apply(kv_delete("a")) == {"ok": True, "existed": False}
    assert kv.query(kv_get("a")) == {"value": None}
    assert len(kv) == 0


def test_get_as_a_committed_command(kv):
    kv.apply(kv_put("k", "v"))
    assert kv.apply(kv_get("k")) == {"value": "v"}


def test_cas(kv):
    assert kv.apply(kv_cas("k", "x", "y")) == {"ok": False, "value": None}
    assert kv.query(kv_get("k")) == {"value": None}
    assert kv.apply(kv_cas("k", None, "v1")) == {"ok": True, "value": "v1"}  # create if absent
    assert kv.apply(kv_cas("k", None, "v2")) == {"ok": False, "value": "v1"}
    assert kv.apply(kv_cas("k", "v0", "v2")) == {"ok": False, "value": "v1"}
    assert kv.apply(kv_cas("k", "v1", "v2")) == {"ok": True, "value": "v2"}
    assert kv.query(kv_get("k")) == {"value": "v2"}


def test_bytes_and_str_are_distinct(kv):
    kv.apply(kv_put("a", "text"))
    kv.apply(kv_put(b"a", b"\x00\xff"))
    assert kv.query(kv_get("a")) == {"value": "text"}
    assert kv.query(kv_get(b"a")) == {"value": b"\x00\xff"}
    assert kv.apply(kv_cas("a", b"text", "new")) == {"ok": False, "value": "text"}
    assert len(kv) == 2


def test_helpers_validate_types():
    with pytest.raises(TypeError):
        kv_put(1, "v")
    with pytest.raises(TypeError):
        kv_put("k", None)
    with pytest.raises(TypeError):
        kv_cas("k", 1, "v")
    with pytest.raises(TypeError):
        kv_get(["k"])


@pytest.mark.parametrize("cmd", [
    b"",
    b"\xc1",
    b"not msgpack at all \xff\xfe",
    packb("put"),
    packb([]),
    packb([1, "k"]),
    packb(["put", "k"]),
    packb(["put", "k", 3]),
    packb(["put", 1, "v"]),
    packb(["cas", "k", "a"]),
    packb(["delete"]),
    packb(["frobnicate", "k"]),
    packb({"op": "put"}),
    packb(["put", "k", "v"]) + b"extra",
])
def test_invalid_commands_yield_errors_and_change_nothing(kv, cmd):
    kv.apply(kv_put("keep", "me"))
    before = kv.digest()
    res = kv.apply(cmd)
    assert isinstance(res, dict) and isinstance(res.get("error"), str)
    assert kv.digest() == before
    assert "error" in kv.query(cmd)


def test_non_bytes_command_is_an_error(kv):
    assert "error" in kv.apply("put")


def test_query_is_read_only(kv):
    before = kv.digest()
    assert "error" in kv.query(kv_put("a", "b"))
    assert kv.digest() == before and len(kv) == 0


def test_digest_is_order_independent_and_content_sensitive():
    a, b = KVStateMachine(), KVStateMachine()
    for k, v in [("x", "1"), ("y", "2"), (b"z", b"3")]:
        a.apply(kv_put(k, v))
    for k, v in [(b"z", b"3"), ("y", "0"), ("x", "1"), ("y", "2")]:
        b.apply(kv_put(k, v))
    assert a.digest() == b.digest()
    b.apply(kv_put("y", "3"))
    assert a.digest() != b.digest()
    assert KVStateMachine().digest() == KVStateMachine().digest()


def _snapshot(kv) -> bytes:
    out = io.BytesIO()
    kv.snapshot(out)
    return out.getvalue()


def _stream(*records) -> io.BytesIO:
    out = io.BytesIO()
    for r in records:
        write_record(out, r)
    out.seek(0)
    return out


def test_snapshot_restore_replaces_the_whole_state(kv):
    kv.apply(kv_put("a", "1"))
    kv.apply(kv_put(b"b", b"2"))
    snap = _snapshot(kv)
    other = KVStateMachine()
    other.apply(kv_put("junk", "x"))
    other.restore(io.BytesIO(snap))
    assert other.digest() == kv.digest()
    assert list(other.items()) == [("a", "1"), (b"b", b"2")]
    assert _snapshot(other) == snap
    other.restore(io.BytesIO(_snapshot(KVStateMachine())))
    assert len(other) == 0


def test_equal_states_give_identical_snapshots_whatever_their_history():
    a, b = KVStateMachine(), KVStateMachine()
    for k, v in [("x", "1"), (b"b", b"2"), ("a", "3"), (b"a", b"4"), ("é", "5")]:
        a.apply(kv_put(k, v))
    for k, v in [("é", "5"), (b"a", b"0"), ("gone", "z"), ("a", "3"), (b"b", b"2"),
                 ("x", "1"), (b"a", b"4")]:
        b.apply(kv_put(k, v))
    b.apply(kv_delete("gone"))
    assert _snapshot(a) == _snapshot(b)
    b.apply(kv_put("x", "2"))
    assert _snapshot(a) != _snapshot(b)


def test_restore_reads_exactly_its_own_stream(kv):
    kv.apply(kv_put("a", "1"))
    inp = io.BytesIO(_snapshot(kv) + b"what follows")
    KVStateMachine().restore(inp)
    assert inp.read() == b"what follows"


BAD_SNAPSHOTS = {
    "not a record": lambda: io.BytesIO(b"\xc1"),
    "empty": lambda: io.BytesIO(b""),
    "old bytes format": lambda: io.BytesIO(packb(["kv1", []])),
    "wrong tag": lambda: _stream(["josefine-sessions", 1, 0]),
    "wrong version": lambda: _stream(["josefine-kv", 2, 0]),
    "bool version": lambda: _stream(["josefine-kv", True, 0]),
    "negative count": lambda: _stream(["josefine-kv", 1, -1]),
    "fewer pairs than counted": lambda: _stream(["josefine-kv", 1, 2], ["a", "1"]),
    "pair of one": lambda: _stream(["josefine-kv", 1, 1], ["a"]),
    "int value": lambda: _stream(["josefine-kv", 1, 1], ["a", 1]),
    "int key": lambda: _stream(["josefine-kv", 1, 1], [1, "a"]),
    "keys out of order": lambda: _stream(["josefine-kv", 1, 2], ["b", "1"], ["a", "2"]),
    "key repeated": lambda: _stream(["josefine-kv", 1, 2], ["a", "1"], ["a", "2"]),
    "bytes key before str": lambda: _stream(["josefine-kv", 1, 2], [b"a", "1"], ["b", "2"]),
}


@pytest.mark.parametrize("name", sorted(BAD_SNAPSHOTS))
def test_restore_rejects_bad_snapshots_and_keeps_the_state(kv, name):
    kv.apply(kv_put("a", "1"))
    before = _snapshot(kv)
    with pytest.raises(ValueError):
        kv.restore(BAD_SNAPSHOTS[name]())
    assert _snapshot(kv) == before


def test_the_good_streams_next_to_the_bad_ones_restore(kv):
    """The rejections above are for the named defect, not for the way the streams are built."""
    kv.restore(_stream(["josefine-kv", 1, 3], ["a", "1"], ["b", "2"], [b"a", b"3"]))
    assert list(kv.items()) == [("a", "1"), ("b", "2"), (b"a", b"3")]


def test_a_truncated_snapshot_is_refused_at_every_cut(kv):
    src = KVStateMachine()
    for i in range(5):
        src.apply(kv_put(f"k{i}", "v" * i))
        src.apply(kv_put(f"k{i}".encode(), b"w"))
    snap = _snapshot(src)
    kv.apply(kv_put("mine", "1"))
    before = _snapshot(kv)
    for cut in range(len(snap)):
        with pytest.raises(ValueError):
            kv.restore(io.BytesIO(snap[:cut]))
        assert _snapshot(kv) == before
    kv.restore(io.BytesIO(snap))
    assert _snapshot(kv) == snap


N_LARGE = 200_000


@pytest.fixture(scope="module")
def large():
    """200k pairs, and the memory they take as measured by tracemalloc."""
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        kv = KVStateMachine()
        for i in range(N_LARGE):
            kv.apply(kv_put(f"key-{i:08d}", f"value-{i}-" + "x" * 40))
        size = tracemalloc.get_traced_memory()[0] - base
    finally:
        tracemalloc.stop()
    return kv, size


class _Sink:
    """A writer that keeps nothing, so only the snapshot's own allocations are measured."""

    def __init__(self):
        self.written = 0

    def write(self, data):
        self.written += len(data)
        return len(data)


def _peak_extra(fn) -> int:
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        fn()
        return tracemalloc.get_traced_memory()[1] - base
    finally:
        tracemalloc.stop()


def test_a_large_state_is_snapshotted_with_little_extra_memory(large):
    kv, size = large
    sink = _Sink()
    extra = _peak_extra(lambda: kv.snapshot(sink))
    assert sink.written > N_LARGE * 50      # every pair went out
    assert extra < size / 10, (extra, size)


def test_a_large_state_is_restored_from_a_file_without_holding_the_file(large, tmp_path):
    kv, size = large
    path = tmp_path / "kv.snap"
    with open(path, "wb") as out:
        kv.snapshot(out)
    other = KVStateMachine()
    with open(path, "rb") as inp:
        extra = _peak_extra(lambda: other.restore(inp))
    # The new state itself is the only big allocation: no copy of the file, no list of pairs.
    assert extra < size * 1.25, (extra, size)
    assert len(other) == N_LARGE and other.digest() == kv.digest()
