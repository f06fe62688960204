"""The client side of a chaos run: concurrent key-value clients recording a history.

Each client thread owns its own `Client` and runs random read / write / cas operations on a
few keys. Every written value is unique (``c<client>-<n>``), so a value read names the one
operation that wrote it. Each operation is recorded as an invoke line before the request
and an ok / fail / info line after it:

| operation | ok               | fail                                 | info                         |
| --------- | ---------------- | ------------------------------------ | ---------------------------- |
| read      | value read       | no node served it in time (*)        | unexpected error             |
| write     | acknowledged     | definitely refused (never applied)   | timed out / lost: maybe      |
| cas       | compare matched, | compare failed (it *happened*, and   | timed out / lost: maybe;     |
|           | value set        | found another value)                 | refused: ``"refused": true`` |

(*) `Client.read` reports "no answer in time" as UnavailableError too. A read changes
nothing, so for the checker a read's fail and info mean the same: it is ignored.

A share of the reads (``ChaosConfig.any_node_reads``) is sent to a random node marked
`any_node`: a follower serves it itself once the leader has given it a read index and it
has applied that far (docs/protocol.md A.10), so the history checks follower reads for
linearizability too; a node that declines (no leader known, a timeout) passes the read on
through the `Client` as usual. A share of the writes (``ChaosConfig.any_node_writes``)
goes through a client that lets followers forward them to the leader.

A cas `fail` means "the comparison failed", so the history is checked with
``cas_fail_is_compare_failure=True``. A cas that was definitely refused (it never
happened) therefore cannot be written as `fail`; it is written as `info` with
``"refused": true``. `info` is always sound (the checker lets it take effect or not);
the harness's own check drops refused operations entirely (see `checks.drop_refused`).
Non-ok completions also carry ``"error"``: the exception's class name.

When the node set changes during the run (membership faults), the clients follow a
`MemberView`: before each operation a client thread checks the view's version and, if the
members changed, closes its clients and builds new ones for the current members (a `Client`
has a fixed address list: it would never find a leader among added nodes, and would keep
trying a removed one). The rebuild happens between operations, so no operation spans it.
"""
from __future__ import annotations

import itertools
import random
import threading
from typing import Any

import zmq

from josefine.chaos.config import ChaosConfig
from josefine.chaos.members import MemberView
from josefine.check.history import HistoryRecorder, OpHandle
from josefine.client import Client
from josefine.errors import (AbortedError, BusyError, NotLeaderError, RejectedError,
                             UnavailableError, UnknownOutcomeError)
from josefine.fsm.kv import kv_get
from josefine.messages import ClientRead, Status
from josefine.security import ClientCredentials
from josefine.transport.client_conn import ClientConnection

__all__ = ["ChaosRecorder", "Workload", "key_name"]

_DEFINITE_REFUSAL = (UnavailableError, RejectedError, NotLeaderError, AbortedError, BusyError)
"""Errors after which a write certainly did not apply (the client saw no maybe-applied)."""


def key_name(i: int) -> str:
    return f"k{i}"


class ChaosRecorder(HistoryRecorder):
    """A `HistoryRecorder` whose completions may carry extra fields (``refused``, ``error``)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._extra = threading.local()

    def complete(self, handle: OpHandle, type: str, value: Any = None, **extra: Any) -> None:
        self._extra.fields = extra
        try:
            super().complete(handle, type, value)
        finally:
            self._extra.fields = None

    def _write(self, record: dict[str, Any]) -> int:
        extra = getattr(self._extra, "fields", None)
        if extra and record.get("type") != "invoke":
            record.update(extra)
        return super()._write(record)


class Workload:
    """`clients` threads, each with its own `Client`, until `stop()`."""

    def __init__(self, recorder: ChaosRecorder, addresses: dict[int, str], cluster_id: str,
                 cfg: ChaosConfig, credentials: ClientCredentials | None = None,
                 view: MemberView | None = None) -> None:
        self.recorder = recorder
        self.credentials = credentials
        self.addresses = dict(addresses)
        self.view = view
        """The current members, when they may change during the run (else `addresses`)."""
        self.rebuilds = 0
        """How many times a client thread rebuilt its clients after a membership change."""
        self._count_lock = threading.Lock()
        self.cluster_id = cluster_id
        self.cfg = cfg
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self.errors: list[str] = []

    def start(self) -> None:
        for i in range(1, self.cfg.clients + 1):
            t = threading.Thread(target=self._run, args=(i,), name=f"chaos-client-{i}",
                                 daemon=True)
            self._threads.append(t)
            t.start()

    def stop(self) -> None:
        """Stop issuing operations; wait for the ones in flight (each has a deadline)."""
        self._stop.set()
        for t in self._threads:
            t.join(self.cfg.op_timeout * 3 + 10)
            if t.is_alive():
                self.errors.append(f"{t.name} did not finish its last operation")

    def _members(self) -> tuple[int, dict[int, str], ClientCredentials | None]:
        """(version, addresses, credentials) of the current members."""
        if self.view is None:
            return 0, self.addresses, self.credentials
        return self.view.snapshot()

    def _client(self, first: int, timeout: float, request_timeout: float,
                read_from: str = "leader") -> Client:
        _, addresses, credentials = self._members()
        # Rotate the address map so the clients do not all start at node 1.
        ids = sorted(addresses)
        k = (first - 1) % len(ids)
        order = ids[k:] + ids[:k]
        return Client({n: addresses[n] for n in order}, self.cluster_id,
                      timeout=timeout, request_timeout=request_timeout,
                      credentials=credentials, read_from=read_from)

    def _run(self, proc: int) -> None:
        cfg = self.cfg
        rng = random.Random(f"{cfg.seed}/client/{proc}")
        version, addresses, credentials = self._members()
        client = self._client(proc, cfg.op_timeout, cfg.request_timeout)
        # writes through whichever node it meets first, followers forwarding them
        forwarding = self._client(proc + 1, cfg.op_timeout, cfg.request_timeout, "any")
        direct = _DirectReader(addresses, self.cluster_id, f"chaos-direct-{proc}",
                               credentials)
        known: dict[str, Any] = {}
        n = 0
        try:
            while not self._stop.is_set():
                if self.view is not None and self.view.version != version:
                    # members changed: clients for the current members, between operations
                    client.close()
                    forwarding.close()
                    direct.close()
                    version, addresses, credentials = self._members()
                    client = self._client(proc, cfg.op_timeout, cfg.request_timeout)
                    forwarding = self._client(proc + 1, cfg.op_timeout, cfg.request_timeout,
                                              "any")
                    direct = _DirectReader(addresses, self.cluster_id,
                                           f"chaos-direct-{proc}", credentials)
                    with self._count_lock:
                        self.rebuilds += 1
                key = key_name(rng.randrange(cfg.keys))
                r = rng.random()
                if r < cfg.read_ratio:
                    node = None
                    if rng.random() < cfg.any_node_reads:
                        node = rng.choice(sorted(addresses))
                    self._read(client, proc, key, known, direct if node else None, node)
                else:
                    n += 1
                    value = f"c{proc}-{n}"
                    if r < cfg.read_ratio + cfg.cas_ratio:
                        self._cas(client, proc, key, known.get(key), value, known)
                    else:
                        via = forwarding if rng.random() < cfg.any_node_writes else client
                        self._write(via, proc, key, value, known)
        except Exception as exc:  # noqa: BLE001 - report, never kill the run silently
            self.errors.append(f"client {proc} crashed: {type(exc).__name__}: {exc}")
        finally:
            client.close()
            forwarding.close()
            direct.close()

    def _read(self, client: Client, proc: Any, key: str, known: dict[str, Any],
              direct: _DirectReader | None = None, node: int | None = None) -> bool:
        rec = self.recorder
        h = rec.invoke(proc, "read", key)
        try:
            served, value = (False, None)
            if direct is not None and node is not None:
                served, value = direct.get(node, key, self.cfg.request_timeout)
            if not served:
                value = client.get(key)
        except _DEFINITE_REFUSAL as exc:
            rec.complete(h, "fail", error=type(exc).__name__)
        except Exception as exc:  # noqa: BLE001 - a read that did not return: unknown
            rec.complete(h, "info", error=type(exc).__name__)
        else:
            rec.complete(h, "ok", value)
            known[key] = value
            return True
        return False

    def _write(self, client: Client, proc: int, key: str, value: str,
               known: dict[str, Any]) -> None:
        rec = self.recorder
        h = rec.invoke(proc, "write", key, value)
        try:
            client.put(key, value)
        except UnknownOutcomeError as exc:
            rec.complete(h, "info", error=type(exc).__name__)
        except _DEFINITE_REFUSAL as exc:
            rec.complete(h, "fail", error=type(exc).__name__)
        except Exception as exc:  # noqa: BLE001 - lost connection after sending: maybe
            rec.complete(h, "info", error=type(exc).__name__)
        else:
            rec.complete(h, "ok")
            known[key] = value

    def _cas(self, client: Client, proc: int, key: str, expected: Any, new: str,
             known: dict[str, Any]) -> None:
        rec = self.recorder
        h = rec.invoke(proc, "cas", key, [expected, new])
        try:
            swapped = client.cas(key, expected, new)
        except UnknownOutcomeError as exc:
            rec.complete(h, "info", error=type(exc).__name__)
        except _DEFINITE_REFUSAL as exc:
            rec.complete(h, "info", refused=True, error=type(exc).__name__)
        except Exception as exc:  # noqa: BLE001
            rec.complete(h, "info", error=type(exc).__name__)
        else:
            if swapped:
                rec.complete(h, "ok")
                known[key] = new
            else:
                rec.complete(h, "fail", error="CompareFailed")
                known.pop(key, None)

    def final_reads(self, timeout: float = 10.0) -> dict[str, Any]:
        """Read every key once through a fresh client (recorded as process "final").

        Returns {key: value} for the reads that succeeded.
        """
        client = self._client(1, timeout, max(self.cfg.request_timeout, 1.0))
        out: dict[str, Any] = {}
        try:
            for i in range(self.cfg.keys):
                key = key_name(i)
                seen: dict[str, Any] = {}
                if self._read(client, "final", key, seen):
                    out[key] = seen[key]
        finally:
            client.close()
        return out


class _DirectReader:
    """Sends a read to one chosen node (not the believed leader); one thread only."""

    def __init__(self, addresses: dict[int, str], cluster_id: str, client_id: str,
                 credentials: ClientCredentials | None = None) -> None:
        self.addresses = addresses
        self.credentials = credentials
        self.cluster_id = cluster_id
        self.client_id = client_id
        self.ctx = zmq.Context()
        self.conns: dict[int, ClientConnection] = {}
        self.ids = itertools.count(1)

    def get(self, node: int, key: str, timeout: float) -> tuple[bool, Any]:
        """(True, value) if `node` served the read; (False, None) if it declined or timed out.

        Raises RejectedError when the node refused the query itself.
        """
        conn = self.conns.get(node)
        if conn is None:
            addr = self.addresses[node]
            creds = self.credentials
            conn = ClientConnection(addr, self.cluster_id, self.client_id, context=self.ctx,
                                    curve=None if creds is None else (creds.pair,
                                                                      creds.server_key(addr)))
            self.conns[node] = conn
        try:
            resp = conn.request(ClientRead(client_id=self.client_id, read_id=next(self.ids),
                                           query=kv_get(key), any_node=True), timeout)
        except TimeoutError:
            return False, None
        if resp.status == Status.OK:
            res = resp.result
            return True, res.get("value") if isinstance(res, dict) else res
        if resp.status == Status.REJECTED:
            raise RejectedError(str(resp.result))
        return False, None

    def close(self) -> None:
        for c in self.conns.values():
            c.close()
        self.conns.clear()
        self.ctx.term()
