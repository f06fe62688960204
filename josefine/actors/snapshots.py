"""Snapshot transfer actor: streams snapshot files to followers and receives them (A.14).

The leader's core asks for a snapshot to be sent with an `InstallSnapshot`; this actor
streams the file whose base it names as `SnapshotChunk`s, a window of chunks in flight,
each acknowledged by the receiver's `SnapshotChunkAck` (the offset it expects next). The
receiving actor writes the bytes to a temp file, and only when the last chunk has
arrived, the whole file verifies (chunk CRCs, body SHA-256, header: this cluster, this
base and digest), and it is fsynced, renamed and its directory fsynced, does it hand the
core the `InstallSnapshot`, with the membership the snapshot's body header records (A.12);
the core's answer then leaves only after the base and head are durable too (the Ready
contract). The raw file travels, not the state: the receiver
checks exactly what the sender's disk holds.

Interruptions restart cleanly: a chunk at offset 0 starts a transfer over (and throws the
old temp file away), a chunk at any other unexpected offset is answered with the offset
the receiver wants, two such answers in a row make the sender rewind there, and a sender
that hears nothing for `stall_s` rewinds to the last acknowledged offset, giving up after
`give_up_s` (the core then probes again, A.14). Temp files carry a `.recv` suffix that the
snapshot directory's pruning never touches, and are deleted at start and stop.
"""
from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, cast

from josefine.actors.base import NodeActor
from josefine.fsm.applier import read_snapshot_header
from josefine.messages import (InstallSnapshot, SnapshotChunk, SnapshotChunkAck,
                               SnapshotStatus)
from josefine.runtime.snapshots import SnapshotStats
from josefine.snapshot.files import (CorruptSnapshotError, SnapshotReader, fsync_dir,
                                     name_for)
from josefine.types import BlockId

log = logging.getLogger(__name__)

RECV_SUFFIX = ".recv"


@dataclass(frozen=True, slots=True)
class _Check:
    """Periodic timeout check (from this actor's own timer thread)."""


@dataclass
class _Out:
    peer: int
    term: int
    last: BlockId
    digest: bytes
    file: BinaryIO
    size: int
    sent: int = 0
    acked: int = 0
    dups: int = 0
    progress_at: float = field(default_factory=time.monotonic)


@dataclass
class _In:
    src: int
    last: BlockId
    path: Path
    file: BinaryIO
    expected: int = 0
    progress_at: float = field(default_factory=time.monotonic)


class SnapshotActor(NodeActor):
    def __init__(self, node_id: int, links: Any, fatal: Callable[[str, BaseException], None],
                 directory: Path, cluster_id: str, deliver: Callable[[InstallSnapshot], None],
                 *, chunk_size: int = 256 * 1024, window: int = 4, stall_s: float = 2.0,
                 give_up_s: float = 20.0, stats: SnapshotStats | None = None) -> None:
        super().__init__(node_id, links, fatal)
        self.directory = directory
        self.cluster_id = cluster_id
        self.deliver = deliver
        self.chunk_size = chunk_size
        self.window = window
        self.stall_s = stall_s
        self.give_up_s = give_up_s
        self.outgoing: dict[int, _Out] = {}
        self.incoming: dict[int, _In] = {}
        self.stats = stats if stats is not None else SnapshotStats()
        self._timer: threading.Timer | None = None

    # ------------------------------------------------------------------ lifecycle
    def on_start(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        for p in self.directory.glob(f"*{RECV_SUFFIX}*"):
            p.unlink(missing_ok=True)   # transfers a crash interrupted
        self._arm()

    def on_stop(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        for o in self.outgoing.values():
            o.file.close()
        for i in self.incoming.values():
            i.file.close()
            i.path.unlink(missing_ok=True)
        self.outgoing.clear()
        self.incoming.clear()

    def _arm(self) -> None:
        def fire() -> None:
            self.tell(self.actor_ref, _Check())
        self._timer = threading.Timer(min(1.0, self.stall_s / 2), fire)
        self._timer.daemon = True
        self._timer.start()

    def on_receive(self, message: Any) -> None:
        t = type(message)
        if t is SnapshotChunk:
            self._on_chunk(message)
        elif t is SnapshotChunkAck:
            self._on_ack(message)
        elif t is InstallSnapshot:
            self._start_send(message)
        elif t is _Check:
            self._check()
            self._arm()
        else:
            log.warning("node %d: snapshot actor ignored %r", self.node_id, message)

    # ------------------------------------------------------------------ sending
    def _start_send(self, m: InstallSnapshot) -> None:
        o = self.outgoing.get(m.dst)
        if o is not None:
            if o.last == m.last:
                o.term = m.term
                return   # already on its way
            o.file.close()
        path = self.directory / name_for(m.last)
        try:
            f = open(path, "rb")   # held open: a prune may unlink the name meanwhile
        except OSError as exc:
            log.error("node %d: cannot send snapshot %s to node %d: %s", self.node_id,
                      m.last, m.dst, exc)
            self._report(m.dst, m.last, False)
            return
        size = os.fstat(f.fileno()).st_size
        o = _Out(m.dst, m.term, m.last, m.last_digest, f, size)
        self.outgoing[m.dst] = o
        log.info("node %d: sending snapshot %s (%d bytes) to node %d", self.node_id, m.last,
                 size, m.dst)
        self._pump(o)

    def _pump(self, o: _Out) -> None:
        out = []
        limit = o.acked + self.window * self.chunk_size
        while o.sent < o.size and o.sent < limit:
            data = os.pread(o.file.fileno(), min(self.chunk_size, o.size - o.sent), o.sent)
            if not data:
                break
            out.append(SnapshotChunk(src=self.node_id, dst=o.peer, term=o.term, last=o.last,
                                     last_digest=o.digest, offset=o.sent, data=data,
                                     done=o.sent + len(data) >= o.size))
            o.sent += len(data)
        if out:
            self.links.send_msgs(out)

    def _on_ack(self, a: SnapshotChunkAck) -> None:
        o = self.outgoing.get(a.src)
        if o is None or o.last != a.last:
            return
        if not a.ok:
            log.warning("node %d: node %d refused snapshot %s", self.node_id, a.src, a.last)
            self._finish_send(o, False)
            return
        if a.offset > o.acked:
            o.acked, o.dups = a.offset, 0
            o.progress_at = time.monotonic()
        elif a.offset < o.sent:
            o.dups += 1
            if o.dups >= 2:   # the receiver lost our place: go back to its
                o.sent, o.acked, o.dups = a.offset, a.offset, 0
        if o.acked >= o.size:
            self.stats.sent += 1
            self._finish_send(o, True)
            return
        self._pump(o)

    def _finish_send(self, o: _Out, ok: bool) -> None:
        o.file.close()
        self.outgoing.pop(o.peer, None)
        if not ok:
            self.stats.transfer_failures += 1
        self._report(o.peer, o.last, ok)

    def _report(self, peer: int, last: BlockId, ok: bool) -> None:
        self.tell(self.links.role, SnapshotStatus(peer=peer, last=last, ok=ok))

    def _check(self) -> None:
        now = time.monotonic()
        for o in list(self.outgoing.values()):
            idle = now - o.progress_at
            if idle >= self.give_up_s:
                log.warning("node %d: snapshot %s to node %d made no progress for %.0f s; "
                            "giving up", self.node_id, o.last, o.peer, idle)
                self._finish_send(o, False)
            elif idle >= self.stall_s and o.sent > o.acked:
                o.sent = o.acked   # resend what is unacknowledged
                self._pump(o)
        for i in list(self.incoming.values()):
            if now - i.progress_at >= 3 * self.give_up_s:
                self._drop_incoming(i)

    # ------------------------------------------------------------------ receiving
    def _ack(self, c: SnapshotChunk, offset: int, ok: bool = True) -> None:
        self.links.send_msgs([SnapshotChunkAck(src=self.node_id, dst=c.src, term=c.term,
                                               last=c.last, offset=offset, ok=ok)])

    def _drop_incoming(self, i: _In) -> None:
        i.file.close()
        i.path.unlink(missing_ok=True)
        self.incoming.pop(i.src, None)

    def _on_chunk(self, c: SnapshotChunk) -> None:
        i = self.incoming.get(c.src)
        if c.offset == 0:
            if i is not None:
                self._drop_incoming(i)
            path = self.directory / f"{name_for(c.last)}{RECV_SUFFIX}-{c.src}"
            i = _In(c.src, c.last, path, open(path, "wb"))
            self.incoming[c.src] = i
        elif i is None or i.last != c.last or c.offset != i.expected:
            # Not the piece we expect: tell the sender where we are (0: start over).
            want = i.expected if i is not None and i.last == c.last else 0
            self._ack(c, want)
            return
        i.file.write(c.data)
        i.expected += len(c.data)
        i.progress_at = time.monotonic()
        if not c.done:
            self._ack(c, i.expected)
            return
        self.incoming.pop(c.src, None)
        try:
            self._commit(i, c)
        except (CorruptSnapshotError, OSError) as exc:
            self.stats.transfer_failures += 1
            log.error("node %d: snapshot %s from node %d is unusable: %s", self.node_id,
                      c.last, c.src, exc)
            i.path.unlink(missing_ok=True)
            self._ack(c, 0, ok=False)
            return
        self.stats.received += 1
        self._ack(c, i.expected)

    def _commit(self, i: _In, c: SnapshotChunk) -> None:
        """Verify the received file and make it durable under its final name; then the
        core may install it."""
        i.file.flush()
        os.fsync(i.file.fileno())
        i.file.close()
        with SnapshotReader(i.path) as r:
            info = r.verify()
        m = info.meta
        if m.cluster_id != self.cluster_id or m.base != c.last or m.base_digest != c.last_digest:
            raise CorruptSnapshotError(i.path, f"header says cluster {m.cluster_id!r}, base "
                                       f"{m.base}; expected {self.cluster_id!r}, {c.last}")
        members = None
        try:
            with SnapshotReader(i.path) as r:
                members = read_snapshot_header(cast(BinaryIO, r)).members   # reads like a file
        except ValueError as exc:   # the file verified: restoring it will say what is wrong
            log.warning("node %d: snapshot %s: cannot read its membership: %s", self.node_id,
                        c.last, exc)
        final = self.directory / name_for(c.last)
        os.rename(i.path, final)
        fsync_dir(self.directory)
        log.info("node %d: received snapshot %s (%d bytes) from node %d", self.node_id,
                 c.last, i.expected, c.src)
        self.deliver(InstallSnapshot(src=c.src, dst=self.node_id, term=c.term, last=c.last,
                                     last_digest=c.last_digest,
                                     voters=tuple(sorted(m.voters)), config=members))
