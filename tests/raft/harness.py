"""A deterministic in-memory network of pure RaftCores (etcd's `network` in raft_test.go).

Nothing here sleeps, spawns a thread or touches a disk. Each node is a `RaftCore`; every
Ready it returns is executed in the documented order (josefine/raft/ready.py):

1. `eager` messages go on the wire (a leader may ship its blocks before its own fsync);
2. the durable part (`hard_state`, `blocks`, `head`, `commit`, `delete`) is written to the
   node's `Disk` — unless the node's disk is paused, in which case the rest of the Ready
   waits in `unsynced` until `flush()` and is lost on `crash()`;
3. `messages` go on the wire (votes and acks promise what step 2 made durable);
4. `apply`, `reads` and `outcomes` are recorded; then `Persisted(head)` is fed back.

Messages travel through one FIFO queue. Links can be cut (`cut`, `drop`, `isolate`) and
whole message types ignored; a message is lost if its link is closed when it is sent *or*
when it is delivered. `crash()` throws the core away together with anything not yet synced;
`restart()` rebuilds a core from the `Disk`, as a real node does from LevelDB.

Snapshots (A.14): `snapshot(i)` records node i's applied state (the list of applied
commands) as a durable snapshot on its disk and tells the core; the core's `base` writes
compact the disk; an `InstallSnapshot` put on the wire carries, when delivered, the
sender's snapshot to the receiver's disk first (the runtime's chunk stream, in one piece);
a `restore` replaces the receiver's state machine by it; `restart` restores the newest
snapshot on disk at or above the base and replays from there.

After every `stabilize()` (and on demand via `check()`) the harness asserts a subset of the
docs/protocol.md §B invariants: B1, B2, B3/B4, B6, B8, B11, B12, B15 and B19.
"""
from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

from josefine.chain.block import (Block, BlockKind, Command, decode_commands, encode_commands,
                                  genesis, make_block)
from josefine.messages import (InstallSnapshot, PreVoteReq, PreVoteResp, Persisted, Propose,
                               ReadIndex, SnapshotStatus, SnapshotTaken, Tick,
                               TransferLeadership, VoteReq, VoteResp)
from josefine.raft.core import CoreConfig, RaftCore, Role
from josefine.raft.ready import Outcome, Ready
from josefine.types import GENESIS_ID, BlockId

CLUSTER = "test"
G = genesis(CLUSTER)
ET = 10


# ============================================================================ block helpers
def chain(parent: Block, terms: Iterable[int], kind: BlockKind = BlockKind.NORMAL,
          tag: bytes = b"") -> list[Block]:
    """Blocks extending `parent`, one per term given (heights consecutive)."""
    out: list[Block] = []
    p = parent
    for t in terms:
        data = tag + b"%d/%d" % (t, p.id.height + 1)
        payload = encode_commands([Command("pre", p.id.height + 1, data)]) \
            if kind == BlockKind.NORMAL else b""
        p = make_block(p, t, kind, payload)
        out.append(p)
    return out


def ids(blocks: Iterable[Block]) -> list[BlockId]:
    return [b.id for b in blocks]


# ============================================================================ durable state
@dataclass
class Disk:
    """What a node has fsync'ed: the only thing that survives `crash()`."""

    term: int = 0
    voted_for: int | None = None
    blocks: dict[BlockId, Block] = field(default_factory=dict)
    head: BlockId = GENESIS_ID
    commit: BlockId = GENESIS_ID
    base: Block | None = None
    snaps: dict[BlockId, tuple[bytes, list]] = field(default_factory=dict)
    """Durable snapshots: base id -> (base digest, the applied commands it holds)."""

    @classmethod
    def of(cls, blocks: Iterable[Block] = (), *, term: int = 0, voted_for: int | None = None,
           head: BlockId | None = None, commit: BlockId = GENESIS_ID) -> "Disk":
        bl = list(blocks)
        d = {b.id: b for b in bl}
        if head is None:
            head = bl[-1].id if bl else GENESIS_ID
        return cls(term, voted_for, d, head, commit)

    def copy(self) -> "Disk":
        return Disk(self.term, self.voted_for, dict(self.blocks), self.head, self.commit,
                    self.base, dict(self.snaps))


# ============================================================================ single cores
def new_core(node_id: int = 1, n: int = 3, *, disk: Disk | None = None,
             voters: Iterable[int] | None = None, **cfg: Any) -> RaftCore:
    """A core with etcd's test defaults: pre-vote and check-quorum off, ET=10, HB=1."""
    cfg.setdefault("pre_vote", False)
    cfg.setdefault("check_quorum", False)
    cfg.setdefault("election_ticks", ET)
    cfg.setdefault("heartbeat_ticks", 1)
    vs = frozenset(voters) if voters is not None else frozenset(range(1, n + 1))
    d = disk or Disk()
    core = RaftCore(CoreConfig(node_id=node_id, voters=vs, **cfg), G, term=d.term,
                    voted_for=d.voted_for, blocks=dict(d.blocks), head=d.head, commit=d.commit)
    core.start()
    return core


def tick_until_campaign(core: RaftCore) -> Ready:
    """Tick a follower until it starts a (pre-)campaign; returns that Ready."""
    for _ in range(3 * core.cfg.election_ticks):
        r = core.step(Tick())
        if core.role != Role.FOLLOWER:
            return r
    raise AssertionError(f"node {core.id} never campaigned")


def make_leader(core: RaftCore) -> Ready:
    """Campaign and feed grants from the lowest peers until `core` leads; returns the last Ready.

    Grants are answers to requests, so they carry the terms a real voter would use."""
    tick_until_campaign(core)
    r = Ready()
    for p in core.peers:
        if core.role == Role.LEADER:
            break
        if core.role == Role.PRECANDIDATE:
            r = core.step(PreVoteResp(src=p, dst=core.id, term=core.term + 1, granted=True))
        elif core.role == Role.CANDIDATE:
            r = core.step(VoteResp(src=p, dst=core.id, term=core.term, granted=True))
    if core.role == Role.PRECANDIDATE or core.role == Role.CANDIDATE:
        # pre-vote won: now the real votes
        for p in core.peers:
            if core.role == Role.LEADER:
                break
            r = core.step(VoteResp(src=p, dst=core.id, term=core.term, granted=True))
    assert core.role == Role.LEADER, core.role
    return r


def of_type(msgs: Iterable[Any], t: type | tuple[type, ...], dst: int | None = None) -> list:
    return [m for m in msgs if isinstance(m, t) and (dst is None or m.dst == dst)]


def out(r: Ready) -> list:
    """Every message of a Ready, eager first (the order they leave in)."""
    return list(r.eager) + list(r.messages)


# ============================================================================ the network
class Network:
    """N cores, one FIFO wire, per-node disks, and recorders for what each node did."""

    def __init__(self, n: int | Iterable[int] = 3, *, disks: dict[int, Disk] | None = None,
                 overrides: dict[int, dict] | None = None, check: bool = True,
                 voters: Iterable[int] | None = None, **cfg: Any) -> None:
        self.ids = list(range(1, n + 1)) if isinstance(n, int) else list(n)
        cfg.setdefault("pre_vote", False)
        cfg.setdefault("check_quorum", False)
        cfg.setdefault("election_ticks", ET)
        cfg.setdefault("heartbeat_ticks", 1)
        voters = frozenset(self.ids if voters is None else voters)   # the bootstrap voters
        overrides = overrides or {}
        self.cfgs = {i: CoreConfig(node_id=i, voters=voters, **{**cfg, **overrides.get(i, {})})
                     for i in self.ids}
        self.auto_check = check
        self.disk = {i: (disks or {}).get(i, Disk()).copy() for i in self.ids}
        self.nodes: dict[int, RaftCore] = {}
        self.queue: deque = deque()
        self.sent: list[Any] = []          # everything ever put on the wire, lost or not
        self.lost: list[Any] = []
        self.delivered: list[Any] = []
        self.log: list[tuple[int, Any, Ready]] = []   # (node, input, ready) per step
        self.applied: dict[int, list[Block]] = {i: [] for i in self.ids}   # since last (re)start
        self.sm: dict[int, list[tuple[str, int, bytes]]] = {i: [] for i in self.ids}
        self.read_results: dict[Any, tuple[int, BlockId, list]] = {}
        self.reads: dict[int, list[tuple[Any, BlockId]]] = {i: [] for i in self.ids}
        self.outcomes: dict[int, list[Outcome]] = {i: [] for i in self.ids}
        self.deleted: dict[int, list[BlockId]] = {i: [] for i in self.ids}
        self.events: list[tuple[int, tuple]] = []
        self.blocked: set[tuple[int, int]] = set()
        self.ignored: set[type] = set()
        self.filters: list[Callable[[Any], bool]] = []   # return True to drop
        self.down: set[int] = set()
        self.paused: set[int] = set()
        self.unsynced: dict[int, list[Ready]] = {i: [] for i in self.ids}
        self.registry: dict[BlockId, Block] = {G.id: G}
        self.ever_committed: set[BlockId] = {G.id}
        self.wire_term: dict[int, int] = {i: 0 for i in self.ids}
        self.acked: dict[int, tuple[int, BlockId]] = {}
        self.applied_from: dict[int, int] = {i: 0 for i in self.ids}
        """Height of the state machine's starting point since the last (re)start/restore."""
        self._seq = 0
        self.boots: dict[int, int] = {}
        for d in self.disk.values():
            for b in d.blocks.values():
                self._register(b)
        for i in self.ids:
            self._boot(i)

    # ------------------------------------------------------------------ lifecycle
    def _boot(self, i: int) -> None:
        d = self.disk[i]
        base_h = d.base.id.height if d.base is not None else 0
        snaps = [s for s in d.snaps if s.height >= base_h]
        snap = max(snaps, key=lambda s: s.height) if snaps else None
        self.boots[i] = self.boots.get(i, 0) + 1   # each life its own incarnation
        core = RaftCore(self.cfgs[i], G, term=d.term, voted_for=d.voted_for,
                        blocks=dict(d.blocks), head=d.head, commit=d.commit, base=d.base,
                        applied=snap, snapshot=(snap, d.snaps[snap][0]) if snap else None,
                        incarnation=self.boots[i])
        self.nodes[i] = core
        self.applied[i] = []
        self.sm[i] = list(d.snaps[snap][1]) if snap else []
        self.applied_from[i] = core.applied.height
        self._handle(i, "start", core.start())

    def snapshot(self, i: int) -> BlockId:
        """Node i snapshots its applied state (durably) and tells its core; returns the base."""
        core = self.nodes[i]
        last = core.applied
        digest = self.registry[last].digest if last in self.registry else core.tree.root.digest
        self.disk[i].snaps[last] = (digest, list(self.sm[i]))
        self.step(i, SnapshotTaken(last=last, digest=digest))
        return last

    def crash(self, i: int) -> None:
        """Stop node i; whatever it had not fsync'ed is lost. Messages to it are lost."""
        self.down.add(i)
        self.unsynced[i] = []
        self.paused.discard(i)
        self.events.append((i, ("crash",)))

    def restart(self, i: int) -> RaftCore:
        """Rebuild node i's core from its disk only (term, vote, blocks, head, commit)."""
        assert i in self.down, f"node {i} is not down"
        self.down.discard(i)
        self.events.append((i, ("restart",)))
        self._boot(i)
        self._check_restart(i)
        return self.nodes[i]

    def pause_disk(self, i: int) -> None:
        """From now on node i's Readys wait for `flush(i)` after sending their eager part."""
        self.paused.add(i)

    def flush(self, i: int) -> None:
        """Complete node i's pending fsyncs, in order, and resume synchronous writes."""
        self.paused.discard(i)
        pend, self.unsynced[i] = self.unsynced[i], []
        for r in pend:
            self._finish(i, r)

    # ------------------------------------------------------------------ stepping
    def step(self, i: int, inp: Any) -> Ready:
        assert i not in self.down, f"node {i} is down"
        r = self.nodes[i].step(inp)
        self._handle(i, inp, r)
        return r

    def _handle(self, i: int, inp: Any, r: Ready) -> None:
        self.log.append((i, inp, r))
        for b in r.blocks:
            self._register(b)
        for ev in r.events:
            if ev[0] not in ("voted", "campaign", "acked"):
                self.events.append((i, ev))
        for m in r.eager:
            self._send(m)
        if i in self.paused:
            self.unsynced[i].append(r)
            return
        self._finish(i, r)

    def _finish(self, i: int, r: Ready) -> None:
        d = self.disk[i]
        if r.hard_state is not None:
            assert r.hard_state.term >= d.term, f"node {i}: durable term went down"
            if r.hard_state.term == d.term and d.voted_for is not None:
                assert r.hard_state.voted_for == d.voted_for, \
                    f"node {i}: durable vote changed within term {d.term}"
            d.term, d.voted_for = r.hard_state.term, r.hard_state.voted_for
        for b in r.blocks:
            d.blocks[b.id] = b
        for x in r.delete:
            d.blocks.pop(x, None)
            self.deleted[i].append(x)
        if r.base is not None:
            bh = r.base.id.height
            d.base = r.base
            for x in [x for x in d.blocks if x.height <= bh]:
                del d.blocks[x]
            if d.commit.height < bh:
                d.commit = r.base.id
        if r.head is not None:
            d.head = r.head
        if r.commit is not None:
            d.commit = r.commit
            self._note_commit(r.commit)
        for ev in r.events:
            if ev[0] in ("voted", "campaign"):
                self.events.append((i, ev))
            elif ev[0] == "acked":
                self.acked[i] = (ev[1], ev[2])
        for m in r.messages:
            self._send(m)
        if r.restore is not None:
            self.sm[i] = list(d.snaps[r.restore][1])
            self.applied[i] = []
            self.applied_from[i] = r.restore.height
        for b in r.apply:
            self.applied[i].append(b)
            if b.kind == BlockKind.NORMAL:
                for c in decode_commands(b.payload):
                    self.sm[i].append((c.client_id, c.seq, c.data))
        for rid, idx in r.reads:
            self.reads[i].append((rid, idx))
            self.read_results[rid] = (i, idx, list(self.sm[i]))
        self.outcomes[i].extend(r.outcomes)
        if r.head is not None and i not in self.down:
            self.step(i, Persisted(head=r.head))

    # ------------------------------------------------------------------ the wire
    def _closed(self, m: Any) -> bool:
        return ((m.src, m.dst) in self.blocked or type(m) in self.ignored
                or m.dst in self.down or any(f(m) for f in self.filters))

    def _send(self, m: Any) -> None:
        self.sent.append(m)
        if not (isinstance(m, PreVoteReq) or (isinstance(m, PreVoteResp) and m.granted)):
            self.wire_term[m.src] = max(self.wire_term[m.src], m.term)
        if self._closed(m):
            self.lost.append(m)
        else:
            self.queue.append(m)

    def _arrive(self, m: Any) -> None:
        if type(m) is InstallSnapshot:
            snap = self.disk[m.src].snaps.get(m.last)
            if snap is None:   # the sender's file is gone: its runtime reports failure
                if m.src not in self.down:
                    self.step(m.src, SnapshotStatus(peer=m.dst, last=m.last, ok=False))
                return
            self.disk[m.dst].snaps[m.last] = snap   # streamed and made durable
        self.step(m.dst, m)

    def deliver_one(self) -> Any:
        m = self.queue.popleft()
        if self._closed(m):
            self.lost.append(m)
            return None
        self.delivered.append(m)
        self._arrive(m)
        return m

    def stabilize(self, limit: int = 100_000) -> int:
        """Deliver until the wire is empty; then check the invariants."""
        n = 0
        while self.queue:
            n += 1
            assert n < limit, "network did not stabilize"
            self.deliver_one()
        if self.auto_check:
            self.check()
        return n

    def deliver(self, pred: Callable[[Any], bool] = lambda m: True, limit: int | None = None) -> list:
        """Deliver queued messages matching pred (in order, once each); others stay queued."""
        done = []
        keep = deque()
        batch, self.queue = self.queue, deque()
        for m in batch:
            if (limit is None or len(done) < limit) and pred(m):
                done.append(m)
                if self._closed(m):
                    self.lost.append(m)
                else:
                    self.delivered.append(m)
                    self._arrive(m)
            else:
                keep.append(m)
        # messages produced by the deliveries go after the ones that were waiting
        keep.extend(self.queue)
        self.queue = keep
        return done

    def take(self, pred: Callable[[Any], bool] = lambda m: True) -> list:
        """Remove matching messages from the wire and return them (to reorder or drop)."""
        got = [m for m in self.queue if pred(m)]
        self.queue = deque(m for m in self.queue if not pred(m))
        return got

    def inject(self, *msgs: Any) -> None:
        self.queue.extend(msgs)

    def drop(self, src: int, dst: int) -> None:
        self.blocked.add((src, dst))

    def cut(self, a: int, b: int) -> None:
        self.blocked |= {(a, b), (b, a)}

    def isolate(self, i: int) -> None:
        for j in self.ids:
            if j != i:
                self.cut(i, j)

    def partition(self, *groups: Iterable[int]) -> None:
        gs = [set(g) for g in groups]
        for a in self.ids:
            for b in self.ids:
                if a != b and not any(a in g and b in g for g in gs):
                    self.blocked.add((a, b))

    def ignore(self, t: type) -> None:
        self.ignored.add(t)

    def recover(self) -> None:
        self.blocked.clear()
        self.ignored.clear()
        self.filters.clear()

    # ------------------------------------------------------------------ local inputs
    def tick(self, i: int, n: int = 1) -> list:
        """Tick node i n times; returns the messages it put on the wire meanwhile."""
        mark = len(self.sent)
        for _ in range(n):
            self.step(i, Tick())
        return self.sent[mark:]

    def campaign(self, i: int) -> None:
        """Tick node i (and only it) until it starts a (pre-)campaign or leads."""
        core = self.nodes[i]
        assert core.role != Role.LEADER, f"node {i} already leads"
        for _ in range(3 * core.cfg.election_ticks):
            r = self.step(i, Tick())
            if core.role == Role.LEADER or any(e[0] == "campaign" for e in r.events) \
                    or of_type(r.messages, (PreVoteReq, VoteReq)):
                return
        raise AssertionError(f"node {i} never campaigned")

    def elect(self, i: int) -> RaftCore:
        """Campaign node i and stabilize; it must win."""
        self.campaign(i)
        self.stabilize()
        assert self.nodes[i].role == Role.LEADER, f"node {i} did not win: {self.nodes[i].role}"
        return self.nodes[i]

    def heartbeat(self, i: int) -> None:
        """Let leader i heartbeat once (HB = 1 tick) and stabilize."""
        self.tick(i, self.cfgs[i].heartbeat_ticks)
        self.stabilize()

    def command(self, data: bytes, client: str = "c", seq: int | None = None) -> Command:
        if seq is None:
            self._seq += 1
            seq = self._seq
        return Command(client, seq, data)

    def propose(self, i: int, data: bytes = b"x", client: str = "c",
                seq: int | None = None) -> Ready:
        return self.step(i, Propose(commands=(self.command(data, client, seq),)))

    def read(self, i: int, read_id: Any) -> Ready:
        return self.step(i, ReadIndex(read_id=read_id))

    def transfer(self, i: int, target: int) -> Ready:
        return self.step(i, TransferLeadership(target=target))

    # ------------------------------------------------------------------ observations
    def leader(self) -> int | None:
        best = None
        for i in self.ids:
            if i not in self.down and self.nodes[i].role == Role.LEADER:
                if best is None or self.nodes[i].term > self.nodes[best].term:
                    best = i
        return best

    def live(self) -> list[int]:
        return [i for i in self.ids if i not in self.down]

    def heads(self) -> dict[int, BlockId]:
        return {i: self.nodes[i].head for i in self.live()}

    def commits(self) -> dict[int, BlockId]:
        return {i: self.nodes[i].commit for i in self.live()}

    def path(self, i: int, upto: BlockId | None = None, start: int | None = None) -> list[BlockId]:
        """Node i's path from `start` (default: its base) up to `upto` (default: head)."""
        t = self.nodes[i].tree
        h = (upto or t.head).height
        lo = t.root.id.height if start is None else start
        return [t.at(x) for x in range(lo, h + 1)]

    def statuses(self, kind: str, key: Any) -> list:
        return [o.status for i in self.ids for o in self.outcomes[i]
                if o.kind == kind and o.key == key]

    def precedes(self, a: BlockId, b: BlockId) -> bool:
        """a ⪯ b in the registry of every block ever created (survives GC)."""
        if a.height > b.height:
            return False
        x: BlockId | None = b
        while x is not None and x.height > a.height:
            x = self.registry[x].parent
        return x == a

    def leaders_by_term(self) -> dict[int, set[int]]:
        out: dict[int, set[int]] = {}
        for i, ev in self.events:
            if ev[0] == "became_leader":
                out.setdefault(ev[1], set()).add(i)
        return out

    # ------------------------------------------------------------------ invariants (§B)
    def _register(self, b: Block) -> None:
        old = self.registry.get(b.id)
        assert old is None or old.digest == b.digest, f"B6: two different blocks named {b.id}"
        self.registry[b.id] = b

    def _note_commit(self, c: BlockId) -> None:
        x: BlockId | None = c
        while x is not None and x not in self.ever_committed:
            self.ever_committed.add(x)
            x = self.registry[x].parent
        # B11: everything ever committed is one path
        by_h: dict[int, BlockId] = {}
        for y in self.ever_committed:
            assert by_h.setdefault(y.height, y) == y, \
                f"B11: {y} and {by_h[y.height]} both committed at height {y.height}"

    def _check_restart(self, i: int) -> None:
        core = self.nodes[i]
        assert core.term >= self.wire_term[i], \
            f"B4: node {i} restarted at term {core.term} after sending term {self.wire_term[i]}"

    def check(self) -> None:
        # B1 election safety
        for t, who in self.leaders_by_term().items():
            assert len(who) <= 1, f"B1: term {t} has leaders {who}"
        # B2 one vote per term
        votes: dict[tuple[int, int], set[int]] = {}
        for i, ev in self.events:
            if ev[0] == "voted":
                votes.setdefault((i, ev[1]), set()).add(ev[2])
            elif ev[0] == "campaign":
                votes.setdefault((i, ev[1]), set()).add(i)
        for (i, t), cands in votes.items():
            assert len(cands) <= 1, f"B2: node {i} voted for {cands} in term {t}"
        for i in self.live():
            core = self.nodes[i]
            # B4: the durable term covers every (non-pre-vote) term the node put on the wire
            assert self.disk[i].term >= self.wire_term[i] or i in self.paused, \
                f"B4: node {i} sent term {self.wire_term[i]} with durable term {self.disk[i].term}"
            # B8 pointer order: applied = commit on the head path
            assert core.tree.on_path(core.commit), f"B8: node {i} commit off its path"
            assert core.applied == core.commit, f"B8: node {i} applied {core.applied}"
            # B15: what was applied is exactly the committed path, in height order
            # (a node whose disk is paused has not executed its latest Readys yet)
            # (compaction since then hides the path below the base: compare above it)
            lo = max(self.applied_from[i], core.tree.root.id.height) + 1
            app = [b.id for b in self.applied[i] if b.id.height >= lo]
            assert i in self.paused or app == self.path(i, core.commit, lo), \
                f"B15: node {i} applied {app}"
            # B19 ack stability
            if i in self.acked and self.acked[i][0] == core.term:
                a = self.acked[i][1]
                assert core.tree.on_path(a) or a.height < core.tree.root.id.height, \
                    f"B19: node {i} acked {self.acked[i][1]} but its head is {core.head}"
        # B15 across nodes: same id at every applied height
        at: dict[int, BlockId] = {}
        for i in self.live():
            for b in self.applied[i]:
                assert at.setdefault(b.id.height, b.id) == b.id, f"B15: height {b.id.height}"
        # B12 current-term commit
        for i, ev in self.events:
            if ev[0] == "commit" and ev[1] == int(Role.LEADER):
                assert ev[3].term == ev[2], f"B12: leader {i} committed {ev[3]} in term {ev[2]}"
