"""Safety invariants of docs/protocol.md §B, checked incrementally after every simulation step.

The checker sees what a god's-eye harness sees: every Ready as it is produced and executed,
every block ever created (the registry), every node's durable store and volatile core. Each
check costs time proportional to what the step changed, so thousands of steps per second
stay possible. A violation raises `InvariantViolation` naming the invariant.
"""
from __future__ import annotations

from typing import Any

from josefine.chain.block import Block, BlockKind, verify_digest
from josefine.messages import AppendResp, InstallSnapshotResp, PreVoteReq, PreVoteResp, VoteResp
from josefine.raft.core import RaftCore, Role
from josefine.raft.membership import Config, decode_config_block
from josefine.raft.ready import EventKind
from josefine.types import GENESIS_ID, BlockId


class InvariantViolation(AssertionError):
    def __init__(self, code: str, detail: str) -> None:
        self.code = code
        super().__init__(f"{code}: {detail}")


class Invariants:
    def __init__(self, genesis: Block, voters: frozenset[int],
                 initial: Config | None = None) -> None:
        self.registry: dict[BlockId, Block] = {genesis.id: genesis}
        self.initial = initial or Config.of(voters)
        self.cfg_of: dict[BlockId, BlockId | None] = {genesis.id: None}
        """B18: each block's nearest CONFIG ancestor-or-self (None: the bootstrap config)."""
        self.configs: dict[BlockId, Config] = {}
        self.term_top: dict[int, BlockId] = {}          # B7: highest block of each term
        self.leaders: dict[int, int] = {}               # B1: term -> node
        self.votes: dict[tuple[int, int], int] = {}     # B2: (node, term) -> candidate
        self.last_term: dict[int, int] = {}             # B3
        self.wire_term: dict[int, int] = {}             # B4: highest term put on the wire
        self.acked: dict[int, tuple[int, BlockId]] = {}  # B19: node -> (term, highest acked)
        self.acked_all: dict[int, set[BlockId]] = {}    # B4: every block acked by node
        self.deleted: dict[int, set[BlockId]] = {}      # B4: blocks a node's GC deleted
        self.committed: list[BlockId] = [GENESIS_ID]    # B11: the global committed path C
        self.c_at_election: dict[tuple[int, int], int] = {}  # B14: (node, term) -> len(C)
        self.applied: dict[int, tuple[BlockId, bytes]] = {}  # B15: height -> (id, sm digest)
        self.effective: dict[tuple[str, int], int] = {}  # B16: (client, seq) -> height
        self.voters = voters
        self.quorum = len(voters) // 2 + 1

    # ------------------------------------------------------------------ helpers
    def _on_c(self, b: BlockId) -> bool:
        c = self.committed
        return b.height < len(c) and c[b.height] == b

    def _below_root(self, core: RaftCore, b: BlockId) -> bool:
        """b lies below the node's base, on the committed path: compacted, held by the
        snapshot the base stands for (the base itself is committed, so its ancestors are)."""
        return b.height < core.tree.root.id.height and self._is_anc(b, core.tree.root.id)

    def _is_anc(self, a: BlockId, b: BlockId) -> bool:
        reg = self.registry
        if a.height > b.height:
            return False
        x: BlockId | None = b
        while x is not None and x.height > a.height:
            x = reg[x].parent
        return x == a

    # ------------------------------------------------------------------ per Ready (at step)
    def on_new_blocks(self, node: int, core: RaftCore, blocks: list[Block]) -> None:
        reg = self.registry
        for b in blocks:
            old = reg.get(b.id)
            if old is not None:
                if old.digest != b.digest or old.parent != b.parent or old.kind != b.kind:
                    raise InvariantViolation("B6", f"id {b.id} has two contents (node {node})")
                continue
            parent = None if b.parent is None else reg.get(b.parent)
            if parent is None or b.id.height != parent.id.height + 1 \
                    or parent.id.term > b.id.term or b.id.term > core.term \
                    or not verify_digest(b, parent.digest):
                raise InvariantViolation("B5", f"malformed block {b.id} at node {node}")
            reg[b.id] = b
            prev_cfg = self.cfg_of.get(b.parent)  # type: ignore[arg-type]
            if b.kind == BlockKind.CONFIG:
                new = decode_config_block(b.payload)[1]
                prev = self.configs[prev_cfg] if prev_cfg is not None else self.initial
                if len(new.voters ^ prev.voters) > 1:
                    raise InvariantViolation("B18", f"config block {b.id} changes voters "
                                                    f"{sorted(prev.voters)} -> "
                                                    f"{sorted(new.voters)}")
                self.configs[b.id] = new
                self.cfg_of[b.id] = b.id
            else:
                self.cfg_of[b.id] = prev_cfg
            top = self.term_top.get(b.id.term)
            if top is None or b.id.height > top.height:
                if top is not None and not self._is_anc(top, b.id):
                    raise InvariantViolation("B7", f"term {b.id.term} forks: {top} vs {b.id}")
                self.term_top[b.id.term] = b.id
            elif not self._is_anc(b.id, top):
                raise InvariantViolation("B7", f"term {b.id.term} forks: {b.id} vs {top}")

    def on_events(self, node: int, core: RaftCore, events: list[tuple]) -> None:
        for ev in events:
            kind = ev[0]
            if kind == EventKind.BECAME_LEADER:
                t = ev[1]
                other = self.leaders.setdefault(t, node)
                if other != node:
                    raise InvariantViolation("B1", f"nodes {other} and {node} both led term {t}")
                self.c_at_election[(node, t)] = len(self.committed)
            elif kind == EventKind.COMMIT and ev[1] == int(Role.LEADER):
                if ev[3].term != ev[2]:
                    raise InvariantViolation("B12", f"leader {node} of term {ev[2]} committed "
                                                    f"{ev[3]}")

    def on_sent(self, node: int, msgs: list[Any]) -> None:
        for m in msgs:
            if (type(m) is AppendResp or type(m) is InstallSnapshotResp) and m.success:
                assert m.match is not None, f"node {node} sent a success without a match: {m}"
                self.on_acked(node, m.term, m.match)
            if type(m) is not PreVoteReq and type(m) is not PreVoteResp:
                if m.term > self.wire_term.get(node, 0):
                    self.wire_term[node] = m.term
            if type(m) is VoteResp and m.granted:
                key = (node, m.term)
                prev = self.votes.setdefault(key, m.dst)
                if prev != m.dst:
                    raise InvariantViolation("B2", f"node {node} voted for {prev} and {m.dst} "
                                                   f"in term {m.term}")

    def on_acked(self, node: int, term: int, match: BlockId) -> None:
        cur = self.acked.get(node)
        if cur is None or cur[0] != term or match.height > cur[1].height:
            self.acked[node] = (term, match)
        self.acked_all.setdefault(node, set()).add(match)

    # ------------------------------------------------------------------ per step (state)
    def check_node(self, node: int, core: RaftCore, before: dict) -> None:
        tree = core.tree
        if core.term < before["term"]:
            raise InvariantViolation("B3", f"node {node} term {before['term']} -> {core.term}")
        if before["term"] == core.term and before["voted_for"] is not None \
                and core.voted_for != before["voted_for"]:
            raise InvariantViolation("B2", f"node {node} changed its vote in term {core.term}")
        if not (tree.on_path(core.commit) and core.applied.height <= core.commit.height
                and tree.on_path(core.applied)):
            raise InvariantViolation("B8", f"node {node} pointers applied={core.applied} "
                                           f"commit={core.commit} head={core.head}")
        old_c = before["commit"]
        if old_c != core.commit:
            if not tree.is_ancestor(old_c, core.commit) if tree.has(old_c) else \
                    not self._is_anc(old_c, core.commit):
                raise InvariantViolation("B10", f"node {node} commit {old_c} -> {core.commit}")
            self._extend_committed(node, core, old_c)
        if core.role == Role.LEADER and before["role"] == Role.LEADER \
                and before["term"] == core.term and before["head"] != core.head:
            if not self._is_anc(before["head"], core.head):
                raise InvariantViolation("B9", f"leader {node} head {before['head']} -> "
                                               f"{core.head}")
        if core.role == Role.LEADER:
            n = self.c_at_election.get((node, core.term))
            if n is not None and not (tree.on_path(self.committed[n - 1])
                                      or self._below_root(core, self.committed[n - 1])):
                raise InvariantViolation("B14", f"leader {node} of term {core.term} lacks "
                                                f"committed {self.committed[n - 1]}")
        pending = [b for b, _ in core._cfgs if b.height > core.commit.height]
        if core.role == Role.LEADER and len(pending) > 1:
            raise InvariantViolation("B18", f"leader {node} has {len(pending)} uncommitted "
                                            f"CONFIG blocks on its path: {pending}")
        expect = self.config_at(core.head) if core.head in self.cfg_of else None
        if expect is not None and (core._cfgs or expect != self.initial) \
                and core.config != expect:
            raise InvariantViolation("B18", f"node {node}'s configuration is not the one on "
                                            f"its path at {core.head}")
        if core.refused_appends or core.refused_commits:
            raise InvariantViolation("B20", f"node {node}'s tripwire fired in a run with no "
                                            f"forger: {core.refused_appends} appends, "
                                            f"{core.refused_commits} commits refused")
        ack = self.acked.get(node)
        if ack is not None and ack[0] == core.term and not tree.on_path(ack[1]) \
                and not self._below_root(core, ack[1]):
            raise InvariantViolation("B19", f"node {node} acked {ack[1]} in term {ack[0]} but "
                                            f"its head is {core.head}")

    def _extend_committed(self, node: int, core: RaftCore, old: BlockId) -> None:
        C = self.committed
        tree = core.tree
        root = tree.root.id
        below: dict[int, BlockId] = {}
        if old.height + 1 < root.height:   # an installed snapshot jumped the commit
            x: BlockId | None = root
            while x is not None and x.height > old.height:
                below[x.height] = x
                x = self.registry[x].parent
        for h in range(old.height + 1, core.commit.height + 1):
            bid = below[h] if h < root.height else tree.at(h)
            if h < len(C):
                if C[h] != bid:
                    raise InvariantViolation("B11", f"node {node} committed {bid} but {C[h]} "
                                                    f"is committed at height {h}")
            else:
                C.append(bid)

    def config_at(self, b: BlockId) -> Config:
        cid = self.cfg_of.get(b)
        return self.configs[cid] if cid is not None else self.initial

    def check_commit_justified(self, stores: dict[int, Any], old_len: int,
                               counted_in: Config | None = None) -> None:
        """B13: each block that just entered C is durably stored by a quorum: a majority of
        the voters in force at it, at C's new top, or in `counted_in`, the configuration of
        the node whose step grew C (a leader counts in the configuration on its own path,
        which may hold a newer, uncommitted CONFIG block: one change at a time makes any
        two of these majorities overlap, thesis §4.1)."""
        top = self.config_at(self.committed[-1])
        cands = [top] + ([counted_in] if counted_in is not None else [])
        for h in range(old_len, len(self.committed)):
            c = self.committed[h]
            ok = False
            for cfg in [self.config_at(c)] + cands:
                n = sum(1 for v in cfg.voters if c in stores[v])
                ok = ok or n >= len(cfg.voters) // 2 + 1
            if not ok:
                raise InvariantViolation("B13", f"{c} committed but durable on no quorum")

    def on_restart(self, node: int, core: RaftCore, store: Any) -> None:
        if core.term < self.wire_term.get(node, 0):
            raise InvariantViolation("B4", f"node {node} restarted at term {core.term} after "
                                           f"sending term {self.wire_term[node]}")
        v = self.votes.get((node, core.term))
        if v is not None and core.voted_for != v:
            raise InvariantViolation("B4", f"node {node} forgot its vote for {v} in term "
                                           f"{core.term}")
        deleted = self.deleted.get(node, set())
        stats = getattr(store, "stats", None)
        base_h = stats()["base"].height if stats is not None else 0
        for b in self.acked_all.get(node, ()):
            if b.height <= base_h and self._on_c(b):
                continue   # compacted: held by the snapshot of the (committed) base
            if b not in store and not (b in deleted and self._lost(b)):
                raise InvariantViolation("B4", f"node {node} lost acked block {b}")

    def on_deleted(self, node: int, ids: Any) -> None:
        """The node durably deleted these blocks (garbage collection of dead branches)."""
        self.deleted.setdefault(node, set()).update(ids)

    def _lost(self, b: BlockId) -> bool:
        """b's branch lost for good: b's ancestor at the top height of the committed path
        C (b itself when C reaches past it) is not C's block there, so b forked off C
        below C's top. An acked block that GC deleted is then no broken promise (it was
        acked on a branch that lost); one on C, one still above C on C's own branch, or
        one missing without a delete, still is."""
        c = self.committed
        h = min(b.height, len(c) - 1)
        x: BlockId | None = b
        while x is not None and x.height > h:
            x = self.registry[x].parent
        return x != c[h]

    def on_applied(self, node: int, block: Block, sm_digest: bytes,
                   effective: list[tuple[str, int]]) -> None:
        h = block.id.height
        prev = self.applied.get(h)
        if prev is None:
            self.applied[h] = (block.id, sm_digest)
            for key in effective:
                other = self.effective.setdefault(key, h)
                if other != h:
                    raise InvariantViolation("B16", f"command {key} took effect at heights "
                                                    f"{other} and {h}")
        elif prev != (block.id, sm_digest):
            raise InvariantViolation("B15", f"node {node} applied {block.id} at height {h}, "
                                            f"others applied {prev[0]} (or a different state)")
