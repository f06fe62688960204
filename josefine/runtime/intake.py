"""Client intake: requests in, answers out, for one node (remote clients and the
embedding API alike).

Everything between a client's request and the core lives here, off `Node` (which keeps
wiring and lifecycle): proposals go into the `proposals` channel and wait in `Waiters`
keyed by (client id, seq) until the FSM driver applies them or the core gives an outcome;
reads get a node-local read id and a `ReadIndex`; transfers are answered per target.
Replies to one remote client produced while the FSM driver handles one batch leave as one
frame (`ReplyBatch`). Thread-safe: the transport's I/O thread and any embedding thread call
in, the FSM driver and the role actor answer.
"""
from __future__ import annotations

import itertools
import threading
from concurrent.futures import Future
from typing import Any, Callable

import pykka

from josefine.chain.block import Command
from josefine.messages import (ClientAdmin, ClientAdminResp, ClientPropose, ClientRead,
                               ClientReadResp, ClientStatus, ClientStatusResp,
                               ClientTransfer, ReadIndex, Status, StatusQuery,
                               TransferLeadership)
from josefine.runtime.channels import SideQueue
from josefine.runtime.waiters import Waiters
from josefine.transport.codec import encode_propose_reply

STOPPED = "stopped"
"""Local-only outcome for a request made to a node that has been stopped."""


class ReplyBatch:
    """While the FSM actor handles one ApplyWork, remote replies are gathered per client
    (`pending` is a dict) and flushed together at the end; outside it, `pending` is None.
    Only the FSM actor's thread opens a batch, so other threads see None and send at once."""

    def __init__(self, flush: Callable[[dict], None] | None = None) -> None:
        self.pending: dict | None = None
        self._flush = flush
        self._owner: int | None = None

    def begin(self) -> None:
        self._owner = threading.get_ident()
        self.pending = {}

    def owned_here(self) -> bool:
        return self._owner == threading.get_ident()

    def end(self) -> None:
        batch, self.pending = self.pending, None
        if batch and self._flush is not None:
            self._flush(batch)


class ClientIntake:
    def __init__(self, node_id: int, proposal_inbox: SideQueue, stopped: threading.Event,
                 admin: Callable[[str, dict], tuple[bool, Any, str]], max_queued: int,
                 client_id: str) -> None:
        self.id = node_id
        self.proposal_inbox = proposal_inbox
        self._stopped = stopped
        self.admin = admin
        self.max_queued = max_queued
        self.transport: Any = None
        """The node's transport (reply_client, reply_client_many), set once it exists."""
        self.role_ref: pykka.ActorRef | None = None
        self.run_here: Callable[[SideQueue], None] | None = None
        """Set once the role actor runs: remote proposals (on the transport's I/O thread)
        are then handled at once on that thread when the role actor is idle."""
        self.proposals = Waiters(on_remote=self.answer_remote_proposal)
        self.reads = Waiters()
        self.transfers = Waiters()
        self.changes = Waiters()
        """Membership changes (`Node.add_learner` ..., the ``member`` admin op) by
        (ChangeOp, node id); answered by the FSM driver from the core's CONFIG outcomes."""
        self.reply_batch = ReplyBatch(self.flush_replies)
        self._read_ids = itertools.count(1)
        self._transfer_lock = threading.Lock()
        self.client_id = client_id
        """The session of this node's own embedding API: all its proposals share it."""
        self.leader: int | None = None
        """The leader as the core last saw it (written by the role actor after each step);
        a remote proposal not marked `any_node` is answered NOT_LEADER from it at once."""
        self._seq = itertools.count(1)
        self._seq_lock = threading.Lock()

    def propose_local(self, data: bytes, waiter: Callable) -> None:
        """An embedding proposal: numbered and queued under one lock, since all of them
        share one session and a seq queued behind a higher one would be applied as stale."""
        with self._seq_lock:
            self.submit(Command(self.client_id, next(self._seq), data), waiter)

    def fail_all(self) -> None:
        for w in (self.proposals, self.reads, self.transfers, self.changes):
            w.fail_all()

    def on_client_request(self, identity: bytes, msg: Any) -> None:
        zt = self.transport
        t = type(msg)
        if t is ClientPropose:
            self.submit_remote(identity, [msg])
        elif t is ClientRead:
            cid, rid = msg.client_id, msg.read_id

            def reply_read(status, result, hint):  # noqa: ANN001
                self.reply(identity, ClientReadResp(client_id=cid, read_id=rid,
                                                         status=status, result=result,
                                                         leader_hint=hint))
            self.read(msg.query, reply_read, at_follower=msg.any_node)
        elif t is ClientStatus:
            cid, rid = msg.client_id, msg.read_id
            self.tell_role(StatusQuery(reply=lambda st: zt.reply_client(
                identity, ClientStatusResp(client_id=cid, read_id=rid, status=st.to_dict()))))
        elif t is ClientTransfer:
            cid, rid = msg.client_id, msg.read_id

            def reply_transfer(status, result, hint):  # noqa: ANN001
                zt.reply_client(identity, ClientAdminResp(
                    client_id=cid, read_id=rid, ok=status == Status.OK,
                    result={"status": int(status), "leader_hint": hint},
                    error="" if status == Status.OK else Status(status).name))
            self.add_transfer_waiter(msg.target, reply_transfer)
            self.tell_role(TransferLeadership(target=msg.target))
        elif t is ClientAdmin:
            ok, result, error = self.admin(msg.op, msg.args)
            if isinstance(result, Future):
                # Answered later by another thread (e.g. "chain", by the role actor): the
                # Future's result is the (ok, result, error) triple.
                cid, rid = msg.client_id, msg.read_id
                result.add_done_callback(lambda f: zt.reply_client(identity, ClientAdminResp(
                    client_id=cid, read_id=rid, ok=f.result()[0], result=f.result()[1],
                    error=f.result()[2])))
                return
            zt.reply_client(identity, ClientAdminResp(client_id=msg.client_id,
                                                      read_id=msg.read_id, ok=ok,
                                                      result=result, error=error))

    def on_client_batch(self, identity: bytes, msgs: list) -> None:
        """All requests of one client frame, in order; runs of proposals are registered
        together (one lock, one wake-up of the role actor for the whole run)."""
        run: list = []
        for m in msgs:
            if type(m) is ClientPropose:
                run.append(m)
                continue
            if run:
                self.submit_remote(identity, run)
                run = []
            self.on_client_request(identity, m)
        if run:
            self.submit_remote(identity, run)

    def submit_remote(self, identity: bytes, msgs: list) -> None:
        leader = self.leader
        if leader is not None and leader != self.id:
            # Not the leader: a client that did not ask to be forwarded goes there itself.
            keep = [m for m in msgs if m.any_node]
            for m in msgs:
                if not m.any_node:
                    self.answer_remote_proposal(identity, (m.client_id, m.seq),
                                                Status.NOT_LEADER, None, leader)
            if not keep:
                return
            msgs = keep
        if self._stopped.is_set() or len(self.proposal_inbox) >= self.max_queued:
            stopped = self._stopped.is_set()
            status, hint = (Status.NOT_LEADER, None) if stopped else (Status.BUSY, self.id)
            for m in msgs:
                self.answer_remote_proposal(identity, (m.client_id, m.seq), status, None, hint)
            return
        cmds = [Command(m.client_id, m.seq, m.command) for m in msgs]
        self.proposals.add_remote_many([(c.client_id, c.seq) for c in cmds], identity)
        run_here = self.run_here
        if run_here is None:
            self.proposal_inbox.put_many(cmds)
        else:
            self.proposal_inbox.put_many(cmds, nudge=False)
            run_here(self.proposal_inbox)

    def answer_remote_proposal(self, identity: bytes, key: tuple, status: Status,
                                result: Any, hint: int | None) -> None:
        self.reply(identity, encode_propose_reply(key[0], key[1], status, result, hint))

    def reply(self, identity: bytes, msg: Any) -> None:
        """Answer a remote client (`msg` a message, or one already encoded as bytes); inside
        an FSM batch, replies to one client are gathered and leave as one frame when the
        batch ends (see FsmActor)."""
        rb = self.reply_batch
        batch = rb.pending
        if batch is not None and rb.owned_here():
            lst = batch.get(identity)
            if lst is None:
                batch[identity] = [msg]
            else:
                lst.append(msg)
        else:
            self.transport.reply_client(identity, msg)

    def flush_replies(self, batch: dict[bytes, list]) -> None:
        for identity, msgs in batch.items():
            self.transport.reply_client_many(identity, msgs)

    def tell_role(self, msg: Any) -> None:
        role = self.role_ref
        if role is None:
            return
        try:
            role.tell(msg)
        except pykka.ActorDeadError:
            pass

    def submit(self, cmd: Command, waiter: Callable) -> None:
        if self._stopped.is_set():
            waiter(STOPPED, None, None)
            return
        if len(self.proposal_inbox) >= self.max_queued:
            waiter(Status.BUSY, None, self.id)
            return
        self.proposals.add((cmd.client_id, cmd.seq), waiter)
        self.proposal_inbox.put(cmd)

    def read(self, query: bytes, waiter: Callable, at_follower: bool = True) -> None:
        """`at_follower`: a follower may serve it with the leader's read index (A.10);
        False: only the leader does (a remote client that asked for the leader)."""
        rid = next(self._read_ids)
        self.reads.add(rid, waiter, query)
        self.tell_role(ReadIndex(read_id=rid, at_follower=at_follower))

    def add_change_waiter(self, key: tuple[int, int], waiter: Callable) -> bool:
        """Register a membership change's waiter; False (nothing registered) when the same
        change is already waiting: the core would refuse the second as "another change in
        progress", and that answer, sharing the key, would reach the first caller too."""
        with self._transfer_lock:
            if self.changes.has(key):
                return False
            self.changes.add(key, waiter)
            return True

    def add_transfer_waiter(self, target: int, waiter: Callable) -> None:
        """Transfers are answered per target: a second request for the same target joins
        the first (both get its outcome) instead of replacing it."""
        with self._transfer_lock:
            prev = self.transfers.pop(target)
            if prev is not None:
                first = prev[0]

                def both(status, result, hint):  # noqa: ANN001
                    first(status, result, hint)
                    waiter(status, result, hint)
                self.transfers.add(target, both)
            else:
                self.transfers.add(target, waiter)

