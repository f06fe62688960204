"""The built-in key-value state machine."""
import pytest

from josefine.codec import packb
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


def test_snapshot_restore(kv):
    kv.apply(kv_put("a", "1"))
    kv.apply(kv_put(b"b", b"2"))
    snap = kv.snapshot()
    other = KVStateMachine()
    other.apply(kv_put("junk", "x"))
    other.restore(snap)
    assert other.digest() == kv.digest()
    assert list(other.items()) == [("a", "1"), (b"b", b"2")]
    assert other.snapshot() == snap


@pytest.mark.parametrize("data", [b"\xc1", packb(["kv0", []]), packb(["kv1", [["a"]]]),
                                  packb(["kv1", [["a", 1]]])])
def test_restore_rejects_bad_snapshots(kv, data):
    kv.apply(kv_put("a", "1"))
    before = kv.digest()
    with pytest.raises(ValueError):
        kv.restore(data)
    assert kv.digest() == before
