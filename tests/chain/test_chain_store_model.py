"""Property test: MemoryStore and LevelDBStore agree on random batches, errors included."""
import tempfile

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from josefine.chain.block import BlockKind, genesis, make_block
from josefine.chain.leveldb import LevelDBStore
from josefine.chain.memory import MemoryStore
from josefine.chain.store import HardState
from josefine.types import GENESIS_ID, SafetyViolation

pytestmark = pytest.mark.timeout(60)

G = genesis("m")


def _pool():
    """A small tree with branches, plus twins: same id, different digest."""
    a1 = make_block(G, 1, BlockKind.NOOP, b"")
    a2 = make_block(a1, 1, BlockKind.NORMAL, b"a2")
    b2 = make_block(a1, 2, BlockKind.NOOP, b"")
    b3 = make_block(b2, 2, BlockKind.NORMAL, b"b3")
    c2 = make_block(a1, 3, BlockKind.NOOP, b"")
    twin_a2 = make_block(a1, 1, BlockKind.NORMAL, b"twin")
    twin_b3 = make_block(b2, 2, BlockKind.NORMAL, b"twin")
    return [G, a1, a2, b2, b3, c2, twin_a2, twin_b3]


POOL = _pool()
IDS = sorted({b.id for b in POOL})

batches = st.fixed_dictionaries({
    "hard_state": st.none() | st.builds(HardState, st.integers(0, 4),
                                        st.none() | st.integers(1, 3)),
    "blocks": st.lists(st.sampled_from(POOL), max_size=4),
    "head": st.none() | st.sampled_from(IDS),
    "commit": st.none() | st.sampled_from(IDS),
    "delete": st.lists(st.sampled_from(IDS), max_size=3),
    "sync": st.booleans(),
})


def _outcome(store, batch):
    try:
        store.write(**batch)
        return "ok"
    except SafetyViolation:
        return "safety"
    except ValueError:
        return "value"


def _state(store):
    s = store.load()
    return s.hard_state, s.blocks, s.head, s.commit


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(batches, max_size=12))
def test_stores_agree(ops):
    with tempfile.TemporaryDirectory() as d:
        mem = MemoryStore("m")
        lvl = LevelDBStore(d, "m")
        try:
            for batch in ops:
                before = _state(mem)
                o1, o2 = _outcome(mem, batch), _outcome(lvl, batch)
                assert o1 == o2
                event(o1)
                after = _state(mem)
                assert after == _state(lvl)
                if o1 != "ok":
                    assert after == before  # refused batches leave no trace
                assert GENESIS_ID in after[1] and after[2] in after[1] and after[3] in after[1]
                assert len(mem) == len(lvl) == len(after[1])
            lvl.close()
            lvl = LevelDBStore(d, "m")
            assert _state(lvl) == _state(mem)
        finally:
            lvl.close()
