"""One node's actors wired together around a fake transport (pykka's testing pattern).

The fake transport is an actor that records what it is told; the store is a MemoryStore
wrapped to log the order of writes, so the durability ordering can be asserted.
"""
from __future__ import annotations

import threading
import time

import pykka
import pytest

from josefine.actors.base import Links, SideQueue
from josefine.actors.chain import ChainActor
from josefine.actors.fsm import FsmActor
from josefine.actors.role import RoleActor
from josefine.actors.timer import TickGate
from josefine.runtime.waiters import Waiters
from josefine.chain.block import BlockKind, Command, genesis, make_block
from josefine.chain.memory import MemoryStore
from josefine.fsm.applier import Applier
from josefine.fsm.kv import KVStateMachine, kv_put
from josefine.messages import AppendBlocks, AppendResp, Outbound, Status, Tick
from josefine.raft.core import CoreConfig, RaftCore
from josefine.runtime.writer import Writer

pytestmark = pytest.mark.timeout(60)

CID = "actors"


class Journal:
    def __init__(self) -> None:
        self.events: list[tuple] = []
        self.lock = threading.Lock()

    def add(self, *ev) -> None:
        with self.lock:
            self.events.append(ev)


class JournalStore(MemoryStore):
    journal: Journal
    fail = False

    def write(self, **kw) -> None:  # noqa: ANN003
        if self.fail:
            raise OSError("disk on fire")
        super().write(**kw)
        self.journal.add("write", tuple(b.id for b in kw.get("blocks", ())))


class FakeTransport(pykka.ThreadingActor):
    use_daemon_thread = True

    def __init__(self, journal: Journal) -> None:
        super().__init__()
        self.journal = journal

    def on_receive(self, message):  # noqa: ANN001
        if type(message) is Outbound:
            for m in message.msgs:
                self.journal.add("send", m)


@pytest.fixture
def node():
    made = []

    def build(node_id=1, voters=(1,), fail_store=False):  # noqa: ANN001
        journal = Journal()
        store = JournalStore(CID)
        store.journal = journal
        store.fail = fail_store
        st = store.load()
        core = RaftCore(CoreConfig(node_id=node_id, voters=frozenset(voters), seed=3),
                        genesis(CID), term=st.hard_state.term, voted_for=st.hard_state.voted_for,
                        blocks=st.blocks, head=st.head, commit=st.commit)
        links = Links()
        fatal_calls: list = []
        fatal = lambda where, exc: fatal_calls.append((where, exc))  # noqa: E731
        proposals, reads, transfers = Waiters(), Waiters(), Waiters()
        chain_inbox, prop_inbox = SideQueue(), SideQueue()
        links.transport = FakeTransport.start(journal)
        writer = Writer(store, True)
        links.chain = ChainActor.start(node_id, links, fatal, writer, chain_inbox)
        chain_inbox.target = links.chain
        links.fsm = FsmActor.start(node_id, links, fatal, Applier(KVStateMachine()),
                                   proposals, reads, transfers)
        links.role = RoleActor.start(node_id, links, fatal, core, TickGate(), prop_inbox,
                                     chain_inbox, writer)
        prop_inbox.target = links.role
        n = type("N", (), dict(journal=journal, store=store, links=links, fatal=fatal_calls,
                               proposals=proposals, prop_inbox=prop_inbox, core=core))
        made.append(links)
        return n

    yield build
    for links in made:
        for ref in (links.role, links.fsm, links.chain, links.transport):
            try:
                ref.stop(timeout=5)
            except pykka.ActorDeadError:
                pass


def _propose(n, cid: str, seq: int, data: bytes):  # noqa: ANN001
    done = threading.Event()
    out = {}

    def waiter(status, result, hint):  # noqa: ANN001
        out.update(status=status, result=result, hint=hint)
        done.set()
    n.proposals.add((cid, seq), waiter)
    n.prop_inbox.put(Command(cid, seq, data))
    return done, out


def _elect(n) -> None:  # noqa: ANN001
    """A single voter elects itself once its timer expires (ticks are the only clock)."""
    for _ in range(40):
        n.links.role.tell(Tick())
    deadline = time.monotonic() + 10
    while n.core.role.name != "LEADER" and time.monotonic() < deadline:
        time.sleep(0.01)
    assert n.core.role.name == "LEADER"


def test_single_node_commits_only_what_is_durable_and_answers_once(node):
    n = node()
    _elect(n)
    done, out = _propose(n, "c", 1, kv_put("k", "v"))
    assert done.wait(10)
    assert out["status"] == Status.OK and out["result"] == {"ok": True}
    # the block holding the command was written (synced) before the answer existed
    written = [ev[1] for ev in n.journal.events if ev[0] == "write"]
    assert any(len(ids) > 0 and ids[-1].height >= 2 for ids in written)
    # a retry of the same (client, seq) gets the cached result and applies nothing new
    done2, out2 = _propose(n, "c", 1, kv_put("k", "other"))
    assert done2.wait(10) and out2["status"] == Status.OK


def test_follower_ack_leaves_only_after_the_blocks_are_written(node):
    n = node(node_id=2, voters=(1, 2, 3))
    g = genesis(CID)
    b1 = make_block(g, 1, BlockKind.NOOP, b"")
    b2 = make_block(b1, 1, BlockKind.NORMAL, b"")
    n.links.role.tell(AppendBlocks(src=1, dst=2, term=1, prev=g.id, blocks=(b1, b2),
                                   commit=g.id, seq=1))
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        acks = [i for i, ev in enumerate(n.journal.events)
                if ev[0] == "send" and type(ev[1]) is AppendResp and ev[1].success]
        if acks:
            break
        time.sleep(0.01)
    assert acks, n.journal.events
    writes = [i for i, ev in enumerate(n.journal.events) if ev[0] == "write" and b2.id in ev[1]]
    assert writes and writes[0] < acks[0], n.journal.events
    assert n.store.load().head == b2.id


def test_group_commit_writes_many_readys_in_one_batch(node):
    n = node()
    _elect(n)
    waits = [_propose(n, f"c{i}", 1, kv_put(f"k{i}", "v")) for i in range(200)]
    for done, out in waits:
        assert done.wait(10) and out["status"] == Status.OK
    writes = [ev for ev in n.journal.events if ev[0] == "write"]
    # 200 proposals were batched: far fewer synchronous writes than proposals
    assert len(writes) < 100, len(writes)


def test_an_actor_failure_is_fatal_for_the_node(node):
    n = node(fail_store=True)
    for _ in range(40):
        n.links.role.tell(Tick())
    deadline = time.monotonic() + 10
    while not n.fatal and time.monotonic() < deadline:
        time.sleep(0.01)
    assert n.fatal and n.fatal[0][0] == "ChainActor"
    assert isinstance(n.fatal[0][1], OSError)


def test_a_side_queue_whose_consumer_stopped_does_not_raise_into_the_producer():
    """Shutdown: the transport's I/O thread may still put peer messages or proposals after
    the role actor stopped; the nudge must not raise into that thread (it would be taken
    for a fatal transport error)."""
    class Sink(pykka.ThreadingActor):
        def on_receive(self, message):  # noqa: ANN001
            pass
    q = SideQueue()
    q.target = Sink.start()
    q.target.stop()
    q.put_many([1, 2])          # must not raise
    assert q.drain() == [1, 2]
