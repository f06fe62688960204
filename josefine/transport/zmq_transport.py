"""ZeroMQ transport of one node: one ROUTER in, one DEALER per peer out, one I/O thread.

House rules:

* ZeroMQ sockets are not thread-safe, so every socket here is created, used and closed by
  the I/O thread alone. Other threads hand work over through a deque and wake the I/O
  thread through a pipe (`send`, `send_peer`, `reply_client` never block and never touch
  a socket).
* The ROUTER bound at the node's address receives both peer frames and client requests;
  the frame header (`codec.decode_frame`) tells them apart. Client replies leave through the
  same ROUTER, addressed by the client's routing identity; unroutable replies are dropped
  silently (no ROUTER_MANDATORY).
* Outbound DEALERs use ZMQ_IMMEDIATE: a message to a peer that is not connected is dropped
  at once instead of queueing behind a dead link. Raft re-sends whatever matters, and stale
  backlogs only slow a recovering peer down. ZMTP heartbeats detect peers that hang
  (SIGSTOP) so their links close too.
* Bad input never crashes the I/O thread: invalid frames are dropped and counted per reason,
  with at most one warning per reason every few seconds. Anything *unexpected* in the I/O
  thread (a bug, a callback raising) ends the thread and is reported through `on_fatal`;
  the node is expected to stop (no half-alive nodes: any actor's failure stops the node).
* Callbacks run on the I/O thread and must be quick (e.g. an actor `tell`).
* Secure by default (`security`, see josefine/security.py): the ROUTER is a Curve server
  whose ZAP handler admits only trusted keys, each DEALER a Curve client of its peer's key.
  Every inbound frame is checked against the key its connection authenticated with: a peer
  frame must come from the key of the node id it claims ("impersonation" otherwise), peer
  frames need a peer key and client frames a client or admin key ("unauthorized"), a key
  removed since the handshake is refused at its next frame ("untrusted_key"), and admin
  requests from a plain client key are answered "admin key required".
"""
from __future__ import annotations

import heapq
import itertools
import logging
import math
import os
import threading
import time
from collections import deque
from typing import Any, Callable, Iterable, Mapping

import zmq
from zmq.utils.monitor import parse_monitor_message

from josefine.transport.codec import (
    CLIENT_REQUEST_TYPES,
    DEFAULT_MAX_FRAME_BYTES,
    FRAME_ITEM_OVERHEAD,
    REASONS,
    CodecError,
    encode_client_frame,
    encode_frame,
    encode_message,
    decode_frame,
    frame_overhead,
)
from josefine.messages import ClientAdmin, ClientAdminResp, ClientTransfer
from josefine.security import (
    ZAP_DOMAIN,
    KeyPair,
    KeyRole,
    NodeAuthenticator,
    TrustedKeys,
    apply_client_curve,
)
from josefine.transport.faults import FaultRules

__all__ = ["DROP_REASONS", "TransportSecurity", "ZmqTransport"]

_log = logging.getLogger(__name__)

WARN_INTERVAL_S = 5.0
"""At most one warning per drop reason in this many seconds."""

_RECV_BATCH = 256
"""Inbound frames handled per loop turn before outbound work gets a turn."""

DROP_REASONS = tuple(sorted(REASONS)) + ("unknown_sender", "wrong_destination",
                                        "unexpected_message", "impersonation",
                                        "unauthorized", "untrusted_key")
"""Why an inbound frame was dropped: the codec's reasons plus the transport's own."""

_CLIENT_REQUESTS = frozenset(CLIENT_REQUEST_TYPES)
_PEER_ITEM = "p"
_CLIENT_ITEM = "c"
_TRUST_ITEM = "t"
_PEERS_ITEM = "m"
_ADMIN_ONLY = (ClientAdmin, ClientTransfer)
_HANDSHAKE_FAILED = (zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL
                     | zmq.EVENT_HANDSHAKE_FAILED_AUTH)


class TransportSecurity:
    """A node's Curve identity and the keys it trusts (`trust` may be replaced at run time
    through `ZmqTransport.set_trust`)."""

    def __init__(self, pair: KeyPair, trust: TrustedKeys) -> None:
        self.pair = pair
        self.trust = trust


class _NodeLog(logging.LoggerAdapter):
    """Prefix every line with the node id, as in etcd ("2 became leader at term 3")."""

    def __init__(self, logger: logging.Logger, node_id: int) -> None:
        super().__init__(logger, {"node_id": node_id})
        self._node_id = node_id

    def process(self, msg: Any, kwargs: Any) -> tuple[Any, Any]:
        return f"node {self._node_id}: {msg}", kwargs


class ZmqTransport:
    """Moves encoded messages between this node, its peers and clients.

    Args:
        node_id: this node's id; it is the sender of every peer frame it sends.
        cluster_id: frames from another cluster are refused.
        bind: ZeroMQ endpoint to bind the ROUTER at, e.g. "tcp://127.0.0.1:7001".
        peers: node id -> endpoint of every other node (this node's own entry is ignored).
            Frames from ids not listed are refused.
        on_peer_message: called on the I/O thread with each valid inbound peer message.
        on_client_request: called on the I/O thread with (client routing identity, request);
            pass the identity back to `reply_client`.
        on_fatal: called once, on the I/O thread, if the I/O thread dies of an unexpected
            exception (after its sockets are closed). The node should stop.
        max_frame_bytes: largest frame sent or accepted; libzmq itself refuses bigger
            inbound frames (ZMQ_MAXMSGSIZE) by closing the connection.
        sndhwm, rcvhwm: ZeroMQ high-water marks, in frames. A full outbound queue drops
            (Raft retries); a full inbound queue pushes back on the TCP sender.
        fault_rules: fault injection, consulted per message on send and on receive.
        heartbeat_ivl_ms, heartbeat_timeout_ms: ZMTP heartbeats that close hung links.
        reconnect_ivl_ms, reconnect_ivl_max_ms: reconnection back-off to peers. The cap is
            short because a restarted follower hears nothing from its leader until the
            leader's link to it reconnects: with a 2 s cap that was up to 2 s of its
            catch-up (bench --snapshots, follower part); a retry every 0.5 s costs little.
        context: a ZeroMQ context to share; by default the transport makes and ends its own.
        max_queued: sends waiting for the I/O thread beyond this many are dropped (counted
            as "queue_overflow").
        on_client_batch: if given, receives all requests of one client frame at once
            (identity, [msg, ...]) instead of `on_client_request` per message, so the node
            can register a pipelining client's requests in one go.
        security: Curve keys and trust; None is plaintext (``insecure = true``), which lets
            anyone who reaches the port forge frames.
    """

    def __init__(
        self,
        node_id: int,
        cluster_id: str,
        bind: str,
        peers: Mapping[int, str],
        on_peer_message: Callable[[Any], None],
        on_client_request: Callable[[bytes, Any], None],
        *,
        on_fatal: Callable[[BaseException], None] | None = None,
        max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES,
        sndhwm: int = 10_000,
        rcvhwm: int = 10_000,
        fault_rules: FaultRules | None = None,
        heartbeat_ivl_ms: int = 1000,
        heartbeat_timeout_ms: int = 5000,
        reconnect_ivl_ms: int = 100,
        reconnect_ivl_max_ms: int = 500,
        context: zmq.Context | None = None,
        max_queued: int = 100_000,
        on_client_batch: Callable[[bytes, list], None] | None = None,
        security: TransportSecurity | None = None,
    ) -> None:
        self.node_id = node_id
        self.cluster_id = cluster_id
        self.bind_address = bind
        self.peers = {int(p): a for p, a in peers.items() if int(p) != node_id}
        self.faults = fault_rules if fault_rules is not None else FaultRules()
        self.max_frame_bytes = max_frame_bytes
        self._on_peer_message = on_peer_message
        self._on_client_request = on_client_request
        self._on_client_batch = on_client_batch
        self._on_fatal = on_fatal
        self._security = security
        self._auth: NodeAuthenticator | None = None
        self._sndhwm, self._rcvhwm = sndhwm, rcvhwm
        self._receiving: int | None = None
        """The I/O thread's ident while it runs receive callbacks, else None."""
        self._heartbeat = (heartbeat_ivl_ms, heartbeat_timeout_ms)
        self._reconnect = (reconnect_ivl_ms, reconnect_ivl_max_ms)
        self._own_ctx = context is None
        self._ctx = context
        self._log = _NodeLog(_log, node_id)
        self._frame_budget = max_frame_bytes - frame_overhead(cluster_id)

        # Shared between threads: the work queue (deque ops are atomic) and the wake pipe.
        self._queue: deque[tuple] = deque()
        self._max_queued = max_queued
        self._queue_overflow = 0
        self._wake_lock = threading.Lock()
        self._wake_pending = False
        self._wake_r: int | None = None
        self._wake_w: int | None = None
        self._state_lock = threading.Lock()
        self._state = "new"  # new -> running -> stopped
        self._stopping = False
        self._thread: threading.Thread | None = None
        self._started = threading.Event()
        self._start_error: BaseException | None = None
        self.fatal_error: BaseException | None = None
        self.address: str | None = None
        """The endpoint actually bound (resolves a "tcp://host:*" wildcard), once started."""

        # Owned by the I/O thread.
        self._router: zmq.Socket | None = None
        self._monitor: zmq.Socket | None = None
        self._dealers: dict[int, zmq.Socket] = {}
        self._dealer_monitors: dict[zmq.Socket, int] = {}
        self._poller: zmq.Poller | None = None
        self._server_keys: dict[int, bytes] = {}
        self._links_up: dict[int, bool] = dict.fromkeys(self.peers, False)
        self._delayed: list[tuple[float, int, int, bytes]] = []
        self._delay_seq = itertools.count()
        self._last_warn: dict[str, float] = {}
        self._suppressed: dict[str, int] = {}
        # Counters are written only by the I/O thread; stats() copies them (a dict copy
        # is atomic under the GIL).
        self._counts = dict.fromkeys(
            ("frames_in", "messages_in", "frames_out", "messages_out", "client_requests",
             "client_replies", "client_replies_dropped", "send_dropped", "outbound_oversized",
             "unknown_destination", "fault_dropped_out", "fault_dropped_in", "fault_delayed",
             "fault_dropped_client",
             "inbound_connections", "inbound_disconnects", "handshakes_failed"), 0)
        self._dropped = dict.fromkeys(DROP_REASONS, 0)

    # ----------------------------------------------------------------- lifecycle (any thread)

    def start(self) -> None:
        """Bind, connect and start the I/O thread. Raises if the bind fails."""
        with self._state_lock:
            if self._state != "new":
                raise RuntimeError("a transport can be started once")
            self._state = "running"
        if self._ctx is None:
            self._ctx = zmq.Context()
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)
        self._thread = threading.Thread(target=self._run, daemon=True,
                                        name=f"josefine-transport-{self.node_id}")
        self._thread.start()
        self._started.wait()
        if self._start_error is not None:
            self.stop()
            raise self._start_error
        self._log.info("listening at %s, %d peers", self.address, len(self.peers))

    def stop(self, timeout_s: float = 5.0) -> None:
        """Close every socket (linger 0: queued messages are dropped) and join the thread.

        Idempotent; safe after a failed start or a fatal error.
        """
        with self._state_lock:
            if self._state == "stopped":
                return
            self._state = "stopped"
        self._stopping = True
        self._wake()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():  # e.g. on_fatal
            thread.join(timeout_s)
            if thread.is_alive():  # NB: leak rather than close sockets under its feet
                self._log.error("I/O thread did not stop within %.1f s", timeout_s)
                return
        with self._wake_lock:
            for fd in (self._wake_r, self._wake_w):
                if fd is not None:
                    os.close(fd)
            self._wake_r = self._wake_w = None
        if self._own_ctx and self._ctx is not None:
            self._ctx.term()
            self._ctx = None

    @property
    def running(self) -> bool:
        """True while the I/O thread runs (False before start, after stop or a fatal error)."""
        t = self._thread
        return t is not None and t.is_alive() and not self._stopping

    # ------------------------------------------------------------------ sending (any thread)

    def send(self, msgs_by_peer: Mapping[int, Iterable[Any]]) -> None:
        """Queue messages for several peers; see `send_peer`."""
        for dst, msgs in msgs_by_peer.items():
            self.send_peer(dst, msgs)

    def send_peer(self, dst: int, msgs: Iterable[Any]) -> None:
        """Queue peer messages for `dst`. Thread-safe, never blocks, never raises for network
        trouble: delivery is best effort (loss is counted in `stats`).

        Messages are encoded here, on the caller's thread.

        Raises:
            CodecError: a message cannot be encoded (a bug in the caller).
        """
        blobs = [encode_message(m) for m in msgs]
        if blobs and self._accepting(len(blobs)):
            self._queue.append((_PEER_ITEM, dst, blobs))
            self._wake()

    def reply_client(self, identity: bytes, msg: Any) -> None:
        """Queue a reply to the client whose request arrived with `identity`.

        Thread-safe and non-blocking; a reply to a client that has gone is dropped silently.

        Raises:
            CodecError: `msg` cannot be encoded.
            TypeError: `identity` is not bytes.
        """
        if type(identity) is not bytes:
            raise TypeError(f"identity must be bytes, got {type(identity).__name__}")
        frame = encode_client_frame(self.cluster_id, [msg])
        if self._accepting(1):
            self._queue.append((_CLIENT_ITEM, identity, frame))
            self._wake()

    def reply_client_many(self, identity: bytes, msgs: list[Any]) -> None:
        """Like `reply_client` for several replies to one client: ONE frame carries them all
        (a pipelining client gets its answers in as few frames as it sent requests)."""
        if type(identity) is not bytes:
            raise TypeError(f"identity must be bytes, got {type(identity).__name__}")
        if not msgs:
            return
        frame = encode_client_frame(self.cluster_id, msgs)
        if len(frame) > self.max_frame_bytes and len(msgs) > 1:
            half = len(msgs) // 2
            self.reply_client_many(identity, msgs[:half])
            self.reply_client_many(identity, msgs[half:])
            return
        if self._accepting(1):
            self._queue.append((_CLIENT_ITEM, identity, frame))
            self._wake()

    def set_trust(self, trust: TrustedKeys) -> None:
        """Replace the trusted keys (thread-safe): new handshakes and every later frame are
        judged by `trust`; links to peers whose server key changed are rebuilt."""
        sec = self._security
        if sec is None:
            raise RuntimeError("an insecure transport has no keys to trust")
        sec.trust = trust
        if self._auth is not None:
            self._auth.trust = trust
        if self._state == "running" and not self._stopping:
            self._queue.append((_TRUST_ITEM, None, None))
            self._wake()

    def set_peers(self, peers: Mapping[int, str]) -> None:
        """Replace the peer set (thread-safe): links to new peers are opened, links to
        peers no longer listed (or listed at another address) are closed, and frames from
        unlisted node ids are refused from then on. Applied by the I/O thread in order with
        the sends queued around it, so messages queued after this call reach a peer it
        adds. A secure transport opens a link only to a peer whose key it trusts; one
        without waits for `set_trust` (reload the keys before adding a node)."""
        new = {int(p): a for p, a in peers.items() if int(p) != self.node_id}
        with self._state_lock:
            if self._state == "new":
                self.peers = new
                self._links_up = dict.fromkeys(new, False)
                return
            if self._state != "running" or self._stopping:
                return
            self._queue.append((_PEERS_ITEM, new, None))
        self._wake()

    @property
    def secure(self) -> bool:
        return self._security is not None

    def _accepting(self, n: int) -> bool:
        if self._state != "running" or self._stopping:
            return False
        if len(self._queue) < self._max_queued:
            return True
        with self._wake_lock:  # rare: the I/O thread is far behind
            self._queue_overflow += n
        return False

    def peer_links(self) -> dict[int, bool]:
        """Peer id -> whether the outbound link is up (handshake done, not disconnected).

        Messages to a peer whose link is down are dropped at once (ZMQ_IMMEDIATE).
        """
        return self._links_up.copy()

    def stats(self) -> dict[str, Any]:
        """Counters since start: traffic, drops by reason, fault-injection effects."""
        out: dict[str, Any] = self._counts.copy()
        by_reason = self._dropped.copy()
        out["dropped_frames"] = sum(by_reason.values())
        out["dropped_by_reason"] = by_reason
        out["queued"] = len(self._queue)
        out["queue_overflow"] = self._queue_overflow
        out["delayed_pending"] = len(self._delayed)
        out["secure"] = self._security is not None
        out["handshakes_refused"] = self._auth.refused if self._auth is not None else 0
        return out

    def _wake(self) -> None:
        # One byte per wake-up at most: the I/O thread clears the flag after it drains, and
        # flushes the queue after that, so whatever was queued before the flag was seen set
        # is sent by that flush.
        if self._receiving == threading.get_ident():
            return   # on the I/O thread, inside a receive: the flush after it sends
        with self._wake_lock:
            if self._wake_pending or self._wake_w is None:
                return
            self._wake_pending = True
            try:
                os.write(self._wake_w, b"\0")
            except BlockingIOError:
                pass

    # ------------------------------------------------------------------------ the I/O thread

    def _run(self) -> None:
        try:
            self._open_sockets()
        except Exception as exc:
            self._start_error = exc
            self._close_sockets()
            self._started.set()
            return
        self._started.set()
        fatal: BaseException | None = None
        try:
            self._loop()
        except Exception as exc:
            fatal = exc
            self._log.critical("transport I/O thread failed: %r", exc, exc_info=True)
        finally:
            self._close_sockets()
        if fatal is not None:
            self.fatal_error = fatal
            self._stopping = True
            if self._on_fatal is not None:
                try:
                    self._on_fatal(fatal)
                except Exception:
                    self._log.exception("on_fatal callback raised")

    def _open_sockets(self) -> None:
        ctx = self._ctx
        assert ctx is not None
        hb_ivl, hb_timeout = self._heartbeat
        sec = self._security
        if sec is not None:
            # One ZAP handler per context; it must be up before the ROUTER binds.
            self._auth = NodeAuthenticator(ctx, sec.trust, self.node_id)
            self._auth.start()
        r = self._router = ctx.socket(zmq.ROUTER)
        if sec is not None:
            r.curve_secretkey = sec.pair.secret
            r.curve_publickey = sec.pair.public
            r.curve_server = True
            r.zap_domain = ZAP_DOMAIN.encode()
        r.setsockopt(zmq.LINGER, 0)
        r.setsockopt(zmq.SNDHWM, self._sndhwm)
        r.setsockopt(zmq.RCVHWM, self._rcvhwm)
        r.setsockopt(zmq.MAXMSGSIZE, self.max_frame_bytes)
        r.setsockopt(zmq.HEARTBEAT_IVL, hb_ivl)
        r.setsockopt(zmq.HEARTBEAT_TIMEOUT, hb_timeout)
        r.bind(self.bind_address)
        self.address = r.getsockopt_string(zmq.LAST_ENDPOINT)
        # libzmq does not say why it closed a connection (e.g. an oversized frame), so the
        # monitor can only count disconnections.
        self._monitor = r.get_monitor_socket(zmq.EVENT_ACCEPTED | zmq.EVENT_DISCONNECTED
                                             | _HANDSHAKE_FAILED)
        for peer in self.peers:
            self._open_dealer(peer)

    def _open_dealer(self, peer: int) -> zmq.Socket | None:
        ctx = self._ctx
        assert ctx is not None
        hb_ivl, hb_timeout = self._heartbeat
        address = self.peers[peer]
        sec = self._security
        if sec is not None and peer not in sec.trust.peers:
            self._warn(f"no_key:{peer}", "no trusted key for node %d: no link to it until "
                       "the keys are reloaded with its key in the cluster file", peer)
            return None
        d = ctx.socket(zmq.DEALER)
        self._dealers[peer] = d
        if sec is not None:
            self._server_keys[peer] = sec.trust.server_key(peer)
            apply_client_curve(d, sec.pair, self._server_keys[peer])
        d.setsockopt(zmq.LINGER, 0)
        d.setsockopt(zmq.SNDHWM, self._sndhwm)
        d.setsockopt(zmq.RCVHWM, 100)  # peers never answer on this link
        d.setsockopt(zmq.IMMEDIATE, 1)
        d.setsockopt(zmq.HEARTBEAT_IVL, hb_ivl)
        d.setsockopt(zmq.HEARTBEAT_TIMEOUT, hb_timeout)
        d.setsockopt(zmq.RECONNECT_IVL, self._reconnect[0])
        d.setsockopt(zmq.RECONNECT_IVL_MAX, self._reconnect[1])
        mon = d.get_monitor_socket(zmq.EVENT_HANDSHAKE_SUCCEEDED | zmq.EVENT_DISCONNECTED
                                   | _HANDSHAKE_FAILED)
        self._dealer_monitors[mon] = peer
        try:
            d.connect(address)
        except zmq.ZMQError as exc:   # e.g. a host that does not resolve: not fatal here
            self._warn(f"connect:{peer}", "cannot connect to node %d at %s: %s", peer,
                       address, exc)
        return mon

    def _close_dealer(self, peer: int) -> None:
        d = self._dealers.pop(peer)
        for mon, p in list(self._dealer_monitors.items()):
            if p == peer:
                del self._dealer_monitors[mon]
                if self._poller is not None:
                    self._poller.unregister(mon)
                try:
                    d.disable_monitor()
                except zmq.ZMQError:
                    pass
                mon.close(linger=0)
        d.close(linger=0)
        self._links_up[peer] = False

    def _apply_trust(self) -> None:
        """Rebuild the links to peers whose server key changed (a rotated node key), and
        open those to peers that had no trusted key until now."""
        sec = self._security
        assert sec is not None
        for peer in list(self._dealers):
            want = sec.trust.peers.get(peer, (None,))[0]
            if self._server_keys.get(peer) != want:
                self._log.info("node %d's key changed: reconnecting with its new key", peer)
                self._close_dealer(peer)
                self._register(self._open_dealer(peer))
        for peer in self.peers:
            if peer not in self._dealers:
                self._register(self._open_dealer(peer))

    def _register(self, mon: zmq.Socket | None) -> None:
        if mon is not None and self._poller is not None:
            self._poller.register(mon, zmq.POLLIN)

    def _apply_peers(self, new: dict[int, str]) -> None:
        """`set_peers`, on the I/O thread."""
        old = self.peers
        for peer in list(self._dealers):
            if new.get(peer) != old.get(peer):
                self._close_dealer(peer)
        self.peers = new
        for peer in [p for p in self._links_up if p not in new]:
            del self._links_up[peer]
        for peer in new:
            self._links_up.setdefault(peer, False)
            if peer not in self._dealers:
                self._register(self._open_dealer(peer))
        added, removed = sorted(new.keys() - old.keys()), sorted(old.keys() - new.keys())
        if added or removed:
            self._log.info("peers now %s (added %s, removed %s)", sorted(new), added, removed)

    def _close_sockets(self) -> None:
        monitored = [(self._router, self._monitor)]
        monitored += [(self._dealers[p], m) for m, p in self._dealer_monitors.items()]
        for sock, monitor in monitored:
            if sock is not None and monitor is not None:
                try:
                    sock.disable_monitor()
                except zmq.ZMQError:
                    pass
                monitor.close(linger=0)
        for sock in (self._router, *self._dealers.values()):
            if sock is not None:
                sock.close(linger=0)
        self._router = self._monitor = None
        self._dealers = {}
        self._dealer_monitors = {}
        self._links_up = dict.fromkeys(self.peers, False)
        if self._auth is not None:
            self._auth.stop()
            self._auth = None

    def _loop(self) -> None:
        router, monitor, wake_r = self._router, self._monitor, self._wake_r
        poller = self._poller = zmq.Poller()
        poller.register(router, zmq.POLLIN)
        poller.register(monitor, zmq.POLLIN)
        poller.register(wake_r, zmq.POLLIN)
        dealer_monitors = self._dealer_monitors
        for mon in dealer_monitors:
            poller.register(mon, zmq.POLLIN)
        while not self._stopping:
            timeout = None
            if self._delayed:
                timeout = max(0, math.ceil((self._delayed[0][0] - time.monotonic()) * 1000))
            events = dict(poller.poll(timeout))
            if self._stopping:
                break
            if router in events:
                # Sends queued by what runs during the receive (the role actor's state may
                # be stepped right here) are flushed below: they need no wake-up byte.
                self._receiving = threading.get_ident()
                try:
                    self._receive_some()
                finally:
                    self._receiving = None
            if monitor in events:
                self._drain_monitor()
            for mon, peer in list(dealer_monitors.items()):
                if mon in events:
                    self._drain_dealer_monitor(mon, peer)
            self._drain_wake()
            self._flush_outbound()

    def _drain_wake(self) -> None:
        # Empty the pipe first, then clear the flag. The other order loses wake-ups: a
        # sender that sets the flag and writes its byte between the two steps has that byte
        # read here, leaving the flag set over an empty pipe, so every later `_wake` (stop()'s
        # included) skipped its write and the thread slept in poll with work queued. Seen as
        # a CI failure: 2,000 queued heartbeats never sent, and stop() timing out.
        wake_r = self._wake_r
        assert wake_r is not None, "the pipe lives from start() until the I/O thread ends"
        try:
            while os.read(wake_r, 4096):
                pass
        except BlockingIOError:
            pass
        with self._wake_lock:
            self._wake_pending = False

    # ------------------------------------------------------------------------------ inbound

    def _receive_some(self) -> None:
        router = self._router
        assert router is not None, "sockets are open while the I/O loop runs"
        if self._security is not None:
            for _ in range(_RECV_BATCH):
                try:
                    frames = router.recv_multipart(zmq.NOBLOCK, copy=False)
                except zmq.Again:
                    return
                # The ZAP handler set each connection's User-Id to its Curve key.
                self._handle_frame([f.bytes for f in frames], str(frames[-1].get("User-Id")))
            return
        for _ in range(_RECV_BATCH):
            try:
                parts = router.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            self._handle_frame(parts)

    def _handle_frame(self, parts: list[bytes], user: str | None = None) -> None:
        if len(parts) != 2:
            self._drop("malformed", "expected 1 frame part, got %d", len(parts) - 1)
            return
        identity, data = parts
        try:
            sender, msgs = decode_frame(data, self.cluster_id, self.max_frame_bytes)
        except CodecError as exc:
            self._drop(exc.reason, "%s", exc)
            return
        counts = self._counts
        sec = self._security
        if sender is None:
            for m in msgs:
                if type(m) not in _CLIENT_REQUESTS:
                    self._drop("unexpected_message", "%s from a client", type(m).__name__)
                    return
            if sec is not None:
                msgs = self._authorize_client(sec, user, identity, msgs)
                if not msgs:
                    return
            counts["client_requests"] += len(msgs)
            if self._on_client_batch is not None:
                self._on_client_batch(identity, msgs)
                return
            for m in msgs:
                self._on_client_request(identity, m)
            return
        if sender not in self.peers:
            self._drop("unknown_sender", "frame from unknown node %d", sender)
            return
        if sec is not None and not self._authorize_peer(sec, user, sender):
            return
        for m in msgs:
            if m.dst != self.node_id:
                self._drop("wrong_destination", "%s for node %d", type(m).__name__, m.dst)
                return
        counts["frames_in"] += 1
        faults = self.faults
        for m in msgs:
            if faults.active and not faults.inbound(sender):
                counts["fault_dropped_in"] += 1
                continue
            counts["messages_in"] += 1
            self._on_peer_message(m)

    def _role(self, sec: TransportSecurity, user: str | None) -> tuple[KeyRole, int | None] | None:
        role = sec.trust.role_of(user.encode("ascii")) if user else None
        if role is None:
            self._drop("untrusted_key", "frame from key %s, which is not trusted (any more)",
                       user)
        return role

    def _authorize_peer(self, sec: TransportSecurity, user: str | None, sender: int) -> bool:
        """A peer frame must come from the key bound to the node id it claims."""
        role = self._role(sec, user)
        if role is None:
            return False
        kind, key_node = role
        if kind is not KeyRole.PEER:
            self._drop("unauthorized", "peer frame claiming node %d from a %s key", sender,
                       kind.value)
            return False
        if key_node != sender:
            self._drop("impersonation", "frame claims node %d but node %d's key sent it",
                       sender, key_node)
            return False
        return True

    def _authorize_client(self, sec: TransportSecurity, user: str | None, identity: bytes,
                          msgs: list) -> list:
        """Client frames need a client or admin key; admin requests an admin key."""
        role = self._role(sec, user)
        if role is None:
            return []
        if role[0] is KeyRole.PEER:
            self._drop("unauthorized", "client frame from node %d's key", role[1])
            return []
        if role[0] is KeyRole.CLIENT:
            return self._refuse_admin(identity, msgs)
        return msgs

    def _refuse_admin(self, identity: bytes, msgs: list) -> list:
        """Answer admin requests sent with a plain client key; return the rest."""
        kept = []
        for m in msgs:
            if type(m) in _ADMIN_ONLY:
                self._drop("unauthorized", "%s from a client key (admin key required)",
                           type(m).__name__)
                self._send_client(identity, encode_client_frame(self.cluster_id, [
                    ClientAdminResp(client_id=m.client_id, read_id=m.read_id, ok=False,
                                    error="admin key required")]))
            else:
                kept.append(m)
        return kept

    def _drain_monitor(self) -> None:
        monitor = self._monitor
        assert monitor is not None, "sockets are open while the I/O loop runs"
        while True:
            try:
                event = parse_monitor_message(monitor.recv_multipart(zmq.NOBLOCK))
            except zmq.Again:
                return
            if event["event"] == zmq.EVENT_ACCEPTED:
                self._counts["inbound_connections"] += 1
            elif event["event"] == zmq.EVENT_DISCONNECTED:
                self._counts["inbound_disconnects"] += 1
            elif event["event"] & _HANDSHAKE_FAILED:
                self._counts["handshakes_failed"] += 1
                self._warn("handshake", "refused a connection from %s: %s", event["endpoint"],
                           self._handshake_why(event))

    def _drain_dealer_monitor(self, mon: zmq.Socket, peer: int) -> None:
        while True:
            try:
                event = parse_monitor_message(mon.recv_multipart(zmq.NOBLOCK))
            except zmq.Again:
                return
            if event["event"] & _HANDSHAKE_FAILED:
                self._warn(f"handshake:{peer}", "handshake with node %d at %s failed: %s",
                           peer, self.peers[peer], self._handshake_why(event))
                continue
            up = event["event"] == zmq.EVENT_HANDSHAKE_SUCCEEDED
            if up != self._links_up[peer]:
                self._links_up[peer] = up
                self._log.info("link to node %d %s", peer, "up" if up else "down")

    def _handshake_why(self, event: Any) -> str:
        if event["event"] == zmq.EVENT_HANDSHAKE_FAILED_AUTH:
            return "its key is not trusted (or it does not trust ours)"
        mine = "Curve" if self._security is not None else "plaintext (insecure = true)"
        return (f"security mismatch or protocol error; this node uses {mine}: are some nodes "
                "insecure and others not? All nodes of a cluster must agree")

    def _drop(self, reason: str, fmt: str, *args: Any) -> None:
        self._dropped[reason] += 1
        self._warn(reason, "dropped inbound frame (" + reason + "): " + fmt, *args)

    def _warn(self, key: str, fmt: str, *args: Any) -> None:
        now = time.monotonic()
        if now - self._last_warn.get(key, -math.inf) < WARN_INTERVAL_S:
            self._suppressed[key] = self._suppressed.get(key, 0) + 1
            return
        self._last_warn[key] = now
        n = self._suppressed.pop(key, 0)
        if n:
            fmt += " (%d more like this since the last warning)"
            args = (*args, n)
        self._log.warning(fmt, *args)

    # ----------------------------------------------------------------------------- outbound

    def _flush_outbound(self) -> None:
        """Send everything queued or due, one frame per peer where it fits (batching)."""
        now = time.monotonic()
        ready: dict[int, list[bytes]] = {}
        faults, counts, queue = self.faults, self._counts, self._queue
        for _ in range(len(queue)):  # items queued meanwhile wait for the next turn
            item = queue.popleft()
            if item[0] is _TRUST_ITEM:
                self._apply_trust()
                continue
            if item[0] is _PEERS_ITEM:
                self._apply_peers(item[1])
                continue
            if item[0] is _CLIENT_ITEM:
                self._send_client(item[1], item[2])
                continue
            _, dst, blobs = item
            if dst not in self._dealers:
                counts["unknown_destination"] += len(blobs)
                self._warn("unknown_destination", "dropped %d messages to unknown node %r",
                           len(blobs), dst)
                continue
            if not faults.active:
                ready.setdefault(dst, []).extend(blobs)
                continue
            for blob in blobs:
                delay = faults.outbound(dst)
                if delay is None:
                    counts["fault_dropped_out"] += 1
                elif delay > 0:
                    counts["fault_delayed"] += 1
                    heapq.heappush(self._delayed, (now + delay, next(self._delay_seq), dst, blob))
                else:
                    ready.setdefault(dst, []).append(blob)
        delayed = self._delayed
        while delayed and delayed[0][0] <= now:
            _, _, dst, blob = heapq.heappop(delayed)
            ready.setdefault(dst, []).append(blob)
        for dst, blobs in ready.items():
            self._send_to_peer(dst, blobs)

    def _send_to_peer(self, dst: int, blobs: list[bytes]) -> None:
        budget = self._frame_budget
        batch: list[bytes] = []
        used = 0
        for blob in blobs:
            cost = len(blob) + FRAME_ITEM_OVERHEAD
            if cost > budget:
                self._counts["outbound_oversized"] += 1
                self._warn("outbound_oversized", "dropped a %d-byte message to node %d: "
                           "over max_frame_bytes", len(blob), dst)
                continue
            if batch and used + cost > budget:
                self._send_frame(dst, batch)
                batch, used = [], 0
            batch.append(blob)
            used += cost
        if batch:
            self._send_frame(dst, batch)

    def _send_frame(self, dst: int, batch: list[bytes]) -> None:
        d = self._dealers.get(dst)
        if d is None:   # a delayed message to a peer removed meanwhile
            self._counts["unknown_destination"] += len(batch)
            return
        frame = encode_frame(self.cluster_id, self.node_id, batch)
        try:
            d.send(frame, zmq.NOBLOCK)
        except zmq.Again:
            self._counts["send_dropped"] += len(batch)
            self._warn(f"send_dropped:{dst}", "node %d unreachable or its queue is full; "
                       "dropped %d messages", dst, len(batch))
            return
        self._counts["frames_out"] += 1
        self._counts["messages_out"] += len(batch)

    def _send_client(self, identity: bytes, frame: bytes) -> None:
        faults = self.faults
        if faults.active and not faults.client_reply():
            self._counts["fault_dropped_client"] += 1
            return
        router = self._router
        assert router is not None, "sockets are open while the I/O loop runs"
        try:
            router.send_multipart([identity, frame], zmq.NOBLOCK)
        except zmq.Again:
            self._counts["client_replies_dropped"] += 1
            return
        self._counts["client_replies"] += 1
