"""Status reads the applier's digest on the role actor's thread while the FSM driver may be
applying: an overlapping read is retried, never raised (it used to stop the node)."""
from __future__ import annotations

import threading
from types import SimpleNamespace

import pytest

from josefine.actors.node import Node
from josefine.chain.block import BlockId
from josefine.fsm.applier import Applier
from josefine.fsm.kv import KVStateMachine

pytestmark = pytest.mark.timeout(60)


class _Flaky:
    def __init__(self, fails: int) -> None:
        self.fails, self.applied = fails, BlockId(1, 5)

    def sm_digest(self) -> bytes:
        if self.fails:
            self.fails -= 1
            raise RuntimeError("OrderedDict mutated during iteration")
        return b"\x01\x02"


def test_an_overlapping_read_is_retried():
    assert Node._sm_digest(SimpleNamespace(applier=_Flaky(2))) == "0102"


def test_a_read_that_keeps_overlapping_reports_none():
    assert Node._sm_digest(SimpleNamespace(applier=_Flaky(100))) is None


def test_reads_while_the_session_table_changes_never_raise():
    a = Applier(KVStateMachine())
    stop = threading.Event()

    def churn() -> None:
        i = 0
        while not stop.is_set():
            a.sessions.record(f"c{i % 5000}", i, {"ok": True}, i)
            i += 1
    t = threading.Thread(target=churn)
    t.start()
    try:
        owner = SimpleNamespace(applier=a)
        for _ in range(300):
            d = Node._sm_digest(owner)
            assert d is None or len(d) == 64
    finally:
        stop.set()
        t.join(10)
