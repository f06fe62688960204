"""A seeded, deterministic simulation of a Josefine cluster (docs/protocol.md C.64).

One `Simulation` runs N pure cores over a simulated network that drops, duplicates,
delays and reorders messages, partitions nodes (symmetric, one-way, leader isolation) and
crashes/restarts them.

Readys are executed by the production runtime (josefine/runtime/executor.py), not by a
copy of it: each node's `ReadyRouter` sends eager messages, carries out what skips the
disk and queues the rest on the node's write channel; a `WritePlanner` merges everything
queued into one write when the node's lagging disk starts it (group commit), and the write
completes after a seeded delay, with `carry_out` releasing acks, votes, applies and
`Persisted` only then. The disk is a `MemoryStore`; writes made without sync (the lazy
commit marker) are visible at once but stay volatile until a synced write follows, and a
crash keeps only a random prefix of them, so a crash loses exactly what a real one may:
queued and in-flight writes and unsynced ones. Cores read evicted blocks back through the store
(a small memory budget makes them evict often), as production cores do.

Snapshots (A.13, A.14): at seeded points a node captures its real `Applier` (KV state and
sessions) into bytes; the "file" becomes durable after a disk delay (a crash before then
loses it) and only then does the core hear `SnapshotTaken` and compact. A leader's
`InstallSnapshot` travels the network with the file's bytes (dropped, duplicated and
delayed like any message); the follower keeps the file durably on arrival, as the runtime
does after verifying a stream, and its `Ready.restore` loads it into the applier. A restart
restores the newest snapshot at or above the store's base that lies on its chain. The
applied-state digests (B15) then check that what a snapshot restores is exactly what
replaying the blocks would have built.

Membership (A.12): `spares` nodes start outside the configuration; at seeded points the
leader is asked to add a learner, promote one or remove a member (the core refuses what
A.12 forbids). An id is never added twice: a removed node stays out (bringing it back with
its old disk, or with a wiped one under the same id, is what real deployments must not
do either: it could vote twice in a term). B13 and B18 are checked against the
configurations on the committed path.

Clients run a key-value workload throughout (writes with unique values, cas, ReadIndex
reads), retrying a write with the same (client id, seq) until it is answered. After every
step the invariants of §B are checked (invariants.py); at the end the client history must be
linearizable and, once faults stop, every pending operation must be answered.

Everything random comes from one `random.Random(seed)`; a failure reprints the seed and the
last steps of the trace so it replays with `Simulation(seed=...).run()`.
"""
from __future__ import annotations

import heapq
import io
import random
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from josefine.chain.block import Block, Command, genesis
from josefine.chain.memory import MemoryStore
from josefine.config import core_config
from josefine.fsm.applier import Applier
from josefine.fsm.kv import KVStateMachine, kv_cas, kv_get, kv_put
from josefine.messages import (AppendResp, ApplyWork, ChangeConfig, InstallSnapshot,
                               InstallSnapshotResp,
                               Persisted, Propose, ReadIndex, SnapshotStatus, SnapshotTaken,
                               Status, Tick)
from josefine.raft.core import CoreConfig, RaftCore, Role
from josefine.raft.membership import ChangeOp, Config
from josefine.raft.ready import EventKind, OutcomeKind, Ready
from josefine.runtime.executor import (
    CommitMarker,
    Plan,
    ReadyRouter,
    Route,
    StoreWrite,
    WritePlanner,
    carry_out,
)
from josefine.sim.invariants import Invariants, InvariantViolation
from josefine.types import BlockId, SafetyViolation

CLUSTER = "sim"


@dataclass
class SimConfig:
    nodes: int = 3
    steps: int = 1000
    clients: int = 3
    keys: int = 2
    drop: float = 0.05
    dup: float = 0.03
    max_delay: int = 6
    crash_rate: float = 0.004
    partition_rate: float = 0.004
    transfer_rate: float = 0.001
    fault_fraction: float = 0.7
    """Faults happen only in the first fraction of steps; the rest is for healing."""
    liveness_steps: int = 4000
    """After faults stop and everything heals: steps within which every op must finish."""
    # Core settings: any field named like a CoreConfig field is passed to every core.
    pre_vote: bool = True
    check_quorum: bool = True
    heartbeat_ticks: int = 1
    election_ticks: int = 10
    max_batch_blocks: int = 4
    max_inflight: int = 4
    client_timeout: int = 120
    trace_len: int = 40
    disk_lag: int = 6
    """A started write completes at least this many steps later, at most 2x (seeded)."""
    keep_blocks: int = 4
    keep_bytes: int = 64
    """Small memory budgets: cores evict committed blocks and read them back from disk."""
    snapshot_rate: float = 0.01
    spares: int = 0
    """Nodes that start outside the configuration and may join (and leave) as learners
    and voters."""
    membership_rate: float = 0.0
    """Chance per step that the leader is asked for a membership change."""
    """Chance per step that a live node (without one in progress) starts a snapshot."""
    keep_previous_snapshot: bool = True
    snapshot_timeout_ticks: int = 40
    follower_reads: bool = True
    """Followers serve reads with a read index from the leader (A.10)."""
    forward_proposals: bool = True
    """Followers forward writes to the leader (A.8)."""
    any_node_rate: float = 0.5
    """Chance that a client sends a new op, or a retry after a timeout, to a random node
    (often a follower) instead of the node it last saw leading."""


@dataclass
class _Op:
    client: int
    kind: str          # write | cas | read
    key: str
    value: Any
    seq: int
    invoked: int
    node: int = 0
    sent_at: int = 0
    read_id: int | None = None
    attempts: int = 0
    hinted: bool = False
    sent_to: dict[int, Any] = field(default_factory=dict)
    """Nodes this write was handed to, with the core of the life that took it: each such
    life holds a waiter that answers the write once applied (a crash loses it)."""


@dataclass
class _Node:
    id: int
    store: MemoryStore
    core: RaftCore | None = None
    applier: Applier | None = None
    router: ReadyRouter = field(default_factory=ReadyRouter)
    planner: WritePlanner = field(default_factory=WritePlanner)
    channel: list[Ready | CommitMarker] = field(default_factory=list)
    """The node's write channel: what the router queued for the disk."""
    inflight: Plan | None = None
    done_at: int = 0
    volatile: list[StoreWrite] = field(default_factory=list)
    """Writes made without sync since the last synced one: a crash may lose them."""
    volatile_base: tuple | None = None
    """The store as of the last synced write, when unsynced writes followed it."""
    alive: bool = True
    snaps: dict[BlockId, tuple[bytes, bytes]] = field(default_factory=dict)
    """Durable snapshot "files": base -> (base digest, the Applier's snapshot bytes)."""
    snap_pending: tuple[int, BlockId, bytes, bytes] | None = None
    """A snapshot being written: (done at, base, digest, bytes); a crash loses it."""

    @property
    def disk_busy(self) -> bool:
        return bool(self.channel) or self.inflight is not None

    @property
    def leads(self) -> bool:
        return self.core is not None and self.core.role == Role.LEADER


class _Durable:
    """What node n's disk would still hold after a crash now: its store without the
    unsynced writes (B13 counts only those)."""

    __slots__ = ("n",)

    def __init__(self, n: _Node) -> None:
        self.n = n

    def __contains__(self, bid: Any) -> bool:
        """Stored, or at or below the store's base: held by a snapshot then (base writes
        are always synced). B13 asks this only of blocks on the committed path C, whose
        blocks below a base (itself on C) are exactly the base's ancestors."""
        snap = self.n.volatile_base
        if snap is None:
            return bid in self.n.store or bid.height <= self.n.store.stats()["base"].height
        return bid in snap[0] or bid.height <= snap[4].id.height


class _SimEffects:
    """A node's plan effects in the simulation: the disk, the network, its applier."""

    __slots__ = ("sim", "n")

    def __init__(self, sim: "Simulation", n: _Node) -> None:
        self.sim, self.n = sim, n

    def write(self, w: StoreWrite) -> None:
        n = self.n
        if w.sync:   # an fsync makes everything logged before it durable too
            n.volatile.clear()
            n.volatile_base = None
        else:        # visible at once (page cache), lost by a crash unless flushed
            if n.volatile_base is None:
                n.volatile_base = n.store.snapshot()
            n.volatile.append(w)
        self.sim._disk_write(n, w)

    def send(self, msgs: list[Any]) -> None:
        self.sim._check_acks(self.n, msgs)
        self.sim.inv.on_sent(self.n.id, msgs)
        for m in msgs:
            self.sim._net_send(m)

    def apply(self, work: ApplyWork) -> None:
        self.sim._apply(self.n, work)

    def persisted(self, head: Any) -> None:
        if self.n.core is not None:
            self.sim._step_node(self.n, Persisted(head=head))


class SimulationFailure(AssertionError):
    pass


class Simulation:
    def __init__(self, seed: int, config: SimConfig | None = None) -> None:
        self.seed = seed
        self.cfg = cfg = config or SimConfig()
        self.rng = random.Random(seed)
        self.genesis = genesis(CLUSTER)
        self.voters = frozenset(range(1, cfg.nodes + 1))
        """The bootstrap voters (the configuration at genesis)."""
        self.all_ids = tuple(range(1, cfg.nodes + cfg.spares + 1))
        self.initial = Config.of(self.voters, {i: f"sim://{i}" for i in self.all_ids})
        self.nodes = {i: _Node(i, MemoryStore(CLUSTER)) for i in self.all_ids}
        self.ever_member = set(self.voters)
        self.inv = Invariants(self.genesis, self.voters, self.initial)
        self.net: list[tuple[int, int, Any]] = []   # (deliver_at, uid, msg)
        self.uid = 0
        self.now = 0
        self.blocked: set[tuple[int, int]] = set()  # (src, dst) links cut
        self.trace: deque[str] = deque(maxlen=cfg.trace_len)
        self.history: list[dict] = []
        self.ops: dict[int, _Op | None] = {c: None for c in range(cfg.clients)}
        self.seqs = {c: 0 for c in range(cfg.clients)}
        self.read_ids = 0
        self.reads: dict[int, _Op] = {}
        self.value_counter = 0
        self.known_leader: int | None = None
        """The node a client last saw leading (an OK from it, or a hint)."""
        self.faults = 0
        self.completed = 0
        self.draining = False
        self.stats = {"crashes": 0, "restarts": 0, "partitions": 0, "elections": 0,
                      "dropped": 0, "duplicated": 0, "delivered": 0, "retries": 0,
                      "group_commits": 0, "skipped": 0, "lazy_markers": 0, "evicted": 0,
                      "snapshots": 0, "installs_sent": 0, "installed": 0, "compactions": 0,
                      "config_changes": 0, "config_committed": 0,
                      "follower_reads": 0, "follower_writes": 0}
        for n in self.nodes.values():
            self._boot(n)

    # ------------------------------------------------------------------ node lifecycle
    def _core_config(self, nid: int) -> CoreConfig:
        return core_config(self.cfg, node_id=nid, voters=self.voters, initial=self.initial,
                           seed=self.seed * 1000 + self.now)

    def _boot(self, n: _Node) -> None:
        st = n.store.load()
        n.applier = applier = Applier(KVStateMachine(), config=self.initial)
        base = st.base if st.base is not None else self.genesis
        snap = self._restart_snapshot(n, base, st.blocks)
        snapshot = None
        base_config = None
        if snap is not None:
            base_config = applier.restore(io.BytesIO(n.snaps[snap][1])).members
            snapshot = (snap, n.snaps[snap][0])
        n.core = core = RaftCore(self._core_config(n.id), self.genesis, term=st.hard_state.term,
                                 voted_for=st.hard_state.voted_for, blocks=st.blocks,
                                 head=st.head, commit=st.commit, loader=n.store.get_block,
                                 base=st.base, applied=snap, snapshot=snapshot,
                                 base_config=base_config, incarnation=self.now)
        n.router, n.planner = ReadyRouter(), WritePlanner(fsync=True)
        n.channel, n.inflight = [], None
        n.snap_pending = None
        n.alive = True
        self._execute(n, core.start())

    def _restart_snapshot(self, n: _Node, base: Block,
                          blocks: dict[BlockId, Block]) -> BlockId | None:
        """As runtime/snapshots.choose_restart_snapshot: the newest file at or above the
        store's base whose base is the store's or a stored block."""
        for last in sorted(n.snaps, key=lambda b: (b.height, b.term), reverse=True):
            digest = n.snaps[last][0]
            if last.height < base.id.height:
                break
            if (last == base.id and digest == base.digest) or \
                    (last in blocks and blocks[last].digest == digest):
                return last
        if base.id.height > 0:
            raise InvariantViolation("A13", f"n{n.id}: compacted to {base.id} with no usable "
                                            "snapshot")
        return None

    # ------------------------------------------------------------------ snapshots
    def _start_snapshot(self, n: _Node) -> None:
        applier, core = n.applier, n.core
        assert applier is not None and core is not None
        last = applier.applied
        newest = max((b.height for b in n.snaps), default=0)
        if last.height <= newest or n.snap_pending is not None:
            return
        digest = self.inv.registry[last].digest
        out = io.BytesIO()
        assert applier.config is not None
        applier.snapshot(out, block_digest=digest, config=applier.config.voters)
        lag = self.cfg.disk_lag
        n.snap_pending = (self.now + self.rng.randint(lag, 2 * lag), last, digest,
                          out.getvalue())
        self.trace.append(f"{self.now}: n{n.id} snapshot of {last} started")

    def _finish_snapshot(self, n: _Node) -> None:
        assert n.snap_pending is not None
        _, last, digest, data = n.snap_pending
        n.snap_pending = None
        n.snaps[last] = (digest, data)
        for old in sorted(n.snaps, key=lambda b: (b.height, b.term), reverse=True)[2:]:
            del n.snaps[old]   # runtime/snapshots.KEEP_SNAPSHOTS
        self.stats["snapshots"] += 1
        self._step_node(n, SnapshotTaken(last=last, digest=digest))

    def _crash(self, n: _Node) -> None:
        n.alive = False
        n.channel, n.inflight = [], None   # queued and in-flight writes are lost
        if n.volatile_base is not None:   # the OS may have flushed some unsynced writes
            kept = self.rng.randint(0, len(n.volatile))
            n.store.restore(n.volatile_base)
            for v in n.volatile[:kept]:
                n.store.write(hard_state=v.hard_state, blocks=v.blocks, head=v.head,
                              commit=v.commit, delete=v.delete, base=v.base)
            n.volatile.clear()
            n.volatile_base = None
        n.core = None
        n.applier = None
        n.snap_pending = None   # a snapshot file not yet durable is gone
        self.stats["crashes"] += 1
        self.trace.append(f"{self.now}: crash n{n.id}")

    def _restart(self, n: _Node) -> None:
        self._boot(n)
        assert n.core is not None
        self.stats["restarts"] += 1
        self.inv.on_restart(n.id, n.core, n.store)
        self.trace.append(f"{self.now}: restart n{n.id} term={n.core.term} "
                          f"vote={n.core.voted_for} head={n.core.head} commit={n.core.commit}")

    # ------------------------------------------------------------------ executing Readys
    def _step_node(self, n: _Node, inp: Any) -> None:
        core = n.core
        assert core is not None, f"n{n.id} is down: it cannot step"
        before = {"term": core.term, "voted_for": core.voted_for, "commit": core.commit,
                  "role": core.role, "head": core.head}
        c_len = len(self.inv.committed)
        r = core.step(inp)
        self.trace.append(f"{self.now}: n{n.id} <- {_short(inp)} => {core.role.name[0]} "
                          f"t{core.term} h{core.head} c{core.commit}")
        self._execute(n, r)
        self.inv.check_node(n.id, core, before)   # extends C when the commit moved
        if len(self.inv.committed) > c_len:
            # B13 at the moment C grows: what a quorum has made durable, unsynced writes
            # excluded (a crash could still take those back)
            self.inv.check_commit_justified(
                {i: _Durable(x) for i, x in self.nodes.items()}, c_len, core.config)

    def _execute(self, n: _Node, r: Ready) -> None:
        inv = self.inv
        core = n.core
        assert core is not None, f"n{n.id} is down: it has no Ready to execute"
        if r.blocks:
            inv.on_new_blocks(n.id, core, r.blocks)
        if r.events:
            inv.on_events(n.id, core, r.events)
            self.stats["elections"] += sum(1 for e in r.events
                                           if e[0] == EventKind.BECAME_LEADER)
            self.stats["compactions"] += sum(1 for e in r.events
                                             if e[0] == EventKind.COMPACTED)
            self.stats["installed"] += sum(1 for e in r.events
                                           if e[0] == EventKind.INSTALLED)
        if r.outcomes:
            self.stats["config_committed"] += sum(
                1 for o in r.outcomes if o.kind == OutcomeKind.CONFIG and o.status == Status.OK)
        routed = n.router.route(r, n.disk_busy)
        if routed.eager:
            self._check_acks(n, routed.eager)
            inv.on_sent(n.id, routed.eager)
            for m in routed.eager:
                self._net_send(m)
        if routed.route is Route.QUEUE:
            if type(routed.queued[0]) is CommitMarker:
                self.stats["lazy_markers"] += 1
            n.channel.extend(routed.queued)
        elif routed.route is Route.SKIP:
            self.stats["skipped"] += 1
            assert routed.now is not None, "a SKIP route carries its plan"
            carry_out(routed.now, _SimEffects(self, n))

    def _check_acks(self, n: _Node, msgs: list[Any]) -> None:
        """B4 at the moment of sending: a successful AppendResp or InstallSnapshotResp
        promises that its match is durable on this node right now (stored by a synced
        write, or at or below a durable base), not merely that it will be."""
        durable = None
        for m in msgs:
            if (type(m) is AppendResp or type(m) is InstallSnapshotResp) and m.success:
                durable = durable or _Durable(n)
                if m.match not in durable:
                    raise InvariantViolation("B4", f"n{n.id} acked {m.match} to n{m.dst} "
                                                   "before it was durable")

    def _disk_step(self, n: _Node) -> None:
        """The disk of node n makes progress: it starts a write of everything queued (group
        commit), or completes the write in flight once its seeded delay has passed."""
        if n.inflight is None:
            items, n.channel = n.channel, []
            n.inflight = n.planner.plan(items)
            lag = self.cfg.disk_lag
            n.done_at = self.now + self.rng.randint(lag, 2 * lag) if lag else self.now
            if len(items) > 1:
                self.stats["group_commits"] += 1
        elif self.now >= n.done_at:
            plan, n.inflight = n.inflight, None
            carry_out(plan, _SimEffects(self, n))

    def _disk_write(self, n: _Node, w: StoreWrite) -> None:
        n.store.write(hard_state=w.hard_state, blocks=w.blocks, head=w.head, commit=w.commit,
                      delete=w.delete, base=w.base)
        if w.delete:
            self.inv.on_deleted(n.id, w.delete)

    def _apply(self, n: _Node, work: ApplyWork) -> None:
        applier = n.applier
        assert applier is not None, f"n{n.id} is down: it applies nothing"
        if work.restore is not None:
            applier.restore(io.BytesIO(n.snaps[work.restore][1]))
        for b in work.blocks:
            results = applier.apply_block(b)
            eff = []
            for c, _ in results:
                sess = applier.sessions.get(c.client_id)
                assert sess is not None, f"{c.client_id} has no session after applying"
                if sess.height == b.id.height and sess.last_seq == c.seq:
                    eff.append((c.client_id, c.seq))
            self.inv.on_applied(n.id, b, applier.sm_digest(), eff)
            for c, res in results:
                # as the runtime's waiters do: the node a client handed the write to
                # answers it once it has applied it (a follower forwarded it)
                self._client_reply(c.client_id, c.seq, Status.OK, res, n.id,
                                   applied_at=n.id, leads=n.leads)
        for read_id, _index in work.reads:
            op = self.reads.pop(read_id, None)
            if op is not None:
                if not n.leads:
                    self.stats["follower_reads"] += 1
                res = applier.query(kv_get(op.key))
                self._finish(op, "ok", res.get("value") if isinstance(res, dict) else None)
        for o in work.outcomes:
            if o.kind == OutcomeKind.PROPOSE:
                self._client_reply(o.key[0], o.key[1], o.status, None, o.leader_hint)
            elif o.kind == OutcomeKind.READ:
                op = self.reads.pop(o.key, None)
                if op is not None:
                    op.read_id = None  # retry with a fresh read id
                    self._redirect(op, o.leader_hint)

    # ------------------------------------------------------------------ network
    def _net_send(self, m: Any) -> None:
        rng = self.rng
        if type(m) is InstallSnapshot:   # the runtime streams the file: it travels along
            snap = self.nodes[m.src].snaps.get(m.last)
            if snap is None:
                src = self.nodes[m.src]
                if src.alive and src.core is not None:
                    self._step_node(src, SnapshotStatus(peer=m.dst, last=m.last, ok=False))
                return
            self.stats["installs_sent"] += 1
            m = _Carried(m, snap)
        if (m.src, m.dst) in self.blocked or rng.random() < self.cfg.drop:
            self.stats["dropped"] += 1
            return
        copies = 2 if rng.random() < self.cfg.dup else 1
        self.stats["duplicated"] += copies - 1
        for _ in range(copies):
            self.uid += 1
            heapq.heappush(self.net, (self.now + rng.randint(0, self.cfg.max_delay), self.uid, m))

    def _deliver_one(self) -> bool:
        if not self.net or self.net[0][0] > self.now:
            return False
        _, _, m = heapq.heappop(self.net)  # random delays reorder messages
        n = self.nodes[m.dst]
        if n.alive and (m.src, m.dst) not in self.blocked:
            self.stats["delivered"] += 1
            if type(m) is _Carried:   # verified and durable on arrival, then to the core
                n.snaps[m.msg.last] = m.file
                m = m.msg
            self._step_node(n, m)
        return True

    # ------------------------------------------------------------------ clients
    def _client_step(self) -> None:
        rng = self.rng
        c = rng.randrange(self.cfg.clients)
        op = self.ops[c]
        if op is None:
            if self.draining:
                return
            kind = rng.choice(("write", "write", "cas", "read", "read"))
            key = f"k{rng.randrange(self.cfg.keys)}"
            if kind == "write":
                self.value_counter += 1
                value: Any = f"v{self.value_counter}"
            elif kind == "cas":
                self.value_counter += 1
                value = [f"v{rng.randint(max(1, self.value_counter - 4), self.value_counter)}",
                         f"v{self.value_counter}"]
            else:
                value = None
            seq = 0
            if kind != "read":
                self.seqs[c] += 1
                seq = self.seqs[c]
            op = _Op(c, kind, key, value, seq, self.now, node=self._pick_node())
            self.ops[c] = op
            self.history.append({"process": c, "type": "invoke", "f": kind, "key": key,
                                 "value": value, "time": len(self.history)})
            self._send_op(op)
        elif self.now - op.sent_at > self.cfg.client_timeout:
            if not op.hinted:
                op.node = self._pick_node()   # no answer: try someone (else)
            op.hinted = False
            self._send_op(op)

    def _pick_node(self) -> int:
        rng = self.rng
        if self.known_leader is None or rng.random() < self.cfg.any_node_rate:
            return rng.choice(self.all_ids)
        return self.known_leader

    def _send_op(self, op: _Op) -> None:
        op.sent_at = self.now
        op.attempts += 1
        if op.attempts > 1:
            self.stats["retries"] += 1
        n = self.nodes[op.node]
        if not n.alive:
            return
        if op.kind == "read":
            if op.read_id is not None:
                self.reads.pop(op.read_id, None)
            self.read_ids += 1
            op.read_id = self.read_ids
            self.reads[op.read_id] = op
            self._step_node(n, ReadIndex(read_id=op.read_id))
        else:
            data = kv_put(op.key, op.value) if op.kind == "write" else \
                kv_cas(op.key, op.value[0], op.value[1])
            op.sent_to[n.id] = n.core
            self._step_node(n, Propose(commands=(Command(f"c{op.client}", op.seq, data),)))

    def _client_reply(self, client_id: str, seq: int, status: Status, result: Any,
                      hint: int | None, applied_at: int | None = None,
                      leads: bool = False) -> None:
        c = int(client_id[1:])
        op = self.ops.get(c)
        if op is None or op.kind == "read" or op.seq != seq:
            return
        if applied_at is not None:
            if op.sent_to.get(applied_at) is not self.nodes[applied_at].core:
                return   # no waiter for it there (never sent there, or lost in a crash)
            if leads:
                self.known_leader = applied_at
            else:
                self.stats["follower_writes"] += 1
        if status == Status.OK:
            if op.kind == "cas" and not (isinstance(result, dict) and result.get("ok")):
                self._finish(op, "fail", op.value)
            else:
                self._finish(op, "ok", op.value)
        elif status in (Status.NOT_LEADER, Status.BUSY, Status.UNKNOWN, Status.ABORTED):
            # retry the same (client, seq): sessions make it apply at most once
            self._redirect(op, hint)

    def _redirect(self, op: _Op, hint: int | None) -> None:
        """Retry soon, at the hinted leader if there is one."""
        if hint in self.nodes:
            op.node, op.hinted = hint, True
            self.known_leader = hint
        else:
            op.node = self.rng.choice(self.all_ids)
        op.sent_at = self.now - self.cfg.client_timeout + 3

    def _finish(self, op: _Op, typ: str, value: Any) -> None:
        self.history.append({"process": op.client, "type": typ, "f": op.kind, "key": op.key,
                             "value": value, "time": len(self.history)})
        self.ops[op.client] = None
        self.completed += 1

    # ------------------------------------------------------------------ faults
    def _fault(self) -> None:
        rng = self.rng
        kind = rng.random()
        alive = [n for n in self.nodes.values() if n.alive]
        dead = [n for n in self.nodes.values() if not n.alive]
        self.faults += 1
        if kind < 0.45:
            if dead and rng.random() < 0.6:
                self._restart(rng.choice(dead))
            elif len(dead) < (len(self.nodes) - 1) // 2 + 1 and alive:
                leaders = [n for n in alive if n.leads]
                victim = rng.choice(leaders) if leaders and rng.random() < 0.5 else \
                    rng.choice(alive)
                self._crash(victim)
        else:
            self.blocked.clear()
            ids = sorted(self.nodes)
            r = rng.random()
            if r < 0.25:
                self.trace.append(f"{self.now}: heal")
                return
            if r < 0.5:  # isolate the leader (or anyone)
                leader_ids = [n.id for n in alive if n.leads]
                x = leader_ids[0] if leader_ids else rng.choice(ids)
                self.blocked |= {(x, y) for y in ids if y != x} | {(y, x) for y in ids if y != x}
                desc = f"isolate n{x}"
            elif r < 0.75:  # random majority/minority split
                rng.shuffle(ids)
                k = rng.randint(1, len(ids) // 2)
                a, b = ids[:k], ids[k:]
                self.blocked |= {(x, y) for x in a for y in b} | {(y, x) for x in a for y in b}
                desc = f"split {sorted(a)}|{sorted(b)}"
            else:  # one-way loss
                x, y = rng.sample(ids, 2)
                self.blocked.add((x, y))
                desc = f"one-way n{x}->n{y}"
            self.stats["partitions"] += 1
            self.trace.append(f"{self.now}: partition {desc}")

    def _membership_change(self) -> None:
        """Ask the leader for a random change; the core refuses what A.12 forbids."""
        rng = self.rng
        leaders = [n for n in self.nodes.values() if n.alive and n.leads]
        if not leaders:
            return
        lead = leaders[0]
        assert lead.core is not None
        cfg = lead.core.config
        outside = [i for i in self.all_ids if i not in self.ever_member]
        learners = sorted(cfg.learners)
        r = rng.random()
        if outside and r < 0.4:
            node = rng.choice(outside)
            self.ever_member.add(node)
            change = ChangeConfig(op=int(ChangeOp.ADD_LEARNER), node=node,
                                  address=f"sim://{node}")
        elif learners and r < 0.75:
            change = ChangeConfig(op=int(ChangeOp.PROMOTE), node=rng.choice(learners))
        else:
            change = ChangeConfig(op=int(ChangeOp.REMOVE), node=rng.choice(sorted(cfg.ids)))
        self.stats["config_changes"] += 1
        self.trace.append(f"{self.now}: n{lead.id} <- {change}")
        self._step_node(lead, change)

    def _heal_all(self) -> None:
        self.blocked.clear()
        for n in self.nodes.values():
            if not n.alive:
                self._restart(n)

    # ------------------------------------------------------------------ main loop
    def _one_step(self, faults: bool) -> None:
        rng = self.rng
        self.now += 1
        x = rng.random()
        if (x < 0.45 or len(self.net) > 4 * len(self.nodes)) and self._deliver_one():
            return
        disks = [n for n in self.nodes.values() if n.alive and (
            (n.inflight is None and n.channel) or
            (n.inflight is not None and self.now >= n.done_at))]
        if x < 0.7 and disks:
            self._disk_step(rng.choice(disks))
            return
        for n in self.nodes.values():
            if n.alive and n.snap_pending is not None and self.now >= n.snap_pending[0]:
                self._finish_snapshot(n)
                return
        if self.cfg.snapshot_rate and rng.random() < self.cfg.snapshot_rate:
            alive = [n for n in self.nodes.values() if n.alive]
            if alive:
                self._start_snapshot(rng.choice(alive))
                return
        y = rng.random()
        cfg = self.cfg
        if faults and y < cfg.crash_rate + cfg.partition_rate:
            self._fault()
        elif faults and cfg.membership_rate and y < cfg.crash_rate + cfg.partition_rate \
                + cfg.membership_rate:
            self._membership_change()
        elif faults and y < cfg.crash_rate + cfg.partition_rate + cfg.transfer_rate:
            leaders = [n for n in self.nodes.values() if n.alive and n.leads]
            if leaders:
                from josefine.messages import TransferLeadership
                self._step_node(leaders[0], TransferLeadership(
                    target=rng.choice([i for i in self.nodes if i != leaders[0].id])))
        elif y < 0.55:
            alive = [n for n in self.nodes.values() if n.alive]
            if alive:
                self._step_node(rng.choice(alive), Tick())
        else:
            self._client_step()

    def run(self) -> "Simulation":
        cfg = self.cfg
        fault_steps = int(cfg.steps * cfg.fault_fraction)
        try:
            for i in range(cfg.steps):
                self._one_step(i < fault_steps)
                if i == fault_steps:
                    self._heal_all()
            self._heal_all()
            self._check_liveness()
            self.stats["evicted"] = sum(n.core.tree.evicted_below - 1
                                        for n in self.nodes.values() if n.core is not None)
            self._check_linearizable()
        except InvariantViolation as exc:
            raise SimulationFailure(self._report(str(exc))) from exc
        except SafetyViolation as exc:   # a production node stops on this: a failure too
            raise SimulationFailure(self._report(f"SafetyViolation: {exc}")) from exc
        return self

    def _check_liveness(self) -> None:
        """Faults have stopped: a leader appears and every op in flight gets an answer."""
        self.draining = True
        for _ in range(self.cfg.liveness_steps):
            if self._quiet():
                return
            self._one_step(False)
        leaders = [n.id for n in self.nodes.values() if n.alive and n.leads]
        raise InvariantViolation("LIVENESS", f"after {self.cfg.liveness_steps} fault-free "
                                             f"steps: leaders={leaders}, open ops="
                                             f"{[o for o in self.ops.values() if o]}")

    def _check_linearizable(self) -> None:
        """B17: the client history is linearizable (a failed cas = comparison failed)."""
        from josefine.check.checker import check_history, format_result
        res = check_history(self.history, cas_fail_is_compare_failure=True, time_limit=10)
        if res.verdict == "violation":
            raise InvariantViolation("B17", "client history is not linearizable:\n"
                                     + format_result(res))
        if res.verdict == "unknown":
            self.stats["linearizability_unknown"] = 1

    def _quiet(self) -> bool:
        if any(o is not None for o in self.ops.values()):
            return False
        return any(n.alive and n.leads for n in self.nodes.values())

    def _report(self, why: str) -> str:
        lines = [f"simulation seed={self.seed} failed at step {self.now}: {why}",
                 f"replay: Simulation({self.seed}, {self.cfg!r}).run()",
                 "last steps:"] + [f"  {t}" for t in self.trace]
        return "\n".join(lines)


@dataclass(frozen=True, slots=True)
class _Carried:
    """An InstallSnapshot on the simulated wire with the snapshot file it stands for."""

    msg: InstallSnapshot
    file: tuple[bytes, bytes]

    @property
    def src(self) -> int:
        return self.msg.src

    @property
    def dst(self) -> int:
        return self.msg.dst


def _short(m: Any) -> str:
    name = type(m).__name__
    if name in ("Tick",):
        return "Tick"
    d = {k: getattr(m, k) for k in getattr(m, "__slots__", ()) if k not in ("blocks",)}
    if hasattr(m, "blocks"):
        d["blocks"] = [str(b.id) for b in m.blocks]
    if name == "Propose":
        d = {"n": len(m.commands)}
    return f"{name}{d}"
