"""One node: its five actors wired together, and the embedding API.

Start order: Chain (opens LevelDB, loads the chain) -> FSM driver -> Transport (binds; any
inbound message before the role exists is dropped, Raft retries) -> Role (builds the core
from what the store loaded and replays the committed path into the state machine) ->
Timer. Stop order is the reverse. An unexpected exception in any actor, or on the
transport's I/O thread, stops the whole node and reports it through `on_fatal`.
"""
from __future__ import annotations

import logging
import os
import threading
import time
import uuid
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import pykka

from josefine.actors.base import Links, SideQueue
from josefine.actors.chain import ChainActor
from josefine.actors.fsm import FsmActor, SnapshotPolicy, TakeSnapshot
from josefine.actors.snapshots import SnapshotActor
from josefine.actors.role import RoleActor
from josefine.actors.timer import TickGate, TimerActor
from josefine.actors.transport import TransportActor
from josefine.chain.block import genesis
from josefine.chain.leveldb import LevelDBStore
from josefine.config import (ConfigError, NodeConfig, core_config, load_cluster_config,
                             parse_address)
from josefine.errors import (AbortedError, BusyError, JosefineError, NotLeaderError,
                             RejectedError, UnavailableError, UnknownOutcomeError)
from josefine.fsm.api import StateMachine
from josefine.fsm.applier import Applier
from josefine.fsm.kv import KVStateMachine
from josefine.messages import (ChainQuery, ChangeConfig, InstallSnapshot, SnapshotChunk,
                               SnapshotChunkAck, Status, StatusQuery, TransferLeadership)
from josefine.procstat import rss_bytes
from josefine.runtime.channels import PEER_IN, PROPOSALS, WRITES
from josefine.runtime.intake import STOPPED, ClientIntake
from josefine.runtime.snapshots import (SNAPSHOT_DIR, SnapshotStats, choose_restart_snapshot,
                                       restore_from)
from josefine.runtime.status import NodeStatus, most_caught_up
from josefine.runtime.writer import Writer
from josefine.raft.core import RaftCore
from josefine.raft.membership import ChangeOp, Config
from josefine.transport.faults import FaultRules
from josefine.security import KeyFileError, TrustedKeys, load_keypair, trusted_keys
from josefine.transport.zmq_transport import TransportSecurity, ZmqTransport

if TYPE_CHECKING:
    from josefine.metrics import NodeMetrics

log = logging.getLogger(__name__)


_STOPPED = STOPPED


def status_error(status: Status | str, hint: int | None,
                 what: str = "request") -> JosefineError:
    """Map a non-OK status to the public exception (josefine.errors)."""
    if status == _STOPPED:
        return UnavailableError(f"{what}: this node has been stopped")
    if status == Status.NOT_LEADER:
        return NotLeaderError(f"{what}: not the leader (hint: {hint})", leader_hint=hint)
    if status == Status.BUSY:
        return BusyError(f"{what}: leader is over its uncommitted backlog limit")
    if status == Status.UNKNOWN:
        return UnknownOutcomeError(f"{what}: leader stepped down before the outcome was known")
    if status == Status.ABORTED:
        return AbortedError(f"{what}: its block lost to another branch; not applied")
    if status == Status.REJECTED:
        return RejectedError(f"{what}: rejected")
    return UnavailableError(f"{what}: failed with status {status!r}")


def load_trust(cfg: NodeConfig, *, reload: bool = False) -> TrustedKeys:
    """The keys node `cfg` trusts, from its cluster file, checked against its config.

    At start every peer of the config must have a key (a typo'd file fails early). On a
    `reload` it need not: the members change at run time, and a removed member's key
    leaves the file while the config this node started with still names it.

    Raises:
        ConfigError: no cluster file, another cluster's file, an insecure cluster file
            for a secure node, a peer without a key, or a malformed key.
    """
    if not cfg.cluster_file:
        raise ConfigError(f"node {cfg.node_id}: key 'cluster_file': missing: a secure node "
                          "trusts the public keys of a cluster file (or set insecure = true)")
    cc = load_cluster_config(cfg.cluster_file)
    where = f"node {cfg.node_id}: cluster file {cfg.cluster_file}"
    if cc.cluster_id != cfg.cluster_id:
        raise ConfigError(f"{where}: is cluster {cc.cluster_id!r}, this node's is "
                          f"{cfg.cluster_id!r}")
    if cc.insecure:
        raise ConfigError(f"{where}: says insecure = true but this node is secure: all nodes "
                          "of a cluster must agree (set insecure in both, or in neither)")
    try:
        trust = trusted_keys(cc, source=str(cfg.cluster_file))
    except KeyFileError as exc:
        raise ConfigError(str(exc)) from None
    missing = sorted(set(cfg.nodes) - set(trust.peers))
    if missing and not reload:
        raise ConfigError(f"{where}: lists no key for node(s) {missing}")
    return trust


def transport_security(cfg: NodeConfig) -> TransportSecurity | None:
    """The node's Curve identity and trust, or None (with a warning) when insecure."""
    if cfg.insecure:
        if cfg.cluster_file:
            cc = load_cluster_config(cfg.cluster_file)
            if not cc.insecure:
                raise ConfigError(
                    f"node {cfg.node_id}: insecure = true, but its cluster file "
                    f"{cfg.cluster_file} is secure: all nodes of a cluster must agree")
        log.warning("node %d: INSECURE: plaintext transport, no authentication; any process "
                    "that reaches %s can forge messages", cfg.node_id, cfg.address)
        return None
    if not cfg.secret_key_file:
        raise ConfigError(f"node {cfg.node_id}: key 'secret_key_file': missing: a secure "
                          "node needs its Curve key pair (`josefine launch` writes one), or "
                          "set insecure = true")
    try:
        pair = load_keypair(cfg.secret_key_file)
    except KeyFileError as exc:
        raise ConfigError(f"node {cfg.node_id}: {exc}") from None
    trust = load_trust(cfg)
    if pair.public not in trust.peers[cfg.node_id]:
        raise ConfigError(f"node {cfg.node_id}: the public key of {cfg.secret_key_file} is "
                          f"not node {cfg.node_id}'s key in {cfg.cluster_file}")
    return TransportSecurity(pair, trust)


def _future_waiter(fut: Future, what: str, ok_value: Any = None) -> Callable:
    """A waiter that completes `fut`: the result on OK (or `ok_value`), else the error."""
    def done(status, result, hint):  # noqa: ANN001
        if fut.done():
            return
        if status == Status.OK:
            fut.set_result(result if ok_value is None else ok_value)
        else:
            fut.set_exception(status_error(status, hint, what))
    return done


_MEMBER_OPS = {"add_learner": ChangeOp.ADD_LEARNER, "promote": ChangeOp.PROMOTE,
               "remove": ChangeOp.REMOVE}
"""The ``member`` admin op's `op` argument."""


def members_list(config: Config) -> list[dict[str, Any]]:
    """A configuration as `status` and the ``member`` admin op list it."""
    return [{"id": m.id, "address": m.address, "role": m.role.name.lower()}
            for m in config.members]


class Node:
    """A running node inside this process. Create with `Node.start(config)`."""

    MAX_QUEUED_PROPOSALS = 65_536
    """Proposals waiting for the role actor beyond this many are answered BUSY at once:
    the core's byte budget (`max_uncommitted_bytes`) bounds what it has accepted, and this
    bounds what waits in front of it, so no queue of the node grows without limit."""

    def __init__(self, config: NodeConfig, state_machine: StateMachine | None,
                 on_fatal: Callable[[str, BaseException], None] | None) -> None:
        self.config = config
        self.id = config.node_id
        self._on_fatal = on_fatal
        self._stopped = threading.Event()
        self._stop_lock = threading.Lock()
        self.fatal_error: BaseException | None = None
        self.links = Links()
        self.proposal_inbox = SideQueue(PROPOSALS)
        self.intake = ClientIntake(self.id, self.proposal_inbox, self._stopped, self._admin,
                                   self.MAX_QUEUED_PROPOSALS,
                                   f"node{self.id}-{uuid.uuid4().hex[:12]}")
        self.proposals = self.intake.proposals
        self.reads = self.intake.reads
        self.transfers = self.intake.transfers
        self.state_machine = state_machine if state_machine is not None else KVStateMachine()
        self._refs: list[pykka.ActorRef] = []
        self.metrics: NodeMetrics | None = None
        self.snapshot_stats = SnapshotStats()

    # ------------------------------------------------------------------ lifecycle
    @classmethod
    def start(cls, config: NodeConfig, state_machine: StateMachine | None = None, *,
              on_fatal: Callable[[str, BaseException], None] | None = None) -> "Node":
        """Open the data dir, start the five actors, join the cluster. Raises on bad setup."""
        node = cls(config, state_machine, on_fatal)
        try:
            node._start()
        except BaseException:
            node.stop()
            raise
        return node

    def _start(self) -> None:
        cfg = self.config
        links = self.links
        fatal = self._fatal
        security = transport_security(cfg)   # before anything opens: a bad key stops here
        data = Path(cfg.data_dir)
        data.mkdir(parents=True, exist_ok=True)
        store = LevelDBStore(data / "chain", cfg.cluster_id)
        self.store = store
        stored = store.load()
        # The bootstrap membership: this node and its peers, or (joining a running cluster)
        # its peers only, so it cannot campaign before the leader's CONFIG blocks make it a
        # voter. Every member with its address: the transport's peers follow it.
        initial = Config.of(cfg.peers if cfg.join else cfg.nodes, cfg.nodes)
        voters = initial.voters
        seed = cfg.seed if cfg.seed is not None else int.from_bytes(os.urandom(4), "big")
        self.snapshot_dir = snap_dir = data / SNAPSHOT_DIR
        base = stored.base if stored.base is not None else genesis(cfg.cluster_id)
        chosen = choose_restart_snapshot(snap_dir, self.id, cfg.cluster_id, base, stored.blocks)
        self.applier = Applier(self.state_machine, config=initial)
        applied_digest = base.digest
        snapshot = None
        base_config = None
        if chosen is not None:
            meta = restore_from(self.applier, chosen.path)
            applied_digest = meta.base_digest
            snapshot = (meta.base, meta.base_digest)
            base_config = self.applier.config   # the snapshot's membership, as of its base
            self.snapshot_stats.last_bytes = chosen.path.stat().st_size
            log.info("node %d: restored snapshot %s (%s)", self.id, meta.base,
                     chosen.path.name)
        core = RaftCore(
            core_config(cfg, node_id=cfg.node_id, voters=voters, seed=seed, initial=initial),
            genesis(cfg.cluster_id), term=stored.hard_state.term,
            voted_for=stored.hard_state.voted_for, blocks=stored.blocks, head=stored.head,
            commit=stored.commit, loader=store.get_block, base=stored.base,
            applied=self.applier.applied if chosen is not None else None, snapshot=snapshot,
            incarnation=int.from_bytes(os.urandom(4), "big"), base_config=base_config)
        log.info("node %d: recovered term=%d vote=%s base=%s head=%s commit=%s applied=%s "
                 "(%d blocks)", self.id, core.term, core.voted_for, core.tree.root.id,
                 core.head, core.commit, core.applied, len(stored.blocks))
        del stored   # the core keeps only recent blocks; older ones are read back on demand
        self.chain_inbox = SideQueue(WRITES)
        self.peer_inbox = SideQueue(PEER_IN)
        self.gate = TickGate()
        self.faults = FaultRules(seed=cfg.seed)
        self.zt = ZmqTransport(cfg.node_id, cfg.cluster_id, cfg.bind or cfg.address, cfg.peers,
                               self._on_peer_message, self.intake.on_client_request,
                               on_client_batch=self.intake.on_client_batch,
                               on_fatal=lambda exc: fatal("transport I/O thread", exc),
                               max_frame_bytes=cfg.max_frame_bytes, fault_rules=self.faults,
                               security=security)
        self.writer = Writer(store, cfg.fsync)
        if cfg.metrics_address is not None:
            from josefine.metrics import NodeMetrics   # only a node with metrics loads them
            try:
                self.metrics = NodeMetrics(self.id, cfg.metrics_address,
                                           lambda: self.status(timeout=2.0))
            except OSError as exc:
                raise ConfigError(f"node {self.id}: key 'metrics_address': cannot listen on "
                                  f"{cfg.metrics_address}: {exc.strerror or exc}") from None
            self.writer.observe_sync = self.metrics.fsync_seconds.observe
        links.chain = ChainActor.start(self.id, links, fatal, self.writer, self.chain_inbox)
        self._refs.append(links.chain)
        self.chain_inbox.connect(links.chain)
        policy = SnapshotPolicy(snap_dir, cfg.cluster_id, voters, cfg.snapshot_blocks,
                                cfg.snapshot_bytes)
        links.fsm = FsmActor.start(self.id, links, fatal, self.applier, self.proposals,
                                   self.reads, self.transfers, self.intake.reply_batch,
                                   policy, applied_digest, self.snapshot_stats,
                                   changes=self.intake.changes)
        self._refs.append(links.fsm)
        links.snapshots = SnapshotActor.start(
            self.id, links, fatal, snap_dir, cfg.cluster_id, self._deliver_snapshot,
            chunk_size=max(1024, min(256 * 1024, cfg.max_frame_bytes // 2)),
            stats=self.snapshot_stats)
        self._refs.append(links.snapshots)
        self.zt.start()
        self.intake.transport = self.zt
        links.send = self.zt.send
        links.transport = TransportActor.start(self.id, links, fatal, self.zt)
        self._refs.append(links.transport)
        self._role_actor_status = None
        links.role = RoleActor.start(self.id, links, fatal, core, self.gate,
                                     self.proposal_inbox, self.chain_inbox, self.writer,
                                     self._status_extra, self.peer_inbox, self.metrics,
                                     leader_view=self.intake, on_peers=self.zt.set_peers,
                                     addresses=cfg.nodes)
        self._refs.append(links.role)
        self.proposal_inbox.connect(links.role)
        self.peer_inbox.connect(links.role)
        self.intake.role_ref = links.role
        self.intake.run_here = self._run_role_here
        links.timer = TimerActor.start(self.id, links, fatal, cfg.tick_ms, self.gate)
        self._refs.append(links.timer)
        log.info("node %d: listening on %s", self.id, self.zt.address or cfg.address)

    def stop(self) -> None:
        """Stop the actors in reverse start order; idempotent, safe from any thread."""
        with self._stop_lock:
            if self._stopped.is_set():
                return
            self._stopped.set()
        for ref in reversed(self._refs):
            try:
                ref.stop(timeout=10)
            except pykka.ActorDeadError:
                pass
            except Exception as exc:  # a failed stop must not leave the others running
                log.error("node %d: stopping %s failed: %s", self.id, ref, exc)
        self._refs = []
        zt = getattr(self, "zt", None)
        if zt is not None:
            zt.stop()
        store = getattr(self, "store", None)
        if store is not None:
            store.close()
        if self.metrics is not None:
            self.metrics.close()
        self.intake.fail_all()

    @property
    def stopped(self) -> bool:
        return self._stopped.is_set()

    def _fatal(self, where: str, exc: BaseException) -> None:
        if self.fatal_error is None:
            self.fatal_error = exc
            log.critical("node %d: fatal error in %s: %s: %s — stopping the node", self.id,
                         where, type(exc).__name__, exc, exc_info=exc)
        threading.Thread(target=self._fatal_stop, args=(where, exc), daemon=True).start()

    def _fatal_stop(self, where: str, exc: BaseException) -> None:
        self.stop()
        if self._on_fatal is not None:
            self._on_fatal(where, exc)

    # ------------------------------------------------------------------ inbound
    def _on_peer_message(self, msg: Any) -> None:
        """On the transport's I/O thread: into the `peer-in` channel, handled right here
        when the role actor is idle (RoleActor.run_here), else by the role actor."""
        if self.peer_inbox.target is None:
            return   # the role actor does not exist yet: dropped, as Raft allows
        t = type(msg)
        if t is SnapshotChunk or t is SnapshotChunkAck:
            ref = self.links.snapshots
            if ref is not None:
                try:
                    ref.tell(msg)
                except pykka.ActorDeadError:
                    pass
            return
        self.peer_inbox.put_many((msg,), nudge=False)
        self._run_role_here(self.peer_inbox)

    def _deliver_snapshot(self, m: InstallSnapshot) -> None:
        """A received snapshot is durable: to the core, as a peer message."""
        self.peer_inbox.put_many((m,), nudge=True)

    def _run_role_here(self, queue: SideQueue) -> None:
        run_here = self.links.run_role_here
        if run_here is None:
            queue.nudge()   # the role actor is still starting: it drains when it runs
        else:
            run_here(queue)

    def _admin(self, op: str, args: dict) -> tuple[bool, Any, str]:
        if op in ("faults", "clear_faults", "get_faults"):
            if not self.config.fault_injection:
                return False, None, "fault injection is disabled on this node"
            try:
                if op == "faults":
                    self.faults.load(args)
                elif op == "clear_faults":
                    self.faults.clear()
            except ValueError as exc:
                return False, None, str(exc)
            return True, self.faults.to_dict(), ""
        if op == "chain":
            return self._chain_query(args)
        if op == "snapshot":
            return self._snapshot_now()
        if op == "member":
            return self._member_op(args)
        if op == "reload_keys":
            try:
                return True, self.reload_keys(), ""
            except (ConfigError, RuntimeError) as exc:
                return False, None, str(exc)
        return False, None, f"unknown admin op {op!r}"

    def _chain_query(self, args: dict) -> tuple[bool, Any, str]:
        """`josefine chain`: the role actor describes its block tree on its own thread; the
        answer leaves when it is ready (a Future result), so the transport's I/O thread never
        waits for the role actor."""
        from josefine.chainview import DEFAULT_LAST, MAX_LAST
        last = args.get("last", DEFAULT_LAST)
        if type(last) is not int or not 1 <= last <= MAX_LAST:
            return False, None, f"chain: 'last' must be an integer in 1..{MAX_LAST}"
        fut: Future = Future()

        def reply(desc: dict) -> None:
            fut.set_result((False, None, desc["error"]) if "error" in desc else (True, desc, ""))
        self.intake.tell_role(ChainQuery(last=last, reply=reply))
        return True, fut, ""

    def snapshot_before_stop(self, timeout: float | None = None) -> list[int] | None:
        """For a planned stop: snapshot now if at least `snapshot_on_stop_blocks` blocks
        were applied since the last snapshot, and wait (at most `timeout`, default
        `snapshot_on_stop_timeout_s`) until the file is durable. The restart then restores
        it and replays almost nothing, instead of up to a whole snapshot interval of blocks
        (A.13). Returns the snapshot's base as [term, height], or None when none was needed,
        snapshots are off, or it failed or took too long (logged; the stop goes on: the
        previous snapshot and the blocks after it still rebuild the state)."""
        n = self.config.snapshot_on_stop_blocks
        if n <= 0 or self._stopped.is_set():
            return None
        if timeout is None:
            timeout = self.config.snapshot_on_stop_timeout_s
        t0 = time.monotonic()
        ok, fut, err = self._snapshot_now(min_blocks=n)
        if ok:
            try:
                ok, result, err = fut.result(timeout)
            except FutureTimeout:
                log.warning("node %d: snapshot before stopping did not finish within %.1f s; "
                            "stopping without it", self.id, timeout)
                return None
        if not ok:
            log.warning("node %d: no snapshot before stopping: %s", self.id, err)
            return None
        if result is not None:
            log.info("node %d: snapshot before stopping at %s took %.3f s", self.id,
                     result, time.monotonic() - t0)
        return result

    def _snapshot_now(self, min_blocks: int = 0) -> tuple[bool, Any, str]:
        """`josefine snapshot`: the FSM driver snapshots now; the answer (the snapshot's
        base) leaves once the file is durable, as a Future result. With `min_blocks`, only
        if that many blocks were applied since the last one (else the result is None)."""
        fut: Future = Future()

        def reply(ok: bool, result: Any, error: str) -> None:
            if not fut.done():
                fut.set_result((ok, result, error))
        ref = self.links.fsm
        if ref is None:
            return False, None, "the node is not running"
        try:
            ref.tell(TakeSnapshot(reply=reply, min_blocks=min_blocks))
        except pykka.ActorDeadError:
            return False, None, "the node is stopping"
        return True, fut, ""

    # ------------------------------------------------------------------ membership (A.12)
    def _change(self, op: ChangeOp, node: Any, address: Any,
                done: Callable[[Any, Any, int | None], None]) -> None:
        """Hand one membership change to the core; `done(status, result, hint)` is called
        once with its outcome (result: the configuration after it on OK, else why not).
        Malformed input is refused here, before it could reach a CONFIG block: a member's
        address is dialed by every node, so it must be one."""
        if self._stopped.is_set():
            done(_STOPPED, None, None)
            return
        if type(node) is not int or node < 1:
            done(Status.REJECTED, f"node id must be an integer >= 1, not {node!r}", None)
            return
        address = "" if address is None else address
        if op == ChangeOp.ADD_LEARNER:
            try:
                parse_address(address)
            except ValueError as exc:
                done(Status.REJECTED, f"node {node}'s address: {exc}", None)
                return
        elif address:
            done(Status.REJECTED, f"an address goes only with add_learner, not "
                 f"{op.name.lower()}", None)
            return
        if not self.intake.add_change_waiter((int(op), node), done):
            done(Status.REJECTED, f"{op.name.lower()} of node {node} is already in progress "
                 "here: wait for its outcome", None)
            return
        self.intake.tell_role(ChangeConfig(op=int(op), node=node, address=address))

    def _change_future(self, op: ChangeOp, node: Any, address: Any = None) -> Future:
        fut: Future = Future()
        what = f"{op.name.lower()} node {node}"

        def done(status: Any, result: Any, hint: int | None) -> None:
            if fut.done():
                return
            if status == Status.OK:
                fut.set_result(result)
            elif status == Status.REJECTED:
                fut.set_exception(RejectedError(f"{what}: {result}"))
            else:
                fut.set_exception(status_error(status, hint, what))
        self._change(op, node, address, done)
        return fut

    def add_learner(self, node_id: int, address: str) -> Future:
        """Ask this (leader) node to add node `node_id`, reachable at `address`, as a
        learner: it receives every block but neither votes nor counts toward a quorum.
        Start the new node first with ``join = true`` and the current members as peers
        (on a secure cluster, its key in the cluster file and every member's keys
        reloaded). Resolves with the configuration (`josefine.raft.membership.Config`) once
        the change is committed; raises `RejectedError` naming the problem (an existing id
        or address, another change in progress, ...), `NotLeaderError` (with the leader's
        id as hint) on a follower."""
        return self._change_future(ChangeOp.ADD_LEARNER, node_id, address)

    def promote(self, node_id: int) -> Future:
        """Make learner `node_id` a voter; the leader refuses while it lags (`RejectedError`
        saying by how much: wait and retry). Resolves as `add_learner`."""
        return self._change_future(ChangeOp.PROMOTE, node_id)

    def remove_member(self, node_id: int) -> Future:
        """Remove node `node_id` (voter or learner); a leader that removes itself leads
        until the change commits, then steps down. Stop the removed node's process after
        the Future resolves. Resolves as `add_learner`."""
        return self._change_future(ChangeOp.REMOVE, node_id)

    def _member_op(self, args: dict) -> tuple[bool, Any, str]:
        """The ``member`` admin op: one change, answered once committed (a Future result)
        with the members as `status` lists them; a refusal's result carries the status name
        and the leader hint, so a client can follow it."""
        op = _MEMBER_OPS.get(args.get("op"))   # type: ignore[arg-type]
        if op is None:
            return False, None, (f"member: 'op' must be one of {sorted(_MEMBER_OPS)}, not "
                                 f"{args.get('op')!r}")
        node = args.get("node")
        fut: Future = Future()
        what = f"member {args['op']} {node}"

        def done(status: Any, result: Any, hint: int | None) -> None:
            if fut.done():
                return
            if status == Status.OK:
                fut.set_result((True, members_list(result), ""))
                return
            name = "STOPPED" if status == _STOPPED else Status(status).name
            why = f"{what}: {result}" if status == Status.REJECTED else \
                str(status_error(status, hint, what))
            fut.set_result((False, {"status": name, "leader_hint": hint}, why))
        self._change(op, node, args.get("address"), done)
        return True, fut, ""

    def take_snapshot(self, timeout: float = 60.0) -> list[int]:
        """Snapshot this node's state now and wait until the file is durable; returns its
        base as [term, height]. Raises JosefineError if it cannot."""
        ok, fut, err = self._snapshot_now()
        if ok:
            ok, result, err = fut.result(timeout)
            if ok:
                return result
        raise JosefineError(f"node {self.id}: snapshot failed: {err}")

    def reload_keys(self) -> dict:
        """Re-read the trusted keys from the cluster file and apply them at once: new
        handshakes and every later frame are judged by them, and links to peers whose key
        changed are rebuilt. Returns how many keys of each kind are trusted.

        Raises:
            ConfigError: the node is insecure, or the cluster file is invalid (the old keys
                stay in force).
        """
        if not self.zt.secure:
            raise ConfigError(f"node {self.id}: insecure: no keys to reload")
        trust = load_trust(self.config, reload=True)
        self.zt.set_trust(trust)
        log.info("node %d: reloaded keys: %d nodes, %d client keys, %d admin keys", self.id,
                 len(trust.peers), len(trust.clients), len(trust.admins))
        return {"nodes": len(trust.peers), "client_keys": len(trust.clients),
                "admin_keys": len(trust.admins)}

    def _sm_digest(self) -> str | None:
        """The applier's digest for status, read on the role actor's thread while the FSM
        driver may be applying: a read that overlaps a change (the tables mutate under it,
        or `applied` moves) is retried, and after a few tries reported as None. Before, the
        overlap raised in the role actor and stopped the node (seen right after a snapshot
        install under full load)."""
        for _ in range(5):
            before = self.applier.applied
            try:
                digest = self.applier.sm_digest()
            except RuntimeError:   # "... mutated/changed size during iteration"
                continue
            if self.applier.applied == before:
                return digest.hex()
        return None

    def _status_extra(self) -> dict:
        zs = self.zt.stats()
        return {"address": self.config.address, "pid": os.getpid(),
                "applied": list(self.applier.applied),
                "sm_digest": self._sm_digest(),
                "dropped_frames": zs.get("dropped_frames", 0),
                "transport": zs, "fsync": self.config.fsync,
                "waiting_proposals": len(self.proposals),
                "rss_bytes": rss_bytes(os.getpid()),
                "leveldb_memory_bytes": self.store.stats()["leveldb_memory_bytes"],
                "metrics_address": self.config.metrics_address,
                "snapshots": self.snapshot_stats.to_dict(),
                "writes": {"total": self.writer.planner.writes,
                           "synced": self.writer.planner.synced_writes,
                           "inline": self.writer.inline_writes,
                           "readys": self.writer.planner.readys}}

    # ------------------------------------------------------------------ embedding API
    def propose(self, data: bytes) -> Future:
        """Replicate `data` as one command; the Future resolves with the state machine's
        result once it is committed and applied, or raises a `JosefineError`.

        Safe to call from many threads. Callbacks added to the Future run on one of the
        node's actor threads: keep them short, or hand the work to your own thread."""
        fut: Future = Future()
        waiter = _future_waiter(fut, "propose")
        data = bytes(data)
        self.intake.propose_local(data, waiter)
        return fut

    def read(self, query: bytes) -> Future:
        """Linearizable read (ReadIndex); resolves with `state_machine.query(query)`."""
        fut: Future = Future()
        if self._stopped.is_set():
            fut.set_exception(status_error(_STOPPED, None, "read"))
            return fut
        self.intake.read(bytes(query), _future_waiter(fut, "read"))
        return fut

    def transfer_leadership(self, to: int) -> Future:
        """Ask this (leader) node to hand leadership to node `to`; resolves with `to`."""
        fut: Future = Future()
        if self._stopped.is_set():
            fut.set_exception(status_error(_STOPPED, None, "transfer"))
            return fut
        self.intake.add_transfer_waiter(to, _future_waiter(fut, "transfer", to))
        self.intake.tell_role(TransferLeadership(target=to))
        return fut

    def hand_over_leadership(self, timeout: float | None = None) -> int | None:
        """If this node leads, transfer leadership to the most caught-up voter (highest match
        height, then lowest id) and wait for it to take over; return its id, or None when
        this node was not leading, has no peer, or the transfer did not complete in time
        (default: one election timeout). For planned stops: clients then lose one round
        trip to the new leader instead of an election timeout (thesis §3.10)."""
        if timeout is None:
            timeout = self.config.election_ticks * self.config.tick_ms / 1000.0
        try:
            st = self.status(timeout=timeout)
        except JosefineError:
            return None
        voters = {m["id"] for m in st.members or () if m["role"] == "voter"}
        followers = {f: h for f, h in (st.followers or {}).items() if f in voters}
        if st.role != "leader" or not followers:
            return None
        target = most_caught_up(followers)
        t0 = time.monotonic()
        try:
            self.transfer_leadership(target).result(timeout)
        except (JosefineError, FutureTimeout) as exc:
            log.warning("node %d: leadership hand-over to node %d did not complete: %s",
                        self.id, target, exc or "timed out")
            return None
        log.info("node %d: handed leadership to node %d in %.1f ms", self.id, target,
                 (time.monotonic() - t0) * 1000)
        return target

    def wait_for_leader(self, timeout: float = 10.0) -> int:
        """Block until this node knows a leader (itself or a peer); return its id."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.fatal_error is not None or self.stopped:
                raise UnavailableError(f"node {self.id} stopped")
            leader = self.status().get("leader")
            if leader is not None:
                return int(leader)
            time.sleep(0.02)
        raise UnavailableError(f"no leader known to node {self.id} within {timeout} s")

    def status(self, timeout: float = 5.0) -> NodeStatus:
        """Role, term, leader, head, commit, applied and counters of this node (also
        readable as a mapping of `NodeStatus.to_dict()`'s keys)."""
        if self._stopped.is_set() or self.links.role is None:
            return NodeStatus(id=self.id, role="stopped")
        fut: Future = Future()
        self.intake.tell_role(StatusQuery(reply=fut.set_result))
        try:
            return fut.result(timeout)
        except FutureTimeout:
            raise UnavailableError(f"node {self.id} did not answer a status query within "
                                   f"{timeout} s") from None
