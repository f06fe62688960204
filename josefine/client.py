"""Remote client: talks to any node, follows leader hints, retries safely.

Exactly-once writes: every write carries (client id, seq), and a retry — after a timeout,
an UNKNOWN, a leader change — reuses the same pair, so the state machine's session table
applies it at most once. Each calling thread gets its own client id, its own sequence and
its own sockets: a session caches only the last result per client id, so one id must
never have two writes in flight. That also makes one `Client` safe to share between
threads (and lets them run concurrently).
"""
from __future__ import annotations

import itertools
import random
import threading
import time
import uuid
from typing import Any, Mapping, Sequence

from josefine.errors import (BusyError, NotLeaderError, RejectedError, UnavailableError,
                             UnknownOutcomeError)
from josefine.fsm.kv import kv_cas, kv_delete, kv_get, kv_put
from josefine.security import ClientCredentials, KeyPair, client_credentials
from josefine.messages import (ClientAdmin, ClientPropose, ClientRead, ClientStatus,
                               ClientTransfer, Status)
from josefine.transport.client_conn import ClientConnection

__all__ = ["Client", "query_status", "admin_request"]


class _ThreadState:
    def __init__(self, base: str, n: int) -> None:
        self.client_id = f"{base}-{n}"
        self.seq = 0
        self.read_id = 0
        self.conns: dict[str, ClientConnection] = {}


class Client:
    """A key-value (and raw command) client for a Josefine cluster.

    Args:
        addresses: node endpoints, either a list or a {node id: address} map (the map
            lets leader hints be followed directly).
        cluster_id: the cluster's id (from cluster.toml); frames of other clusters are refused.
        timeout: overall deadline of one operation, retries included.
        request_timeout: how long to wait for one node before trying another.
        credentials: the client's Curve key pair and the nodes' server keys, for a secure
            cluster (the default kind); None talks plaintext to an ``insecure`` cluster.
            `from_cluster_file` finds them in the cluster file.
        read_from: "leader" (default) sends reads to the leader; "any" spreads them over
            every node, round robin: a follower obtains a read index from the leader and
            answers from its own state once it has applied that far, so reads stay
            linearizable while the leader's load drops (docs/protocol.md A.10). With
            "any", a write that reaches a follower is forwarded by it to the leader and
            the answer relayed; by default a follower answers with the leader's id and
            the client goes there itself, saving the extra hop on later writes.
    """

    def __init__(self, addresses: Sequence[str] | Mapping[int, str], cluster_id: str, *,
                 timeout: float = 10.0, request_timeout: float = 1.0,
                 credentials: ClientCredentials | None = None,
                 read_from: str = "leader") -> None:
        if read_from not in ("leader", "any"):
            raise ValueError(f"read_from must be 'leader' or 'any', not {read_from!r}")
        self.read_from = read_from
        self._rr = itertools.count(random.randrange(1 << 16))
        if isinstance(addresses, Mapping):
            self._by_id = {int(k): v for k, v in addresses.items()}
            self.addresses = list(self._by_id.values())
        else:
            self.addresses = list(addresses)
            self._by_id = {}
        if not self.addresses:
            raise ValueError("Client needs at least one node address")
        self.cluster_id = cluster_id
        self.credentials = credentials
        self.timeout = timeout
        self.request_timeout = request_timeout
        self._base = f"cl-{uuid.uuid4().hex[:12]}"
        self._threads = itertools.count(1)
        self._local = threading.local()
        self._all: list[_ThreadState] = []
        self._lock = threading.Lock()
        self._leader: str | None = None
        self._closed = False
        self._cluster_file: str | None = None
        self._key_args: dict[str, Any] = {}
        self._next_discovery = 0.0

    @classmethod
    def from_cluster_file(cls, path: str | None = None, *, admin: bool = False,
                          key_file: str | None = None, **kw: Any) -> "Client":
        """Build a client from a launcher's cluster.toml (or $JOSEFINE_CLUSTER), with the
        key pair it names (the admin key with `admin`), or the one in `key_file`."""
        from josefine.config import load_cluster_config, resolve_cluster_path
        path_ = resolve_cluster_path(path)
        cc = load_cluster_config(path_)
        creds = client_credentials(cc, admin=admin, key_file=key_file, source=str(path_))
        client = cls({i: n.address for i, n in cc.nodes.items()}, cc.cluster_id,
                     credentials=creds, **kw)
        client._cluster_file = str(path_)   # re-read when the members change (_discover)
        client._key_args = {"admin": admin, "key_file": key_file}
        return client

    # ------------------------------------------------------------------ key-value API
    def put(self, key: str, value: Any) -> None:
        self._check(self.propose(kv_put(key, value)))

    def get(self, key: str) -> Any:
        res = self._check(self.read(kv_get(key)))
        return res.get("value") if isinstance(res, dict) else res

    def delete(self, key: str) -> bool:
        res = self._check(self.propose(kv_delete(key)))
        return bool(res.get("existed")) if isinstance(res, dict) else False

    def cas(self, key: str, expected: Any, new: Any) -> bool:
        """Set key to `new` iff it holds `expected` (None: absent); True if it was set."""
        res = self._check(self.propose(kv_cas(key, expected, new)))
        return bool(res.get("ok")) if isinstance(res, dict) else False

    @staticmethod
    def _check(res: Any) -> Any:
        if isinstance(res, dict) and "error" in res:
            raise RejectedError(str(res["error"]))
        return res

    # ------------------------------------------------------------------ raw API
    def propose(self, command: bytes) -> Any:
        """Replicate one command; returns the state machine's result."""
        st = self._state()
        st.seq += 1
        seq = st.seq
        deadline = time.monotonic() + self.timeout
        maybe_applied = False
        last: Exception | None = None
        addr = self._leader or self.addresses[0]
        backoff = 0.005
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            try:
                resp = self._conn(st, addr).request(
                    ClientPropose(client_id=st.client_id, seq=seq, command=command,
                                  any_node=self.read_from == "any"),
                    min(self.request_timeout, remaining))
            except TimeoutError as exc:
                maybe_applied, last = True, exc
                addr = self._next(addr)
                continue
            if resp.status == Status.OK:
                self._leader = addr
                return resp.result
            if resp.status == Status.REJECTED:
                raise RejectedError(f"command rejected by {addr}")
            if resp.status == Status.UNKNOWN:
                maybe_applied = True
            if resp.status == Status.BUSY:
                last = BusyError(f"{addr} is busy")
                time.sleep(min(backoff, max(0.0, deadline - time.monotonic())))
                backoff = min(backoff * 2, 0.2)
                continue
            last = NotLeaderError(f"{addr}: {Status(resp.status).name}",
                                  leader_hint=resp.leader_hint)
            addr = self._follow(addr, resp.leader_hint)
            if resp.leader_hint is None:
                time.sleep(min(backoff, max(0.0, deadline - time.monotonic())))
                backoff = min(backoff * 2, 0.2)
        if maybe_applied:
            raise UnknownOutcomeError(f"no answer within {self.timeout} s; the write may or "
                                      f"may not have applied (last error: {last})")
        raise UnavailableError(f"no leader accepted the write within {self.timeout} s "
                               f"(last error: {last})")

    def read(self, query: bytes) -> Any:
        """Linearizable read through ReadIndex: at the leader, or (read_from="any") at
        whichever node the round robin picks, which asks the leader for the index."""
        st = self._state()
        deadline = time.monotonic() + self.timeout
        spread = self.read_from == "any"
        if spread:
            addr = self.addresses[next(self._rr) % len(self.addresses)]
        else:
            addr = self._leader or self.addresses[0]
        last: Exception | None = None
        backoff = 0.005
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise UnavailableError(f"no linearizable read within {self.timeout} s "
                                       f"(last error: {last})")
            st.read_id += 1
            try:
                resp = self._conn(st, addr).request(
                    ClientRead(client_id=st.client_id, read_id=st.read_id, query=query,
                               any_node=spread),
                    min(self.request_timeout, remaining))
            except TimeoutError as exc:
                last = exc
                addr = self._next(addr)
                continue
            if resp.status == Status.OK:
                if not spread:   # only the leader answers a read that asked for it
                    self._leader = addr
                return resp.result
            if resp.status == Status.REJECTED:
                raise RejectedError(str(resp.result))
            last = NotLeaderError(f"{addr}: {Status(resp.status).name}",
                                  leader_hint=resp.leader_hint)
            addr = self._follow(addr, resp.leader_hint)
            if resp.leader_hint is None:
                time.sleep(min(backoff, max(0.0, deadline - time.monotonic())))
                backoff = min(backoff * 2, 0.2)

    def transfer_leadership(self, to: int) -> None:
        """Ask the current leader to hand over to node `to`."""
        st = self._state()
        deadline = time.monotonic() + self.timeout
        addr = self._leader or self.addresses[0]
        while time.monotonic() < deadline:
            st.read_id += 1
            try:
                resp = self._conn(st, addr).request(
                    ClientTransfer(client_id=st.client_id, read_id=st.read_id, target=to),
                    self.request_timeout * 3)
            except TimeoutError:
                addr = self._next(addr)
                continue
            if resp.ok:
                return
            hint = (resp.result or {}).get("leader_hint")
            if resp.error == "REJECTED":
                raise RejectedError(f"cannot transfer to {to}")
            addr = self._follow(addr, hint)
            time.sleep(0.05)
        raise UnavailableError("leadership transfer did not complete")

    def change_membership(self, op: str, node: int, address: str | None = None) -> list[dict]:
        """One membership change through the leader (the ``member`` admin op; a secure
        cluster needs the admin key): `op` is "add_learner" (with `address`), "promote" or
        "remove". Returns the members (id, address, role) once the change is committed.

        A retry after an answer that never came may find its own change already made; it
        then reports success when the cluster's members show the change.

        Raises:
            RejectedError: the leader refused (the message names the problem).
            UnavailableError: no leader answered within the timeout.
        """
        st = self._state()
        deadline = time.monotonic() + self.timeout
        addr = self._leader or self.addresses[0]
        args: dict[str, Any] = {"op": op, "node": node}
        if address is not None:
            args["address"] = address
        uncertain = False
        last: Exception | None = None
        backoff = 0.02
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            st.read_id += 1
            try:
                resp = self._conn(st, addr).request(
                    ClientAdmin(client_id=st.client_id, read_id=st.read_id, op="member",
                                args=args), min(self.request_timeout * 5, remaining))
            except TimeoutError as exc:
                uncertain, last = True, exc
                addr = self._next(addr)
                continue
            if resp.ok:
                self._leader = addr
                return list(resp.result)
            res = resp.result if isinstance(resp.result, dict) else {}
            status = res.get("status")
            if status == "REJECTED":
                if uncertain:
                    members = self._members_if_done(addr, op, node, address)
                    if members is not None:
                        return members
                if "retry in a moment" not in resp.error:   # a leader's first moments
                    raise RejectedError(resp.error)
            elif status is None:   # refused before reaching the core: bad arguments
                raise RejectedError(resp.error)
            elif status == "UNKNOWN":
                uncertain = True
            last = NotLeaderError(resp.error, leader_hint=res.get("leader_hint"))
            if status == "NOT_LEADER" and res.get("leader_hint") is not None:
                addr = self._follow(addr, res.get("leader_hint"))
                continue
            time.sleep(min(backoff, max(0.0, deadline - time.monotonic())))
            backoff = min(backoff * 2, 0.2)
            if status not in ("REJECTED", "UNKNOWN"):
                addr = self._next(addr)
        raise UnavailableError(f"membership change {op} {node} not confirmed within "
                               f"{self.timeout} s (last error: {last})")

    def _members_if_done(self, addr: str, op: str, node: int,
                         address: str | None) -> list[dict] | None:
        """The members `addr` reports, if they already show the change (else None)."""
        try:
            members = query_status(addr, self.cluster_id, timeout=self.request_timeout,
                                   credentials=self.credentials).get("members") or []
        except Exception:   # noqa: BLE001 - unknown: let the refusal stand
            return None
        m = next((m for m in members if m.get("id") == node), None)
        done = {"add_learner": m is not None and m.get("address") == address,
                "promote": m is not None and m.get("role") == "voter",
                "remove": m is None}.get(op, False)
        return list(members) if done else None

    # ------------------------------------------------------------------ plumbing
    def _state(self) -> _ThreadState:
        if self._closed:
            raise UnavailableError("client is closed")
        st = getattr(self._local, "st", None)
        if st is None:
            st = _ThreadState(self._base, next(self._threads))
            self._local.st = st
            with self._lock:
                self._all.append(st)
        return st

    def _conn(self, st: _ThreadState, addr: str) -> ClientConnection:
        c = st.conns.get(addr)
        if c is None:
            c = ClientConnection(addr, self.cluster_id, st.client_id,
                                 curve=_curve(self.credentials, addr))
            st.conns[addr] = c
        return c

    def _next(self, addr: str) -> str:
        if self._leader == addr:
            self._leader = None
            if self._cluster_file is not None:   # (a file read: no network wait)
                self._discover()   # it may have left the cluster, and others joined
        others = [a for a in self.addresses if a != addr] or self.addresses
        return random.choice(others)

    def _follow(self, addr: str, hint: int | None) -> str:
        if hint is not None:
            if not self._by_id:
                self._learn_ids()
            a = self._by_id.get(int(hint))
            if a is None:      # a node that joined after this client was made
                self._discover(addr)
                a = self._by_id.get(int(hint))
            if a is not None:
                return a
        return self._next(addr)

    def _discover(self, source: str | None = None) -> None:
        """Learn the current members, at most twice a second: from the cluster file this
        client was made from (its addresses and server keys: the launcher and `josefine
        member` keep it true), else from the members node `source` reports (an insecure
        cluster's, or those whose server keys are known). Without this, a client made
        before a membership change keeps asking the nodes it knew: it could not follow a
        leader hint to a node that joined later, nor find the cluster once every node it
        knew was replaced."""
        now = time.monotonic()
        with self._lock:
            if now < self._next_discovery:
                return
            self._next_discovery = now + 0.5
        found: dict[int, str] = {}
        creds = self.credentials
        if self._cluster_file is not None:
            from josefine.config import load_cluster_config
            try:
                cc = load_cluster_config(self._cluster_file)
                creds = client_credentials(cc, source=self._cluster_file, **self._key_args)
            except Exception:   # noqa: BLE001 - a file being rewritten: the next try reads it
                return
            found = {i: n.address for i, n in cc.nodes.items()}
        elif source is not None:
            try:
                st = query_status(source, self.cluster_id, credentials=creds,
                                  timeout=min(0.5, self.request_timeout))
            except Exception:   # noqa: BLE001 - no answer: the next hint asks again
                return
            found = {int(m["id"]): str(m["address"]) for m in st.get("members") or []
                     if m.get("address") and (creds is None
                                              or m["address"] in creds.server_keys)}
            if found:
                found = {**self._by_id, **found}   # (keep what we knew: it may come back)
        if not found:
            return
        with self._lock:
            self.credentials = creds
            self._by_id = found
            self.addresses = list(found.values())

    def _learn_ids(self) -> None:
        for a in self.addresses:
            try:
                st = query_status(a, self.cluster_id, timeout=0.5,
                                  credentials=self.credentials)
            except Exception:
                continue
            if "id" in st:
                self._by_id[int(st["id"])] = a

    def close(self) -> None:
        self._closed = True
        with self._lock:
            states, self._all = self._all, []
        for st in states:
            for c in st.conns.values():
                c.close()

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def _curve(creds: ClientCredentials | None, address: str) -> tuple[KeyPair, bytes] | None:
    return None if creds is None else (creds.pair, creds.server_key(address))


def query_status(address: str, cluster_id: str, timeout: float = 2.0, *,
                 credentials: ClientCredentials | None = None) -> dict:
    """One node's status dict; raises TimeoutError when it does not answer."""
    cid = f"status-{uuid.uuid4().hex[:8]}"
    with ClientConnection(address, cluster_id, cid, curve=_curve(credentials, address)) as conn:
        return dict(conn.request(ClientStatus(client_id=cid, read_id=1), timeout).status)


def admin_request(address: str, cluster_id: str, op: str, args: dict | None = None,
                  timeout: float = 2.0, *, credentials: ClientCredentials | None = None) -> Any:
    """Send an admin request (e.g. op="faults" with FaultRules.to_dict() args); a secure
    cluster needs an admin key in `credentials`."""
    cid = f"admin-{uuid.uuid4().hex[:8]}"
    with ClientConnection(address, cluster_id, cid, curve=_curve(credentials, address)) as conn:
        resp = conn.request(ClientAdmin(client_id=cid, read_id=1, op=op, args=args or {}),
                            timeout)
    if not resp.ok:
        raise RejectedError(f"{address}: admin {op} refused: {resp.error}")
    return resp.result
