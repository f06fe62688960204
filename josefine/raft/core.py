"""The pure Chained Raft core (docs/protocol.md §A).

House rules: every protocol decision lives in `josefine.raft`; nothing here does I/O, reads
a clock, starts a thread or draws from `random`. `RaftCore.step(input)` mutates the core and
returns a `Ready` (ready.py) that says what the runtime must persist, send, apply and answer,
in which order. Time arrives only as `Tick`; the election timeout comes from a seeded
xorshift generator that is part of the core's state, so a simulation replays exactly.

The module-level `step(state, input) -> (state, ready)` is the functional form of the same
thing for callers that prefer it; the state object is the core itself.
"""
from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any, Final

from josefine import messages as msg
from josefine.chain.block import (Block, BlockKind, Command, base_header, decode_commands,
                                  encode_commands, make_block, verify_digest)
from josefine.messages import (LEADER_MESSAGES, AppendBlocks, AppendResp, CoreInput,
                               ForwardPropose, ForwardProposeResp, Heartbeat, HeartbeatResp,
                               InstallSnapshot, InstallSnapshotResp, PeerMessage, PreVoteReq,
                               PreVoteResp, ReadIndexReq, ReadIndexResp, SnapshotStatus, Status,
                               TimeoutNow, VoteReq, VoteResp)
from josefine.raft.membership import (ChangeOp, Config, ConfigChange, ConfigChangeError,
                                      decode_config_block, encode_config_block)
from josefine.raft.progress import Progress, ProgressState
from josefine.raft.ready import EventKind, HardState, Outcome, OutcomeKind, Ready, Role
from josefine.raft.tree import BlockTree
from josefine.types import GENESIS_ID, BlockId, SafetyViolation

__all__ = ["CoreConfig", "CoreInput", "RaftCore", "Role", "step"]

log = logging.getLogger(__name__)

# The two events of every append and commit, bound once: reading a member off an Enum class
# costs ~45 ns in Python 3.11, measurable on a follower's AppendBlocks step.
_ACKED: Final = EventKind.ACKED
_COMMIT: Final = EventKind.COMMIT

# Raft sources cited below: "paper" is Ongaro & Ousterhout, "In Search of an Understandable
# Consensus Algorithm" (2014); "thesis" is Ongaro, "Consensus: Bridging Theory and Practice"
# (2014). A block here plays the part of a log entry; (term, height) is its (term, index).


@dataclass(frozen=True)
class CoreConfig:
    """Static parameters of one node's core. Times are in ticks."""

    node_id: int
    voters: frozenset[int]
    heartbeat_ticks: int = 1
    election_ticks: int = 10
    pre_vote: bool = True
    check_quorum: bool = True
    max_batch_blocks: int = 64
    max_inflight: int = 64
    max_uncommitted_bytes: int = 64 << 20
    max_block_bytes: int = 1 << 20
    seed: int = 1
    keep_blocks: int = 64
    """Committed blocks always kept in memory below the commit (only with a block loader)."""
    keep_bytes: int = 8 << 20
    """Beyond `keep_blocks`, older committed blocks stay in memory only while their payloads
    total less than this; the rest are read back from the store when needed."""
    keep_previous_snapshot: bool = True
    """On a new snapshot, compact only up to the previous one: a torn newest file can then
    fall back to the older one plus its tail, and followers that lag by less than one
    snapshot interval catch up by blocks. False compacts up to the new snapshot."""
    snapshot_timeout_ticks: int = 1500
    initial: Config | None = None
    """The bootstrap membership (with addresses); None: `voters`, without addresses."""
    """A follower in SNAPSHOT whose install was neither acknowledged nor reported failed
    for this long is probed again (a backstop: the runtime reports failures itself)."""
    follower_reads: bool = True
    """A follower that knows a leader serves reads itself, with a read index obtained from
    the leader (A.10); False: it answers NOT_LEADER, as before."""
    forward_proposals: bool = True
    """A follower that knows a leader forwards client proposals to it (A.8); False: it
    answers NOT_LEADER with a hint."""
    forward_timeout_ticks: int = 0
    """A forwarded read or write still unanswered after this many ticks is answered
    NOT_LEADER (read) or UNKNOWN (write) so the client retries; 0: 3 * election_ticks."""


@dataclass
class _Read:
    read_id: Any
    index: BlockId
    seq: int
    confirmed: bool = False
    origin: int | None = None
    """The follower that asked (ReadIndexReq); None: a read of this node's own client."""


@dataclass
class _FwdRead:
    """A read this follower serves with an index it asked the leader for (A.10)."""

    read_id: Any
    leader: int
    index: BlockId | None = None
    elapsed: int = 0


@dataclass
class _FwdBatch:
    """Proposals this follower forwarded in one ForwardPropose (A.8)."""

    keys: tuple[tuple[str, int], ...]
    leader: int
    elapsed: int = 0


class RaftCore:
    """One node's protocol state; see the module docstring for the contract."""

    def __init__(self, cfg: CoreConfig, genesis: Block, *, term: int = 0,
                 voted_for: int | None = None, blocks: dict[BlockId, Block] | None = None,
                 head: BlockId = GENESIS_ID, commit: BlockId = GENESIS_ID,
                 loader: Callable[[BlockId], Block | None] | None = None,
                 base: Block | None = None, applied: BlockId | None = None,
                 snapshot: tuple[BlockId, bytes] | None = None,
                 base_config: Config | None = None, incarnation: int = 0) -> None:
        """Restart (A.13): `base` is the store's base header (None: never compacted, the
        chain starts at `genesis`); `blocks` those above it; `applied` what the state
        machine already holds (the restored snapshot's base; default the base), and
        `snapshot` the newest durable snapshot (base id, digest), which the node serves to
        followers that need what it compacted. `incarnation` (31 bits) should differ
        between starts of one node (the runtime draws it): the ids of forwarded reads and
        writes start from it, so an answer to a request of an earlier life, still on the
        wire, never matches one of this life (A.10)."""
        self.cfg = cfg
        self.id = cfg.node_id
        self.prog: dict[int, Progress] = {}
        self.role = Role.FOLLOWER
        self._base_cfg = base_config or cfg.initial or Config.of(cfg.voters)
        """The membership at the chain's base (the snapshot's, or the bootstrap one)."""
        self._cfgs: list[tuple[BlockId, Config]] = []
        """CONFIG blocks on the path above the base, lowest first, with their configs."""
        self.config = self._base_cfg
        self._r = Ready()
        self._set_cfg(self._base_cfg, announce=False)
        root = base if base is not None else genesis
        self.tree = BlockTree(root, loader)
        for b in sorted((blocks or {}).values(), key=lambda b: b.id.height):
            if b.id.height > root.id.height:
                if not self.tree.has(b.parent):  # type: ignore[arg-type]
                    raise SafetyViolation(f"stored block {b.id} has no stored parent")
                self.tree.add(b)
        if not self.tree.has(head):
            raise SafetyViolation(f"stored head {head} is not a stored block")
        self._track_path(self.tree.set_head(head))
        if commit.height < root.id.height:
            commit = root.id   # restart restores max(commit on disk, base) (A.13)
        if not self.tree.on_path(commit):
            raise SafetyViolation(f"stored commit {commit} is not below head {head}")
        if applied is None:
            applied = root.id
        if not self.tree.on_path(applied):
            raise SafetyViolation(f"applied {applied} is not on the path to head {head}")
        if applied.height > commit.height:
            commit = applied   # a snapshot holds only committed blocks
        self.snapshot = snapshot
        """(base id, digest) of the newest durable snapshot of this node, or None."""
        self.term = term
        self.voted_for = voted_for
        self.leader: int | None = None
        self.commit = commit
        self.applied = applied
        self.durable_head = head
        self.elapsed = 0
        self.hb_elapsed = 0
        self._rng = (cfg.seed * 0x9E3779B97F4A7C15 + cfg.node_id) & 0xFFFFFFFFFFFFFFFF or 1
        self.rand_et = cfg.election_ticks
        self.votes: dict[int, bool] = {}
        self.hb_seq = 0
        self.pending: dict[BlockId, tuple[Command, ...]] = {}
        self.pending_changes: dict[BlockId, tuple[int, int]] = {}
        """CONFIG blocks this leader appended, to answer their change once committed."""
        self.orphaned: dict[BlockId, tuple[Command, ...]] = {}
        self.reads: list[_Read] = []
        self.deferred_reads: list[tuple[Any, int | None]] = []
        self.fwd_reads: dict[int, _FwdRead] = {}
        self.fwd_batches: dict[int, _FwdBatch] = {}
        self.fwd_keys: dict[tuple[str, int], int] = {}
        """(client_id, seq) of a forwarded command -> the ForwardPropose that carries it."""
        self._fwd_next = (incarnation & 0x7FFFFFFF) << 32
        self.fwd_origin: dict[BlockId, set[int]] = {}
        """Leader: blocks holding commands that followers forwarded -> those followers."""
        self.fwd_seen: dict[tuple[int, int], None] = {}
        """Leader: (follower, fwd_id) of the forwards it took this term, oldest first
        (bounded): a duplicate copy is dropped, never answered (see _on_forward_propose)."""
        self.fwd_notify: dict[int, int] = {}
        """Leader: follower -> height of a committed block it forwarded but had not acked
        when it committed; it is sent the commit once its ack arrives."""
        self.follower_reads = 0      # reads served here as a non-leader (status counter)
        self.forwarded_writes = 0    # commands forwarded to a leader (status counter)
        self.transfer: int | None = None
        self.transfer_elapsed = 0
        self._deposed_by: int | None = None
        self.uncommitted_bytes = 0
        self._kept_bytes = 0   # payload bytes of committed blocks still held in memory
        self.refused_appends = 0   # tripwire (_keeps_commit): see docs/protocol.md
        self.refused_commits = 0
        self._r = Ready()
        self._reset_timer()

    # ================================================================== entry points
    def start(self) -> Ready:
        """First Ready after construction: replay the committed path into the state machine."""
        self._r = r = Ready()
        self._apply_committed()
        return r

    def step(self, inp: CoreInput) -> Ready:
        """Feed one input; returns what the runtime must do (ready.py).

        Anything outside `CoreInput` raises TypeError before the core changes: a wrong
        object must not pass the term rules and move the term on its way to being refused.

        The match is on the exact type, with value patterns, because it is the fastest
        form: a class pattern (`case Heartbeat():`) pays an isinstance per case tried,
        and a miss looks up `__class__`; it cost 4% on a heartbeat and 12% on a tick in
        CPU time, where `type(m) == msg.X` costs what the old `type(m) is X` chain did.
        mypy does not narrow through `type(m)`, hence `m: Any` below; that every member of
        the union has its case, and only that, is checked by tests/raft/test_core_inputs.py.
        Cases are in order of frequency: Tick (most of the simulation's inputs), then
        replication traffic, then elections and transfers. Peer messages of the current
        term, the common case, skip the call into `_admit`."""
        self._r = r = Ready()
        m: Any = inp
        match type(m):
            case msg.Tick:
                self._tick()
            case msg.AppendBlocks:
                if m.term == self.term or self._admit(m):
                    self._on_append(m)
            case msg.AppendResp:
                if (m.term == self.term or self._admit(m)) and self.role == Role.LEADER:
                    self._on_append_resp(m)
            case msg.Heartbeat:
                if m.term == self.term or self._admit(m):
                    self._on_heartbeat(m)
            case msg.HeartbeatResp:
                if (m.term == self.term or self._admit(m)) and self.role == Role.LEADER:
                    self._on_heartbeat_resp(m)
            case msg.Persisted:
                self._on_persisted(m.head)
            case msg.Propose:
                self._propose(m.commands)
            case msg.ReadIndex:
                self._read_index(m.read_id, m.at_follower)
            case msg.VoteReq:
                if m.term == self.term or self._admit(m):
                    self._on_vote_req(m)
            case msg.PreVoteReq:
                if m.term == self.term or self._admit(m):
                    self._on_prevote_req(m)
            case msg.VoteResp:
                if (m.term == self.term or self._admit(m)) and self.role == Role.CANDIDATE:
                    self._on_vote_resp(m)
            case msg.PreVoteResp:
                if (m.term == self.term or self._admit(m)) and self.role == Role.PRECANDIDATE:
                    self._on_vote_resp(m)
            case msg.TimeoutNow:
                if m.term == self.term or self._admit(m):
                    self._on_timeout_now(m)
            case msg.TransferLeadership:
                self._transfer(m.target)
            case msg.InstallSnapshotResp:
                if (m.term == self.term or self._admit(m)) and self.role == Role.LEADER:
                    self._on_install_snapshot_resp(m)
            case msg.InstallSnapshot:
                if m.term == self.term or self._admit(m):
                    self._on_install_snapshot(m)
            case msg.SnapshotTaken:
                self._on_snapshot_taken(m.last, m.digest)
            case msg.SnapshotStatus:
                self._on_snapshot_status(m)
            case msg.ChangeConfig:
                self._change_config(m)
            case msg.ReadIndexReq:
                if m.term == self.term or self._admit(m):
                    self._on_read_index_req(m)
            case msg.ReadIndexResp:
                if m.term == self.term or self._admit(m):
                    self._on_read_index_resp(m)
            case msg.ForwardPropose:
                if m.term == self.term or self._admit(m):
                    self._on_forward_propose(m)
            case msg.ForwardProposeResp:
                if m.term == self.term or self._admit(m):
                    self._on_forward_propose_resp(m)
            case _:
                raise TypeError(f"not a core input: {type(inp).__name__} "
                                "(see josefine.messages.CoreInput)")
        return r

    @property
    def head(self) -> BlockId:
        return self.tree.head

    # ================================================================== intake (A.5)
    def _in_lease(self) -> bool:
        """Has this node heard from a live leader within the minimum election timeout?

        While it has, it ignores vote and pre-vote requests of a higher term (thesis §4.2.3,
        "disruptive servers"): a server that was partitioned away, or removed, cannot depose
        a leader that a quorum still hears. The leader counts itself (leader == self), so it
        ignores them too, until check-quorum (`_check_quorum`) finds a full election
        timeout without a quorum and it steps down (thesis §6.2)."""
        return self.cfg.check_quorum and self.leader is not None \
            and self.elapsed < self.cfg.election_ticks

    def _admit(self, m: PeerMessage) -> bool:
        """The term rules every peer message passes before its handler (paper §5.1, thesis
        §3.3); True when the handler should run. `step` tests for the current term first."""
        if m.term == self.term:
            return True
        if m.term > self.term:
            match m:
                case VoteReq(transfer=False) | PreVoteReq() if self._in_lease():
                    # Thesis §4.2.3: inside a leader's lease a higher term does not count.
                    # A transfer's VoteReq is exempt: the leader asked for that election
                    # (thesis §3.10).
                    return False
                case PreVoteReq() | PreVoteResp(granted=True):
                    # Pre-vote (thesis §9.6) asks "would you vote for me at term+1?" without
                    # anyone adopting term+1: a node that cannot win therefore never raises
                    # the cluster's term. A refusal carries the refuser's own term and is
                    # adopted below like any other.
                    return True
            # Seeing a higher term, any role becomes a follower of it (paper §5.1). The vote
            # and term are persisted before any answer leaves (Ready.hard_state).
            self._deposed_by = m.src
            self._become_follower(m.term, m.src if isinstance(m, LEADER_MESSAGES) else None)
            self._deposed_by = None
            return True
        # A stale term is refused (paper §5.1). The stale leader gets an answer that carries
        # our term so it steps down; a stale pre-candidate likewise learns the term.
        if isinstance(m, LEADER_MESSAGES):
            self._send(AppendResp(src=self.id, dst=m.src, term=self.term, success=False))
        elif isinstance(m, PreVoteReq):
            self._send(PreVoteResp(src=self.id, dst=m.src, term=self.term, granted=False))
        return False

    def _send(self, msg: Any) -> None:
        self._r.messages.append(msg)

    def _persist_hard_state(self) -> None:
        self._r.hard_state = HardState(self.term, self.voted_for)

    def _reset_timer(self) -> None:
        """Restart the election timer with a fresh timeout drawn from [ET, 2·ET): randomized
        timeouts make split votes rare (paper §5.2, thesis §3.4)."""
        self.elapsed = 0
        x = self._rng
        x ^= (x << 13) & 0xFFFFFFFFFFFFFFFF
        x ^= x >> 7
        x ^= (x << 17) & 0xFFFFFFFFFFFFFFFF
        self._rng = x
        et = self.cfg.election_ticks
        self.rand_et = et + x % et

    def _become_follower(self, term: int, leader: int | None) -> None:
        if term > self.term:
            self.term, self.voted_for = term, None
            self._persist_hard_state()
            self._forwarded_term_ended()
        if self.role == Role.LEADER:
            self._step_down()
        self.role, self.leader = Role.FOLLOWER, leader
        self._reset_timer()

    def _step_down(self) -> None:
        """Leaving leadership: unanswered proposals become UNKNOWN, reads NOT_LEADER."""
        out = self._r.outcomes
        for bid, cmds in self.pending.items():
            for c in cmds:
                out.append(Outcome(OutcomeKind.PROPOSE, (c.client_id, c.seq), Status.UNKNOWN,
                                   None, bid))
        for bid, key in self.pending_changes.items():
            out.append(Outcome(OutcomeKind.CONFIG, key, Status.UNKNOWN, None, bid))
        self.pending_changes = {}
        self.orphaned.update(self.pending)
        while len(self.orphaned) > 10000:
            self.orphaned.pop(next(iter(self.orphaned)))
        self.pending = {}
        for rid, origin in [(rd.read_id, rd.origin) for rd in self.reads] + self.deferred_reads:
            if origin is None:
                out.append(Outcome(OutcomeKind.READ, rid, Status.NOT_LEADER))
            else:
                self._send(ReadIndexResp(src=self.id, dst=origin, term=self.term,
                                         read_id=rid, index=None))
        self.reads, self.deferred_reads = [], []
        if self.transfer is not None:
            ok = self._deposed_by == self.transfer
            out.append(Outcome(OutcomeKind.TRANSFER, self.transfer,
                               Status.OK if ok else Status.ABORTED, self._deposed_by))
        self.transfer = None
        self.prog = {}
        self.fwd_origin, self.fwd_notify = {}, {}

    # ================================================================== elections (A.6)
    def _tick(self) -> None:
        self.elapsed += 1
        cfg = self.cfg
        if self.fwd_reads or self.fwd_batches:
            self._expire_forwarded()
        if self.role == Role.LEADER:
            for f, p in self.prog.items():
                if p.state == ProgressState.SNAPSHOT:
                    p.snap_ticks += 1
                    if p.snap_ticks >= cfg.snapshot_timeout_ticks:
                        log.warning("node %d: snapshot %s to node %d unanswered for %d ticks; "
                                    "probing again", self.id, p.pending_snapshot, f,
                                    p.snap_ticks)
                        p.become_probe()
                        p.probe_sent = True   # the next heartbeat answer resends
            self.hb_elapsed += 1
            if self.hb_elapsed >= cfg.heartbeat_ticks:
                self.hb_elapsed = 0
                self._broadcast_heartbeat()
            if self.transfer is not None:
                self.transfer_elapsed += 1
                if self.transfer_elapsed >= cfg.election_ticks:
                    self._r.outcomes.append(Outcome(OutcomeKind.TRANSFER, self.transfer,
                                                    Status.ABORTED))
                    self.transfer = None
            if self.elapsed >= cfg.election_ticks:
                # Check-quorum (thesis §6.2): once per election timeout the leader asks
                # whether a quorum answered it; if not, it steps down rather than keep
                # serving clients from a minority partition.
                self.elapsed = 0
                if cfg.check_quorum:
                    self._check_quorum()
        elif self.elapsed >= self.rand_et and self._may_campaign():
            if cfg.pre_vote:
                self._start_prevote()
            else:
                self._start_election()

    def _start_prevote(self) -> None:
        """Pre-vote (thesis §9.6): ask at term+1 without adopting it. Only a pre-candidate
        that a quorum would elect raises its term, so a node cut off by a partition does
        not return with an inflated term and depose a working leader."""
        self.role, self.leader, self.votes = Role.PRECANDIDATE, None, {self.id: True}
        self._reset_timer()
        for p in self.voter_peers:
            self._send(PreVoteReq(src=self.id, dst=p, term=self.term + 1, head=self.head))
        if self._tally() > 0:
            self._start_election()

    def _start_election(self, transfer: bool = False) -> None:
        """Paper §5.2: new term, vote for self, ask every peer. The term and the self-vote
        are in this Ready's hard_state, written before the requests leave (thesis §3.8)."""
        if self.role == Role.LEADER:
            self._step_down()
        self.term += 1
        self.voted_for = self.id
        self._forwarded_term_ended()
        self._persist_hard_state()
        self.role, self.leader, self.votes = Role.CANDIDATE, None, {self.id: True}
        self._reset_timer()
        self._r.events.append((EventKind.CAMPAIGN, self.term))
        for p in self.voter_peers:
            self._send(VoteReq(src=self.id, dst=p, term=self.term, head=self.head,
                               transfer=transfer))
        if self._tally() > 0:
            self._become_leader()

    def _tally(self) -> int:
        """+1 won, -1 lost, 0 undecided, counting only this round's answers from voters."""
        yes = sum(1 for v, g in self.votes.items() if g and v in self.voters)
        no = sum(1 for v, g in self.votes.items() if not g and v in self.voters)
        if yes >= self.quorum:
            return 1
        if no >= self.quorum:
            return -1
        return 0

    def _can_vote_for(self, cand: int) -> bool:
        """One vote per term, first come first served (paper §5.2); granting it again to the
        same candidate is harmless (a duplicated VoteReq gets the same answer). A node that
        already follows a leader of this term does not vote at all: that term is decided."""
        return self.voted_for == cand or (self.voted_for is None and self.leader is None)

    def _is_up_to_date(self, cand_head: BlockId) -> bool:
        """THE voting rule (paper §5.4.1, thesis §3.6.1, on chains): a vote goes only to a
        candidate whose head is at least as up to date as ours, comparing (term, height)
        lexicographically. Every committed block is on a quorum, the voters overlap it, so
        the winner holds every committed block (Leader Completeness)."""
        return cand_head >= self.head

    def _on_vote_req(self, m: VoteReq) -> None:
        ok = self._can_vote_for(m.src) and self._is_up_to_date(m.head)
        if ok:
            if self.voted_for != m.src:
                self.voted_for = m.src
                self._persist_hard_state()
            self._r.events.append((EventKind.VOTED, self.term, m.src))
            self._reset_timer()
        self._send(VoteResp(src=self.id, dst=m.src, term=self.term, granted=ok))

    def _on_prevote_req(self, m: PreVoteReq) -> None:
        """Answer "would you vote for me at m.term?" (thesis §9.6) without recording a vote
        or resetting the timer: a pre-vote binds nobody. For a later term our own ballot
        does not count yet; the log rule always does. A grant echoes m.term so the
        pre-candidate can tell it from a stale answer; a refusal carries our term."""
        can = m.term > self.term or self._can_vote_for(m.src)
        ok = can and self._is_up_to_date(m.head)
        self._send(PreVoteResp(src=self.id, dst=m.src, term=m.term if ok else self.term,
                               granted=ok))

    def _on_vote_resp(self, m: VoteResp | PreVoteResp) -> None:
        if self.role == Role.PRECANDIDATE and m.granted and m.term != self.term + 1:
            return   # a grant for another round of pre-vote
        self.votes[m.src] = m.granted
        res = self._tally()
        if res > 0:
            if self.role == Role.CANDIDATE:
                self._become_leader()
            else:
                self._start_election()
        elif res < 0:
            self._become_follower(self.term, None)

    def _become_leader(self) -> None:
        self.role, self.leader = Role.LEADER, self.id
        self.transfer = None
        self.reads, self.deferred_reads = [], []
        self.fwd_seen = {}
        self.elapsed = self.hb_elapsed = 0
        self.durable_head = self.head
        nxt = self.head.height + 1
        self.prog = {p: Progress(nxt) for p in self.peers}
        for p in self.prog.values():
            p.active = True  # a fresh leader gets one full check-quorum period (§6.2)
        self.uncommitted_bytes = sum(len(self.tree.get(self.tree.at(h)).payload)
                                     for h in range(self.commit.height + 1, nxt))
        self._r.events.append((EventKind.BECAME_LEADER, self.term))
        log.info("node %d: became leader at term %d, head %s", self.id, self.term, self.head)
        self._append_local(BlockKind.NOOP, b"")
        for f in self.peers:
            self._send_append(f)
        self._leader_advance_commit()

    def _on_timeout_now(self, m: TimeoutNow) -> None:
        """Leadership transfer (thesis §3.10): the leader found us up to date and tells us
        to campaign now. Our VoteReq carries `transfer` so that peers still inside the
        leader's lease vote anyway (see `_admit`)."""
        if m.src == self.leader and self.id in self.voters and self.role == Role.FOLLOWER:
            self._start_election(transfer=True)

    # ================================================================== replication (A.7)
    def _append_local(self, kind: BlockKind, payload: bytes) -> Block:
        tree = self.tree
        b = make_block(tree.get(tree.head), self.term, kind, payload)
        tree.append_head(b)
        if kind == BlockKind.CONFIG:
            self._cfgs.append((b.id, decode_config_block(payload)[1]))
            self._set_cfg(self._cfgs[-1][1])
        r = self._r
        r.blocks.append(b)
        r.head = b.id
        self.uncommitted_bytes += len(payload)
        return b

    def _send_append(self, f: int, force: bool = False) -> None:
        p = self.prog[f]
        if not force and p.paused(self.cfg.max_inflight):
            return
        tree = self.tree
        head_h = tree.head.height
        if p.next > head_h + 1:
            p.next = head_h + 1
        if p.state == ProgressState.REPLICATE and p.next > head_h:
            return  # nothing new; heartbeats keep the follower alive
        if p.next <= tree.root.id.height:
            self._send_snapshot(f)   # what it needs next was compacted away (A.14)
            return
        prev = tree.at(p.next - 1)
        hi = min(head_h, p.next + self.cfg.max_batch_blocks - 1)
        blocks = tuple(tree.get(tree.at(h)) for h in range(p.next, hi + 1))
        tail_h = hi if blocks else prev.height
        commit = self.commit if self.commit.height <= tail_h else tree.at(tail_h)
        self._r.eager.append(AppendBlocks(src=self.id, dst=f, term=self.term, prev=prev,
                                          blocks=blocks, commit=commit, seq=p.next_seq()))
        if p.state == ProgressState.REPLICATE:
            p.next = tail_h + 1
            p.inflight.append((tail_h, self.hb_seq))
        else:
            p.probe_sent = True

    def _well_formed(self, m: AppendBlocks, parent: Block) -> bool:
        prev = parent
        for b in m.blocks:
            if b.parent != prev.id or b.id.height != prev.id.height + 1 \
                    or b.id.term < prev.id.term or b.id.term > m.term \
                    or not verify_digest(b, prev.digest):
                return False
            prev = b
        return True

    def _on_append(self, m: AppendBlocks) -> None:
        if self.role == Role.LEADER:
            log.error("node %d: AppendBlocks from %d in my own term %d", self.id, m.src, self.term)
            return
        tree = self.tree
        if m.prev.height < tree.root.id.height:
            clipped = self._clip_to_base(m)
            if clipped is None:
                return
            m = clipped
        parent = tree.lookup(m.prev)
        if parent is None or not self._well_formed(m, parent):
            self.role, self.leader = Role.FOLLOWER, m.src
            self._reset_timer()
            self._send(AppendResp(src=self.id, dst=m.src, term=self.term, success=False,
                                  seq=m.seq, rejected_prev=m.prev,
                                  hint=tree.term_summary(self.commit.height), commit=self.commit))
            return
        tail = m.blocks[-1].id if m.blocks else m.prev
        if not self._keeps_commit(m, tail):
            self._refuse_append(m, tail)   # before the sender counts as leader (timer, lease)
            return
        self.role, self.leader = Role.FOLLOWER, m.src
        self._reset_timer()
        r = self._r
        for b in m.blocks:
            if tree.add(b):
                r.blocks.append(b)
        if not tree.on_path(tail):
            fork = tree.set_head(tail)
            r.head = tail
            if (self._cfgs and self._cfgs[-1][0].height > fork) or fork < m.prev.height:
                self._track_path(fork)   # a CONFIG block may have left or joined the path
            else:
                for b in m.blocks:       # the new part of the path is m's blocks above fork
                    if b.kind == BlockKind.CONFIG and b.id.height > fork:
                        self._cfgs.append((b.id, decode_config_block(b.payload)[1]))
                        self._set_cfg(self._cfgs[-1][1])
        self._advance_commit_to(m.commit)
        r.events.append((_ACKED, self.term, tail))
        self._send(AppendResp(src=self.id, dst=m.src, term=self.term, success=True, seq=m.seq,
                              match=tail))

    def _clip_to_base(self, m: AppendBlocks) -> AppendBlocks | None:
        """The part of `m` above our base (A.7): blocks at or below it are committed and
        compacted here, so `m` becomes a run on top of the base, with a commit no lower
        than the base. A block at the base's height that is not our base cannot come from
        a legitimate leader (its chain holds our committed base): refused like
        `_refuse_append`, None."""
        root = self.tree.root
        rh = root.id.height
        i = rh - m.prev.height - 1   # index in m.blocks of the block at our base height
        if i < len(m.blocks):
            b = m.blocks[i]
            if b.id != root.id or b.digest != root.digest:
                self._refuse_append(m, b.id)
                return None
            rest = m.blocks[i + 1:]
        else:
            rest = ()
        c = m.commit if m.commit is not None and m.commit.height >= rh else root.id
        return replace(m, prev=root.id, blocks=rest, commit=c)

    def _keeps_commit(self, m: AppendBlocks, tail: BlockId) -> bool:
        """Tripwire: does the branch ending at `tail` (m.blocks on top of m.prev) hold our
        commit (or, for a stale message below it, lie on our committed path), and does it
        hold the commit the message announces?

        A legitimate leader always passes: its chain holds every committed block (Leader
        Completeness, Raft §5.4.1), it sends only runs of that chain with its commit capped
        at the run's tail, and in a chain a block's ancestry is its parent links (the
        chained form of Log Matching, §5.3). A forger or a bug does not, and following it
        would move the head, then the commit, off committed history."""
        c = self.commit
        if tail.height < c.height:
            ours = self.tree.on_path(tail) and self._same_block(tail, m)
        else:
            ours = self._on_branch(c, m, tail)
        mc = m.commit
        # A commit below our base is older news than ours and cannot be checked (those
        # blocks are compacted here); it moves nothing (_advance_commit_to).
        return ours and (mc is None or mc.height < self.tree.root.id.height
                         or self._on_branch(mc, m, tail))

    def _same_block(self, x: BlockId, m: AppendBlocks) -> bool:
        """Where m carries block x and we hold x too, the two digests agree: an id alone can
        be forged, a digest chained over all ancestors cannot (§A.2)."""
        i = x.height - m.prev.height - 1
        if i < 0:
            return True   # at or below m.prev: our own stored ancestry
        ours = self.tree.lookup(x)
        return ours is None or ours.digest == m.blocks[i].digest

    def _on_branch(self, x: BlockId, m: AppendBlocks, tail: BlockId) -> bool:
        """x ⪯ tail, along m's blocks and then the stored ancestry of m.prev."""
        if x.height > tail.height:
            return False
        if x.height > m.prev.height:
            return m.blocks[x.height - m.prev.height - 1].id == x and self._same_block(x, m)
        tree = self.tree
        if tree.on_path(m.prev):
            return tree.on_path(x)
        return tree.is_ancestor(x, m.prev)

    def _refuse_append(self, m: AppendBlocks, tail: BlockId) -> None:
        """Drop the message: no blocks stored, head and commit unchanged, and no answer
        (a rejection would start fork finding with the sender and hand it our commit). The
        election timer is not reset and a same-term leader stays our leader. A higher term
        has already been adopted by `_admit` (Raft's term rule runs first); keeping
        forgers out is authentication's job (docs/security.md)."""
        self.refused_appends += 1
        n = self.refused_appends
        if n <= 10 or n % 1000 == 0:
            log.warning("node %d: refused AppendBlocks from %d (term %d, prev %s, tail %s): "
                        "its branch does not hold our commit %s (%d refused so far)",
                        self.id, m.src, m.term, m.prev, tail, self.commit, n)

    def _on_append_resp(self, m: AppendResp) -> None:
        p = self.prog.get(m.src)
        if p is None:
            return
        p.active = True
        if m.success:
            if m.match is None or not (self.tree.on_path(m.match)
                                       or m.match.height < self.tree.root.id.height):
                return   # (below our base: committed, so on our path, but compacted)
            if p.match is None or m.match.height > p.match.height:
                p.match = m.match
            p.ack(p.match.height)
            if p.next <= p.match.height:
                p.next = p.match.height + 1
            if p.state == ProgressState.PROBE:
                p.become_replicate()
            self._leader_advance_commit()
            if self.role != Role.LEADER:
                return
            fh = self.fwd_notify.get(m.src) if self.fwd_notify else None
            if fh is not None and p.match.height >= fh:
                del self.fwd_notify[m.src]
                self._heartbeat_to(m.src, self.hb_seq)
            if self.transfer == m.src and p.match == self.head:
                self._eager(TimeoutNow(src=self.id, dst=m.src, term=self.term))
            else:
                self._catch_up(m.src)
        else:
            if m.rejected_prev is None or p.state == ProgressState.SNAPSHOT:
                return   # (while a snapshot is on its way, an old rejection says nothing)
            if p.match is not None and m.rejected_prev.height <= p.match.height:
                return  # outdated
            if p.state == ProgressState.PROBE and p.probe_sent \
                    and m.rejected_prev.height != p.next - 1:
                return  # answer to an older probe
            floor = p.match.height + 1 if p.match else 1
            fork = self._fork_point(m.hint, m.commit)
            p.state = ProgressState.PROBE
            p.inflight.clear()
            p.probe_sent = False
            p.next = max(min(fork + 1, self.head.height + 1), floor)
            self._send_append(m.src)

    def _catch_up(self, f: int) -> None:
        p = self.prog[f]
        head_h = self.head.height
        while p.next <= head_h and not p.paused(self.cfg.max_inflight):
            self._send_append(f)

    def _fork_point(self, hint: tuple, fcommit: BlockId | None) -> int:
        tr = self.tree.term_range
        for t, h in hint:
            r = tr.get(t)
            if r is not None:
                return min(h, r[1])
        return fcommit.height if fcommit is not None else 0

    def _eager(self, msg: Any) -> None:
        self._r.eager.append(msg)

    # ================================================================== commit (A.8)
    def _on_persisted(self, head: BlockId) -> None:
        # A durable head that the path has since left (a follower switched branches) says
        # nothing about the new path: the first durable head on the path replaces it.
        tree = self.tree
        if tree.on_path(head) and (head.height > self.durable_head.height
                                   or not tree.on_path(self.durable_head)):
            self.durable_head = head
            if self.role == Role.LEADER:
                self._leader_advance_commit()

    def _leader_advance_commit(self) -> None:
        hs = [self.durable_head.height if self.tree.on_path(self.durable_head) else -1] \
            if self.id in self.voters else []
        for v in self.voter_peers:
            m = self.prog[v].match
            hs.append(m.height if m is not None else -1)
        hs.sort(reverse=True)
        h = hs[self.quorum - 1]
        if h > self.commit.height:
            c = self.tree.at(h)
            # Paper §5.4.2 / Figure 8 (thesis §3.6.2): a leader counts replicas only for a
            # block of its own term; older blocks commit beneath it, by the chain's order.
            if c.term == self.term:
                self._set_commit(c)
                self._release_deferred_reads()

    def _advance_commit_to(self, c: BlockId | None) -> None:
        if c is None:
            return
        if c.height > self.commit.height and self.tree.on_path(c):
            self._set_commit(c)

    def _commit_conflicts(self, c: BlockId | None) -> bool:
        """Tripwire: a commit at a height we hold, but on another branch. A legitimate
        leader never sends one (it caps the commit at what we acked); counted and logged.
        A commit above our head is merely not known yet."""
        tree = self.tree
        if c is None or c.height > tree.head.height or tree.on_path(c):
            return False
        self.refused_commits += 1
        n = self.refused_commits
        if n <= 10 or n % 1000 == 0:
            log.warning("node %d: refused commit %s: not on our path (head %s, commit %s; "
                        "%d refused so far)", self.id, c, tree.head, self.commit, n)
        return True

    def _set_commit(self, c: BlockId) -> None:
        old = self.commit
        self.commit = c
        r = self._r
        r.commit = c
        r.events.append((_COMMIT, self.role, self.term, c))
        self._gc(old, c)
        self._apply_committed()
        if self.id not in self.voters:
            self._after_commit_config()

    def _apply_committed(self) -> None:
        tree = self.tree
        r = self._r
        leader = self.role == Role.LEADER
        kept = 0
        notify: dict[int, int] | None = None
        for h in range(self.applied.height + 1, self.commit.height + 1):
            b = tree.get(tree.at(h))
            r.apply.append(b)
            kept += len(b.payload)
            if leader:
                self.uncommitted_bytes -= len(b.payload)
                if self.pending_changes:
                    key = self.pending_changes.pop(b.id, None)
                    if key is not None:
                        r.outcomes.append(Outcome(OutcomeKind.CONFIG, key, Status.OK,
                                                  self.id, b.id))
                if self.fwd_origin:
                    origins = self.fwd_origin.pop(b.id, None)
                    if origins:
                        if notify is None:
                            notify = {}
                        for f in origins:
                            notify[f] = h
                cmds = self.pending.pop(b.id, None)
                if cmds is not None:
                    if r.decoded is None:
                        r.decoded = {}
                    r.decoded[b.id] = cmds
            else:
                if self.orphaned:
                    self.orphaned.pop(b.id, None)
                if self.fwd_keys and b.kind == BlockKind.NORMAL:
                    self._forwarded_applied(b)
        self._kept_bytes += kept
        self.applied = self.commit
        if notify:
            # The followers that forwarded these commands answer their clients when they
            # apply them: tell them the commit now rather than at the next heartbeat (or
            # as soon as they ack the block, if a quorum formed without them).
            for f, fh in notify.items():
                p = self.prog.get(f)
                if p is None:
                    continue
                if p.match is not None and p.match.height >= fh:
                    self._heartbeat_to(f, self.hb_seq)
                else:
                    self.fwd_notify[f] = max(fh, self.fwd_notify.get(f, 0))
        if self.reads:
            self._answer_ready_reads()
        if self.fwd_reads:
            self._answer_forwarded_reads()
        if tree.loader is not None:
            self._evict_old_blocks()

    def _evict_old_blocks(self) -> None:
        """Bound memory: drop old committed blocks beyond the count and byte budgets.

        Only blocks this node has itself made durable may go: a follower learns (and
        applies) a commit from the leader before its own write of those blocks returns, so
        below `applied` there can be blocks the store does not hold yet, and the loader
        could not read them back (docs/protocol.md A.3: eviction)."""
        tree, cfg = self.tree, self.cfg
        dh = self.durable_head
        durable = dh.height if tree.on_path(dh) else 0
        limit = min(self.applied.height, durable) - cfg.keep_blocks
        h = tree.evicted_below
        if h >= limit or self._kept_bytes <= cfg.keep_bytes:
            return
        while h < limit and self._kept_bytes > cfg.keep_bytes // 2:
            self._kept_bytes -= len(tree.get(tree.at(h)).payload)
            h += 1
        tree.evict_below(h)

    def _gc(self, old: BlockId, new: BlockId) -> None:
        """Siblings of newly committed blocks can never commit: delete them (A.14)."""
        tree = self.tree
        r = self._r
        for h in range(old.height + 1, new.height + 1):
            x = tree.at(h)
            sibs = tree.children.get(tree.get(x).parent)  # type: ignore[arg-type]
            if sibs is None or len(sibs) == 1:
                continue
            for y in [s for s in sibs if s != x]:
                for d in tree.delete_subtree(y):
                    r.delete.append(d)
                    cmds = self.orphaned.pop(d, None)
                    for c in cmds or ():
                        r.outcomes.append(Outcome(OutcomeKind.PROPOSE, (c.client_id, c.seq),
                                                  Status.ABORTED, self.leader, d))

    # ================================================================== membership (A.12)
    def _set_cfg(self, c: Config, announce: bool = True) -> None:
        """Make `c` the configuration every quorum of this node is counted in (thesis
        ch. 4: a configuration is used as soon as its block is on the path)."""
        if announce and c == self.config:
            return
        self.config = c
        self.voters = c.voters
        others = c.ids - {self.id}
        self.peers = sorted(others)
        self.voter_peers = sorted(c.voters - {self.id})
        self.quorum = len(c.voters) // 2 + 1
        if self.role == Role.LEADER:
            nxt = self.head.height + 1
            for f in others - self.prog.keys():
                p = self.prog[f] = Progress(nxt)
                p.active = True   # a newcomer gets one check-quorum period
            for f in self.prog.keys() - others:
                del self.prog[f]
            if self.transfer is not None and self.transfer not in c.voters:
                self._r.outcomes.append(Outcome(OutcomeKind.TRANSFER, self.transfer,
                                                Status.ABORTED, self.id))
                self.transfer = None
        if announce:
            self._r.events.append((EventKind.CONFIG, c))
            log.info("node %d: configuration now voters %s learners %s", self.id,
                     sorted(c.voters), sorted(c.learners))

    def _track_path(self, fork: int) -> None:
        """The path changed above height `fork`: drop the CONFIG blocks that left it and
        pick up those on its new part, so `config` follows the path (A.12: a head that
        leaves a dead branch takes its configuration with it)."""
        tree, cfgs = self.tree, self._cfgs
        while cfgs and cfgs[-1][0].height > fork:
            cfgs.pop()
        for h in range(max(fork, tree.root.id.height) + 1, tree.head.height + 1):
            b = tree.get(tree.at(h))
            if b.kind == BlockKind.CONFIG:
                cfgs.append((b.id, decode_config_block(b.payload)[1]))
        self._set_cfg(cfgs[-1][1] if cfgs else self._base_cfg)

    def _may_campaign(self) -> bool:
        """A voter campaigns; so does a node whose removal is on its path but not yet
        committed (A.12). Without that, a leader that appended its own removal and then
        lost leadership would hold the newest chain, refuse every less up-to-date
        candidate, and never stand itself: no one could win. Its votes are counted among
        the voters of its own configuration, without itself (`_tally`), as a leader
        outside its configuration leads until the change commits (thesis §4.2.2)."""
        return self.id in self.voters or self.id in self._cfg_at(self.commit.height).voters

    def _cfg_at(self, height: int) -> Config:
        """The configuration in force at `height` on the path (at or above the base)."""
        for bid, c in reversed(self._cfgs):
            if bid.height <= height:
                return c
        return self._base_cfg

    def _change_config(self, m: Any) -> None:
        """A.12 on the leader: one change at a time, only after this term's first commit
        (the fix to single-server changes from Ongaro's raft-dev post), a learner promoted
        only once it is close to the head. Effective at once here; answered OK when its
        block commits."""
        key = (int(m.op), m.node)
        out = self._r.outcomes

        def refuse(why: str, status: Status = Status.REJECTED) -> None:
            out.append(Outcome(OutcomeKind.CONFIG, key, status, self.leader, None, why))

        if self.role != Role.LEADER:
            return refuse("not the leader", Status.NOT_LEADER)
        if self.transfer is not None:
            return refuse(f"a leadership transfer to node {self.transfer} is in progress")
        if self.commit.term != self.term:
            return refuse("this leader has not committed a block of its own term yet; "
                          "retry in a moment")
        if self._cfgs and self._cfgs[-1][0].height > self.commit.height:
            return refuse(f"another membership change (block {self._cfgs[-1][0]}) is not "
                          "committed yet")
        try:
            op = ChangeOp(m.op)
            change = ConfigChange(op, m.node, m.address)
            new = self.config.apply(change)
        except (ConfigChangeError, ValueError) as exc:
            return refuse(str(exc))
        if op == ChangeOp.PROMOTE:
            p = self.prog.get(m.node)
            lag = self.head.height - (p.match.height if p is not None and p.match else -1)
            if p is None or p.match is None or lag > self.cfg.max_batch_blocks:
                return refuse(f"learner {m.node} is not caught up (it lags the head by "
                              f"{lag} blocks; at most {self.cfg.max_batch_blocks})")
        b = self._append_local(BlockKind.CONFIG, encode_config_block(change, new))
        self.pending_changes[b.id] = key
        for f in self.peers:
            self._catch_up(f)
        if not self.voter_peers:
            self._leader_advance_commit()

    def _after_commit_config(self) -> None:
        """A leader that removed itself steps down once that change commits (A.12); until
        then it replicates without counting itself."""
        if self.role == Role.LEADER and self.id not in self.voters and not (
                self._cfgs and self._cfgs[-1][0].height > self.commit.height):
            log.info("node %d: no longer a voter and the change is committed: stepping "
                     "down", self.id)
            self._become_follower(self.term, None)

    # ================================================================== snapshots (A.14)
    def _on_snapshot_taken(self, last: BlockId, digest: bytes) -> None:
        """Our own snapshot of `last` is durable: serve it from now on, and compact.

        The chain is cut at the previous snapshot (`keep_previous_snapshot`), so two
        snapshots' worth of history is never more than one interval of blocks: if the
        newest file is ever found torn, the older one plus the blocks after it still
        rebuild the state (A.13)."""
        old = self.snapshot
        if old is not None and last.height <= old[0].height:
            return   # older than what we have (an installed snapshot overtook it)
        if last.height > self.applied.height or not self.tree.on_path(last):
            log.warning("node %d: snapshot %s is not on our applied path (applied %s); "
                        "not used", self.id, last, self.applied)
            return
        self.snapshot = (last, digest)
        if not self.cfg.keep_previous_snapshot:
            self._compact(base_header(last, digest))
        elif old is not None and old[0].height > self.tree.root.id.height \
                and self.tree.on_path(old[0]):
            self._compact(base_header(*old))

    def _compact(self, base: Block) -> None:
        h = base.id.height
        self._base_cfg = self._cfg_at(h)
        self._cfgs = [(b, c) for b, c in self._cfgs if b.height > h]
        self.tree.rebase(base)
        self._r.base = base
        self._r.events.append((EventKind.COMPACTED, base.id))

    def _send_snapshot(self, f: int) -> None:
        p = self.prog[f]
        snap = self.snapshot
        if snap is None:   # cannot happen: the base rises only with a snapshot
            log.error("node %d: node %d needs blocks below base %s, but there is no "
                      "snapshot", self.id, f, self.tree.root.id)
            return
        p.become_snapshot(snap[0])
        log.info("node %d: node %d needs height %d, below our base %s: sending snapshot %s",
                 self.id, f, p.next, self.tree.root.id, snap[0])
        at = self._cfg_at(snap[0].height)
        self._eager(InstallSnapshot(src=self.id, dst=f, term=self.term, last=snap[0],
                                    last_digest=snap[1], voters=tuple(sorted(at.voters)),
                                    config=at))

    def _on_snapshot_status(self, m: SnapshotStatus) -> None:
        """The runtime could not deliver the snapshot: probe again, paced by heartbeat
        answers (a PROBE that counts as sent waits for one)."""
        p = self.prog.get(m.peer) if self.role == Role.LEADER else None
        if p is None or p.state != ProgressState.SNAPSHOT or p.pending_snapshot != m.last:
            return
        if not m.ok:
            p.become_probe()
            p.probe_sent = True

    def _on_install_snapshot_resp(self, m: InstallSnapshotResp) -> None:
        """A.14: a success counts as an AppendResp whose match is the snapshot's base."""
        p = self.prog.get(m.src)
        if p is None:
            return
        p.active = True
        if not m.success or m.match is None:
            if p.state == ProgressState.SNAPSHOT:
                p.become_probe()
                p.probe_sent = True
            return
        tree = self.tree
        if not (tree.on_path(m.match) or m.match.height < tree.root.id.height):
            return
        if p.match is None or m.match.height > p.match.height:
            p.match = m.match
        p.become_probe()
        p.next = max(p.next, p.match.height + 1)
        self._leader_advance_commit()
        if self.role != Role.LEADER:
            return
        if self.transfer == m.src and p.match == self.head:
            self._eager(TimeoutNow(src=self.id, dst=m.src, term=self.term))
        else:
            self._send_append(m.src)

    def _on_install_snapshot(self, m: InstallSnapshot) -> None:
        """A.14, follower side: the snapshot file is already durable here (the runtime
        hands it over only then). Keep what we hold above its base if it extends it,
        forget the rest, restart the chain at its base, and answer once the new base,
        head and deletions are durable (the answer is a promise, so it rides in
        `messages`, behind this Ready's write)."""
        if self.role == Role.LEADER:
            log.error("node %d: InstallSnapshot from %d in my own term %d", self.id, m.src,
                      self.term)
            return
        self.role, self.leader = Role.FOLLOWER, m.src
        self._reset_timer()
        last = m.last
        r = self._r
        resp = InstallSnapshotResp(src=self.id, dst=m.src, term=self.term, success=True,
                                   match=last)
        if last.height <= self.commit.height:
            # Already past it: both are committed, so last ⪯ commit, and every block up
            # to our head is written by Readys ahead of this answer (A.14).
            r.events.append((_ACKED, self.term, last))
            self._send(resp)
            return
        old = self.tree
        have = old.lookup(last) if last.height >= old.root.id.height else None
        header = base_header(last, m.last_digest)
        tree = BlockTree(header, old.loader)
        kept: set[BlockId] = set()
        if have is not None and have.digest == m.last_digest:
            stack = list(old.children.get(last, ()))
            while stack:
                bid = stack.pop()
                blk = old.blocks.get(bid)
                if blk is None:
                    continue
                kept.add(bid)
                stack.extend(old.children.get(bid, ()))
            for bid in sorted(kept, key=lambda b: b.height):
                tree.add(old.blocks[bid])
        for bid in old.blocks:
            if bid.height > last.height and bid not in kept:
                r.delete.append(bid)
                for c in self.orphaned.pop(bid, ()):
                    r.outcomes.append(Outcome(OutcomeKind.PROPOSE, (c.client_id, c.seq),
                                              Status.ABORTED, self.leader, bid))
        for bid in [b for b in self.orphaned if b.height <= last.height]:
            # At or below the base: committed (answered by the client's retry and the
            # session table) or dead; dead for sure only where we can see it fork off.
            cmds = self.orphaned.pop(bid)
            if have is not None and not old.is_ancestor(bid, last):
                for c in cmds:
                    r.outcomes.append(Outcome(OutcomeKind.PROPOSE, (c.client_id, c.seq),
                                              Status.ABORTED, self.leader, bid))
        tree.set_head(old.head if old.head in kept else last)
        self.tree = tree
        self._base_cfg = m.config if m.config is not None else Config.of(m.voters)
        self._cfgs = []
        self._track_path(last.height)
        if not tree.on_path(self.durable_head):
            self.durable_head = last
        self.commit = self.applied = last
        self.snapshot = (last, m.last_digest)
        self._kept_bytes = 0
        r.base = header
        r.head = tree.head
        r.commit = last
        r.restore = last
        r.apply.clear()   # anything queued below the snapshot is in it
        r.events.append((EventKind.INSTALLED, self.term, last))
        r.events.append((_COMMIT, self.role, self.term, last))
        r.events.append((_ACKED, self.term, last))
        log.info("node %d: installed snapshot %s from node %d (kept %d blocks above it)",
                 self.id, last, m.src, len(kept))
        self._send(resp)
        if self.fwd_reads:
            self._answer_forwarded_reads()

    # ================================================================== proposals
    def _propose(self, commands: tuple[Command, ...] | list[Command],
                 origin: tuple[int, int] | None = None) -> None:
        """Append client commands (leader), forward them to the leader (a follower that
        knows one), or refuse them. `origin` = (follower, fwd_id) for commands a follower
        forwarded: refusals go back to it instead of into this node's outcomes."""
        if self.role != Role.LEADER or self.transfer is not None:
            if origin is None and self.role != Role.LEADER and self.leader is not None \
                    and self.cfg.forward_proposals:
                self._forward_proposals(commands)
                return
            hint = self.transfer if self.transfer is not None else self.leader
            self._refuse_proposals(commands, Status.NOT_LEADER, hint, origin)
            return
        batch: list[Command] = []
        busy: list[Command] = []
        size = 0
        for c in commands:
            n = len(c.data) + len(c.client_id) + 14
            if self.uncommitted_bytes + size + n > self.cfg.max_uncommitted_bytes:
                busy.append(c)
                continue
            if batch and size + n > self.cfg.max_block_bytes:
                self._append_batch(batch, origin[0] if origin else None)
                batch, size = [], 0
            batch.append(c)
            size += n
        if batch:
            self._append_batch(batch, origin[0] if origin else None)
        if busy:
            self._refuse_proposals(busy, Status.BUSY, self.id, origin)
        for f in self.peers:
            self._catch_up(f)
        if not self.voter_peers:
            self._leader_advance_commit()

    def _refuse_proposals(self, commands: tuple[Command, ...] | list[Command], status: Status,
                          hint: int | None, origin: tuple[int, int] | None) -> None:
        if origin is None:
            for c in commands:
                self._r.outcomes.append(Outcome(OutcomeKind.PROPOSE, (c.client_id, c.seq),
                                                status, hint))
            return
        self._send(ForwardProposeResp(src=self.id, dst=origin[0], term=self.term,
                                      fwd_id=origin[1], status=status,
                                      refused=tuple((c.client_id, c.seq) for c in commands),
                                      leader_hint=hint))

    # ------------------------------------------------------------ forwarded writes (A.8)
    def _forward_proposals(self, commands: tuple[Command, ...] | list[Command]) -> None:
        """A follower passes client commands on to its leader, unchanged: (client_id, seq)
        stay the client's, so the leader's sessions apply a retry at most once wherever it
        entered. The answer is this node's own: OK once it applies the command (the
        runtime's waiter sees it applied, with its result), the leader's refusal if it
        sends one, UNKNOWN if the term ends or nothing happens within the timeout."""
        leader = self.leader
        assert leader is not None
        limit = self.cfg.max_block_bytes
        chunk: list[Command] = []
        size = 0
        for c in commands:
            n = len(c.data) + len(c.client_id) + 14
            if chunk and size + n > limit:
                self._send_forward(leader, chunk)
                chunk, size = [], 0
            chunk.append(c)
            size += n
        if chunk:
            self._send_forward(leader, chunk)

    def _send_forward(self, leader: int, cmds: list[Command]) -> None:
        self._fwd_next += 1
        fid = self._fwd_next
        keys = tuple((c.client_id, c.seq) for c in cmds)
        self.fwd_batches[fid] = _FwdBatch(keys, leader)
        for k in keys:
            self.fwd_keys[k] = fid
        self.forwarded_writes += len(cmds)
        # In `messages`, not eager: it carries our term, which must be durable before it
        # leaves (A.3, B4); a follower that just adopted the term may still be writing it.
        self._send(ForwardPropose(src=self.id, dst=leader, term=self.term, fwd_id=fid,
                                  commands=encode_commands(cmds)))

    def _on_forward_propose(self, m: ForwardPropose) -> None:
        """A refusal must be true of every copy of the forward, since the follower relays
        it to a client as "not applied". Only the leader of the forward's term can have
        appended a copy (a node takes a forward only in the forward's own term). So the
        leader drops a copy it has seen (a duplicate, or one reordered behind a later
        refusal), and a non-leader refuses with NOT_LEADER only when it cannot have led
        this term; one that campaigned in it (and may have led, then stepped down or
        restarted) answers UNKNOWN."""
        key = (m.src, m.fwd_id)
        if self.role != Role.LEADER:
            status = Status.UNKNOWN if self.voted_for == self.id else Status.NOT_LEADER
            self._send(ForwardProposeResp(src=self.id, dst=m.src, term=self.term,
                                          fwd_id=m.fwd_id, status=status, refused=(),
                                          leader_hint=self.leader))
            return
        if key in self.fwd_seen:
            return
        self.fwd_seen[key] = None
        if len(self.fwd_seen) > 65536:
            del self.fwd_seen[next(iter(self.fwd_seen))]
        try:
            cmds = decode_commands(m.commands)
        except ValueError as exc:
            log.error("node %d: malformed ForwardPropose from %d dropped: %s", self.id, m.src,
                      exc)
            return
        self._propose(cmds, key)

    def _on_forward_propose_resp(self, m: ForwardProposeResp) -> None:
        batch = self.fwd_batches.get(m.fwd_id)
        if batch is None or m.src != batch.leader:
            return   # answered already, expired, or of another life of this node
        status = m.status if m.status in (Status.NOT_LEADER, Status.BUSY) else Status.UNKNOWN
        hint = m.leader_hint
        fwd_keys = self.fwd_keys
        for k in m.refused or batch.keys:
            if k in batch.keys and fwd_keys.get(k) == m.fwd_id:
                del fwd_keys[k]
                self._r.outcomes.append(Outcome(OutcomeKind.PROPOSE, k, status, hint))
        if not any(fwd_keys.get(k) == m.fwd_id for k in batch.keys):
            del self.fwd_batches[m.fwd_id]

    def _forwarded_applied(self, b: Block) -> None:
        """Forwarded commands that reached our state machine: the runtime answers them
        from what it applied; forget them here."""
        try:
            cmds = decode_commands(b.payload)
        except ValueError:
            return
        fwd_keys = self.fwd_keys
        done = set()
        for c in cmds:
            fid = fwd_keys.pop((c.client_id, c.seq), None)
            if fid is not None:
                done.add(fid)
        for fid in done:
            batch = self.fwd_batches.get(fid)
            if batch is not None and not any(fwd_keys.get(k) == fid for k in batch.keys):
                del self.fwd_batches[fid]

    def _forwarded_term_ended(self) -> None:
        """Our term moved on: forwarded writes may or may not commit (UNKNOWN), and reads
        still waiting for an index will never get one we could accept (answers of the old
        term are dropped on intake). Reads that hold an index keep it: it is a committed
        block the old leader confirmed after the read arrived, still valid to wait for."""
        out = self._r.outcomes
        fwd_keys = self.fwd_keys
        for fid, batch in self.fwd_batches.items():
            for k in batch.keys:
                if fwd_keys.get(k) == fid:
                    out.append(Outcome(OutcomeKind.PROPOSE, k, Status.UNKNOWN, None))
        self.fwd_batches.clear()
        self.fwd_keys.clear()
        for fid in [f for f, fr in self.fwd_reads.items() if fr.index is None]:
            fr = self.fwd_reads.pop(fid)
            out.append(Outcome(OutcomeKind.READ, fr.read_id, Status.NOT_LEADER, None))

    def _expire_forwarded(self) -> None:
        limit = self.cfg.forward_timeout_ticks or 3 * self.cfg.election_ticks
        out = self._r.outcomes
        for fid, fr in list(self.fwd_reads.items()):
            fr.elapsed += 1
            if fr.elapsed >= limit:
                del self.fwd_reads[fid]
                out.append(Outcome(OutcomeKind.READ, fr.read_id, Status.NOT_LEADER,
                                   self.leader))
        fwd_keys = self.fwd_keys
        for fid, batch in list(self.fwd_batches.items()):
            batch.elapsed += 1
            if batch.elapsed >= limit:
                del self.fwd_batches[fid]
                for k in batch.keys:
                    if fwd_keys.get(k) == fid:
                        del fwd_keys[k]
                        out.append(Outcome(OutcomeKind.PROPOSE, k, Status.UNKNOWN, None))

    def _append_batch(self, batch: list[Command], origin: int | None = None) -> None:
        b = self._append_local(BlockKind.NORMAL, encode_commands(batch))
        self.pending[b.id] = tuple(batch)
        if origin is not None:
            self.fwd_origin.setdefault(b.id, set()).add(origin)

    # ================================================================== heartbeats (A.9)
    def _broadcast_heartbeat(self) -> None:
        self.hb_seq += 1
        for f in self.prog:
            self._heartbeat_to(f, self.hb_seq)

    def _heartbeat_to(self, f: int, seq: int) -> None:
        """A heartbeat with the commit capped at what `f` acknowledged. Sent out of turn
        (with the current seq) it is still sound for reads: an answer to it comes from a
        heartbeat that left after every read already waiting on that seq."""
        p = self.prog[f]
        tree = self.tree
        c = None
        if p.match is not None:
            mh = p.match.height
            if self.commit.height <= mh:
                c = self.commit
            elif mh >= tree.root.id.height:
                c = tree.at(mh)
        self._eager(Heartbeat(src=self.id, dst=f, term=self.term, commit=c, seq=seq))

    def _on_heartbeat(self, m: Heartbeat) -> None:
        if self.role == Role.LEADER:
            return
        c = m.commit
        if c is not None and c.height < self.tree.root.id.height:
            c = None   # below our base: already committed and compacted here
        if self._commit_conflicts(c):
            return   # tripwire: dropped unanswered, like a refused AppendBlocks
        self.role, self.leader = Role.FOLLOWER, m.src
        self._reset_timer()
        self._advance_commit_to(c)
        self._send(HeartbeatResp(src=self.id, dst=m.src, term=self.term, seq=m.seq))

    def _on_heartbeat_resp(self, m: HeartbeatResp) -> None:
        p = self.prog.get(m.src)
        if p is None:
            return
        p.active = True
        if m.seq > p.acked_seq:
            p.acked_seq = m.seq
        if self.reads:
            self._confirm_reads()
        if p.match is None or p.match.height < self.head.height:
            if p.state == ProgressState.PROBE:
                p.probe_sent = False
                self._send_append(m.src)
            elif p.inflight and p.inflight[0][1] + 2 < m.seq:
                # An append sent before two full heartbeat rounds is still unacknowledged:
                # take it as lost. (Not one round: acks wait for the follower's fsync while
                # heartbeat responses do not, so a response may overtake an ack.)
                p.become_probe()
                self._send_append(m.src)
            else:
                self._catch_up(m.src)

    def _check_quorum(self) -> None:
        """Step down unless a quorum (counting ourselves) answered within the last
        election timeout (thesis §6.2). Followers refuse to elect anyone else for as long
        (`_in_lease`), so the two sides of the lease agree."""
        alive = 1 if self.id in self.voters else 0
        for f, p in self.prog.items():
            if p.active and f in self.voters:
                alive += 1
            p.active = False
        if alive < self.quorum:
            log.info("node %d: lost quorum at term %d, stepping down", self.id, self.term)
            self._become_follower(self.term, None)

    # ================================================================== reads (A.10)
    def _read_index(self, read_id: Any, at_follower: bool = True) -> None:
        """A client read at this node: the leader serves it (`_leader_read`); a follower
        that knows a leader asks it for a read index (`_forward_read`) unless the client
        wants the leader (`at_follower` False); anyone else answers NOT_LEADER with its
        hint."""
        if self.role == Role.LEADER:
            self._leader_read(read_id, None)
        elif self.leader is not None and self.cfg.follower_reads and at_follower:
            self._forward_read(read_id)
        else:
            self._r.outcomes.append(Outcome(OutcomeKind.READ, read_id, Status.NOT_LEADER,
                                            self.leader))

    def _leader_read(self, read_id: Any, origin: int | None) -> None:
        """ReadIndex (thesis §6.4): the read point is the commit, once this leader has
        committed a block of its own term (until then it may not know the latest commit,
        so the read waits in `deferred_reads`); it is served after a heartbeat round
        confirms a quorum still follows us and the state machine has applied it. No read
        is served on the strength of a lease alone (thesis §6.4.1): that would trust
        bounded clock drift, and the `_in_lease` rule only keeps votes away. A follower's
        read (`origin`) takes the same path and gets the confirmed index back instead."""
        if self.commit.term != self.term:
            self.deferred_reads.append((read_id, origin))
            return
        rd = _Read(read_id, self.commit, self.hb_seq + 1, origin=origin)
        self.reads.append(rd)
        if self.quorum == 1 and self.id in self.voters:
            rd.confirmed = True
            self.hb_seq += 1
            self._answer_ready_reads()
        else:
            self._broadcast_heartbeat()

    def _release_deferred_reads(self) -> None:
        if self.deferred_reads and self.commit.term == self.term:
            ids, self.deferred_reads = self.deferred_reads, []
            for rid, origin in ids:
                self._leader_read(rid, origin)

    # ------------------------------------------------------------ reads at followers
    def _forward_read(self, read_id: Any) -> None:
        """Thesis §6.4's follower variant: ask the leader for a read index, then serve
        the read here once our state machine has applied that far. The index is a commit
        the leader held after our request reached it, confirmed by a quorum, so a state
        at or past it reflects every write completed before the read began."""
        leader = self.leader
        assert leader is not None
        self._fwd_next += 1
        fid = self._fwd_next
        self.fwd_reads[fid] = _FwdRead(read_id, leader)
        self._send(ReadIndexReq(src=self.id, dst=leader, term=self.term, read_id=fid))  # (A.3)

    def _on_read_index_req(self, m: ReadIndexReq) -> None:
        if self.role != Role.LEADER:
            self._send(ReadIndexResp(src=self.id, dst=m.src, term=self.term,
                                     read_id=m.read_id, index=None))
            return
        self._leader_read(m.read_id, m.src)

    def _on_read_index_resp(self, m: ReadIndexResp) -> None:
        fr = self.fwd_reads.get(m.read_id)
        if fr is None or fr.index is not None or m.src != fr.leader:
            return   # a duplicate, an expired request, or one of an earlier life
        if m.index is None:
            del self.fwd_reads[m.read_id]
            self._r.outcomes.append(Outcome(OutcomeKind.READ, fr.read_id, Status.NOT_LEADER,
                                            self.leader if self.leader != m.src else None))
            return
        fr.index = m.index
        # The index is committed: when we hold it on our path, it is our commit too, so
        # a follower that heard of the commit only through this answer need not wait for
        # the next heartbeat to serve the read. (Not capped at our match as a heartbeat's
        # commit is, it may name a height we hold on a dead branch: no tripwire, we just
        # wait for the leader's blocks.)
        self._advance_commit_to(m.index)
        self._answer_forwarded_reads()

    def _answer_forwarded_reads(self) -> None:
        """Serve every forwarded read whose index we have applied. Our applied blocks are
        committed, and the committed path is unique, so applied height >= index height
        means our state includes the index's block."""
        h = self.applied.height
        ready = [fid for fid, fr in self.fwd_reads.items()
                 if fr.index is not None and h >= fr.index.height]
        for fid in ready:
            fr = self.fwd_reads.pop(fid)
            assert fr.index is not None
            self._r.reads.append((fr.read_id, fr.index))
            self.follower_reads += 1

    def _confirm_reads(self) -> None:
        for rd in self.reads:
            if not rd.confirmed:
                n = (self.id in self.voters) + sum(
                    1 for v in self.voter_peers if self.prog[v].acked_seq >= rd.seq)
                rd.confirmed = n >= self.quorum
        self._answer_ready_reads()

    def _answer_ready_reads(self) -> None:
        keep = []
        for rd in self.reads:
            if not rd.confirmed:
                keep.append(rd)
            elif rd.origin is not None:   # the follower waits for its own apply
                self._eager(ReadIndexResp(src=self.id, dst=rd.origin, term=self.term,
                                         read_id=rd.read_id, index=rd.index))
            elif self.applied.height >= rd.index.height:
                self._r.reads.append((rd.read_id, rd.index))
            else:
                keep.append(rd)
        self.reads = keep

    # ================================================================== transfer (A.11)
    def _transfer(self, target: int) -> None:
        out = self._r.outcomes
        if self.role != Role.LEADER:
            out.append(Outcome(OutcomeKind.TRANSFER, target, Status.NOT_LEADER, self.leader))
            return
        if target == self.id:
            if self.transfer is not None:   # transfer back to self cancels (etcd TransferBack)
                out.append(Outcome(OutcomeKind.TRANSFER, self.transfer, Status.ABORTED, self.id))
                self.transfer = None
            out.append(Outcome(OutcomeKind.TRANSFER, target, Status.OK, self.id))
            return
        if target not in self.prog or target not in self.voters:
            out.append(Outcome(OutcomeKind.TRANSFER, target, Status.REJECTED, self.id))
            return
        if self.transfer == target:
            return
        if self.transfer is not None:
            out.append(Outcome(OutcomeKind.TRANSFER, self.transfer, Status.ABORTED, self.id))
        self.transfer, self.transfer_elapsed = target, 0
        p = self.prog[target]
        if p.match == self.head:
            self._eager(TimeoutNow(src=self.id, dst=target, term=self.term))
        else:
            self._catch_up(target)

    # ================================================================== introspection
    def status(self) -> dict:
        return {"id": self.id, "role": self.role.name.lower(), "term": self.term,
                "voted_for": self.voted_for, "leader": self.leader, "head": list(self.head),
                "base": list(self.tree.root.id),
                "members": [{"id": mb.id, "address": mb.address,
                             "role": mb.role.name.lower()} for mb in self.config.members],
                "snapshot": list(self.snapshot[0]) if self.snapshot is not None else None,
                "commit": list(self.commit), "applied": list(self.applied),
                "blocks": len(self.tree.blocks), "pending": sum(map(len, self.pending.values())),
                "follower_reads": self.follower_reads, "forwarded_writes": self.forwarded_writes,
                "tripwire": {"refused_appends": self.refused_appends,
                             "refused_commits": self.refused_commits}}


def step(state: RaftCore, inp: CoreInput) -> tuple[RaftCore, Ready]:
    """Functional form of `RaftCore.step` (the state is updated in place and returned)."""
    return state, state.step(inp)
