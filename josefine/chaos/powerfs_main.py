"""The power-loss filesystem process: a FUSE passthrough that keeps unsynced data in memory.

Run by `josefine.chaos.powerfs.PowerLossFS.mount` (see docs/powerloss.md), not by hand:

    python -m josefine.chaos.powerfs_main BACKING MOUNTPOINT --control SOCKET

Why a filesystem of our own: on a real machine a killed process loses nothing it had
written, because the kernel's page cache still holds it; only a power cut loses what was
never fsynced. To prove that the node fsyncs what it must (LevelDB batches written with
``sync=True``, snapshot files and their renames), the chaos harness needs a disk that
really forgets. Here the "page cache" is this process's memory: a write lands in a
per-file set of dirty 4 KiB pages and reaches the backing file only when that file is
fsynced (or fdatasynced). "cut" on the control socket drops every dirty page at once.

Names (create, mkdir, rename, unlink, rmdir) are applied to the backing directory at
once. By default they are also durable at once: weaker than a real disk, where a new
name needs an fsync of its directory. With ``--strict-dirs`` each name change is
journalled with its undo until a directory it touched is fsynced, and a cut undoes the
rest, newest first; ``--strict-dir REL`` does that only for changes inside the subtree REL
(relative to the mount root), e.g. a snapshot directory next to a LevelDB one (unlinked and replaced files wait in a hidden graveyard directory so
they can come back). Size changes (truncate, ftruncate, O_TRUNC) are data: they are held
with the pages and lost in a cut like a write. chmod, chown and utimes pass through.

Every handler is one synchronous run of Python between awaits, so no request ever sees a
half-applied write or a half-done cut.
"""
from __future__ import annotations

import argparse
import errno
import json
import os
import signal
import socket
import stat
import shutil
import sys
from dataclasses import dataclass, field
from typing import Callable, Sequence

import pyfuse3
import trio

PAGE = 4096
GRAVEYARD = b".powerfs-graveyard"    # strict mode: removed names wait here, in the backing root


@dataclass
class _Dirty:
    """A file's unsynced state; the backing file is the durable one.

    ``low`` is the smallest size the file has had since its last sync: backing bytes at
    or past it were cut off by a truncate and must read as zeros even if the file has
    grown again since.
    """

    size: int
    low: int
    pages: dict[int, bytearray] = field(default_factory=dict)


@dataclass
class _NameChange:
    """A name change not yet durable: an fsync of any directory in ``dirs`` commits it."""

    dirs: frozenset[int]
    undo: Callable[[], None]
    commit: Callable[[], None] = lambda: None


def _fail(exc: OSError) -> pyfuse3.FUSEError:
    return pyfuse3.FUSEError(exc.errno or errno.EIO)


class PowerLossOps(pyfuse3.Operations):
    """Passthrough to ``backing`` with a page cache that only fsync empties."""

    supports_dot_lookup = False     # never resolve ".." above the backing directory
    enable_writeback_cache = False  # every write(2) must reach us, not sit in the kernel

    def __init__(self, backing: str, strict_dirs: bool | Sequence[str] = False) -> None:
        super().__init__()
        root = os.fsencode(os.path.abspath(backing))
        st = os.lstat(root)
        # Our own inode numbers: the backing inode numbers might collide with ROOT_INODE.
        self._ino: dict[tuple[int, int], int] = {(st.st_dev, st.st_ino): pyfuse3.ROOT_INODE}
        self._path: dict[int, bytes] = {pyfuse3.ROOT_INODE: root}
        self._next_ino = pyfuse3.ROOT_INODE + 1
        self._fd: dict[int, int] = {}      # backing fd per open or dirty regular file
        self._opens: dict[int, int] = {}
        self._dirty: dict[int, _Dirty] = {}
        self.cuts = 0
        self.syncs = 0
        self.discarded = 0                 # dirty bytes dropped by cuts, all cuts together
        # True: every directory is strict; a sequence: the subtrees under these relative
        # paths are; empty: none (names durable at once).
        self._strict_all = strict_dirs is True
        self._strict_roots = ([] if isinstance(strict_dirs, bool) else
                              [os.path.join(root, os.fsencode(d).strip(b"/"))
                               for d in strict_dirs])
        self.strict_dirs = self._strict_all or bool(self._strict_roots)
        self._journal: list[_NameChange] = []
        self.undo_failed = 0               # undos that found the names changed under them
        self._grave = os.path.join(root, GRAVEYARD)
        self._graves = 0
        if strict_dirs:
            # One left by a process that died is beyond undoing: treat it as committed.
            shutil.rmtree(self._grave, ignore_errors=True)
            os.mkdir(self._grave)

    # ------------------------------------------------------------------ inodes

    def _remember(self, path: bytes, st: os.stat_result) -> int:
        key = (st.st_dev, st.st_ino)
        ino = self._ino.get(key)
        if ino is None:
            ino = self._ino[key] = self._next_ino
            self._next_ino += 1
        self._path[ino] = path
        return ino

    def _child(self, parent: int, name: bytes) -> bytes:
        return os.path.join(self._path[parent], name)

    def _attrs(self, ino: int, st: os.stat_result) -> pyfuse3.EntryAttributes:
        e = pyfuse3.EntryAttributes()
        e.st_ino = ino
        # No kernel-side caching of names or attributes: after a cut the sizes change
        # under the kernel's feet, and the next stat must ask us.
        e.entry_timeout = 0
        e.attr_timeout = 0
        e.st_mode = st.st_mode
        e.st_nlink = st.st_nlink
        e.st_uid = st.st_uid
        e.st_gid = st.st_gid
        e.st_rdev = st.st_rdev
        d = self._dirty.get(ino)
        e.st_size = st.st_size if d is None else d.size
        e.st_blksize = st.st_blksize
        e.st_blocks = st.st_blocks if d is None else (d.size + 511) // 512
        e.st_atime_ns = st.st_atime_ns
        e.st_mtime_ns = st.st_mtime_ns
        e.st_ctime_ns = st.st_ctime_ns
        return e

    def _stat(self, ino: int) -> os.stat_result:
        fd = self._fd.get(ino)
        try:
            # An open file may have been unlinked: its fd still reaches it, its path not.
            return os.fstat(fd) if fd is not None else os.lstat(self._path[ino])
        except OSError as exc:
            raise _fail(exc) from None
        except KeyError:
            raise pyfuse3.FUSEError(errno.ENOENT) from None

    def _entry(self, path: bytes) -> pyfuse3.EntryAttributes:
        try:
            st = os.lstat(path)
        except OSError as exc:
            raise _fail(exc) from None
        return self._attrs(self._remember(path, st), st)

    def _release_if_idle(self, ino: int) -> None:
        """Close a backing fd nobody needs; forget dirty data nobody can reach again."""
        if self._opens.get(ino, 0) > 0 or ino not in self._fd:
            return
        if ino in self._dirty and os.fstat(self._fd[ino]).st_nlink > 0:
            return                      # still named: a later open + fsync may save it
        self._dirty.pop(ino, None)
        os.close(self._fd.pop(ino))

    # ------------------------------------------------------------------ page cache

    def _page(self, ino: int, d: _Dirty, n: int) -> bytearray:
        """Page ``n`` as the cache sees it: dirty copy, else backing bytes below ``low``."""
        page = d.pages.get(n)
        if page is not None:
            return page
        data = bytearray(os.pread(self._fd[ino], PAGE, n * PAGE))
        data.extend(bytes(PAGE - len(data)))
        keep = d.low - n * PAGE
        if keep < PAGE:
            data[max(keep, 0):] = bytes(PAGE - max(keep, 0))
        return data

    def _dirty_of(self, ino: int) -> _Dirty:
        d = self._dirty.get(ino)
        if d is None:
            size = os.fstat(self._fd[ino]).st_size
            d = self._dirty[ino] = _Dirty(size, size)
        return d

    def _read(self, ino: int, off: int, size: int) -> bytes:
        d = self._dirty.get(ino)
        if d is None:
            return os.pread(self._fd[ino], size, off)
        out = bytearray()
        pos, end = off, min(off + size, d.size)
        while pos < end:
            n, o = divmod(pos, PAGE)
            take = min(PAGE - o, end - pos)
            out += self._page(ino, d, n)[o:o + take]
            pos += take
        return bytes(out)

    def _write(self, ino: int, off: int, buf: bytes) -> None:
        d = self._dirty_of(ino)
        pos, end = off, off + len(buf)
        while pos < end:
            n, o = divmod(pos, PAGE)
            take = min(PAGE - o, end - pos)
            page = d.pages[n] = self._page(ino, d, n)
            page[o:o + take] = buf[pos - off:pos - off + take]
            pos += take
        d.size = max(d.size, end)

    def _truncate(self, ino: int, size: int) -> None:
        d = self._dirty_of(ino)
        if size < d.size:
            for n in [n for n in d.pages if n * PAGE >= size]:
                del d.pages[n]
            n, o = divmod(size, PAGE)
            if o and n in d.pages:
                d.pages[n][o:] = bytes(PAGE - o)
        d.low = min(d.low, size)
        d.size = size

    def _sync(self, ino: int) -> None:
        """Make the cached state durable: the one way data reaches the backing file."""
        fd = self._fd[ino]
        d = self._dirty.pop(ino, None)
        if d is not None:
            if d.low < os.fstat(fd).st_size:
                os.ftruncate(fd, d.low)
            for n in sorted(d.pages):
                os.pwrite(fd, d.pages[n][:max(0, min(PAGE, d.size - n * PAGE))], n * PAGE)
            os.ftruncate(fd, d.size)
        os.fsync(fd)
        self.syncs += 1

    def cut_power(self) -> int:
        """Forget every unsynced write and size change; returns the dirty bytes dropped."""
        lost = sum(len(d.pages) * PAGE for d in self._dirty.values())
        self._dirty.clear()
        for ino in list(self._fd):
            self._release_if_idle(ino)
        for change in reversed(self._journal):
            try:
                change.undo()
            except (OSError, KeyError) as exc:     # KeyError: its directory is gone
                # Later committed changes moved the names on: keep what is there now.
                self.undo_failed += 1
                print(f"powerfs: cannot undo a name change: {exc}", file=sys.stderr, flush=True)
        self._journal.clear()
        self.cuts += 1
        self.discarded += lost
        return lost

    def sync_all(self) -> None:
        """What a clean unmount does on a real machine: write back every dirty file."""
        for ino in list(self._dirty):
            self._sync(ino)
            self._release_if_idle(ino)
        self._commit(lambda change: True)
        if self.strict_dirs:
            shutil.rmtree(self._grave, ignore_errors=True)

    def stats(self) -> dict[str, int]:
        return {"dirty_files": len(self._dirty),
                "dirty_bytes": sum(len(d.pages) * PAGE for d in self._dirty.values()),
                "cuts": self.cuts, "syncs": self.syncs, "discarded_bytes": self.discarded,
                "pending_names": len(self._journal), "undo_failed": self.undo_failed}

    # ------------------------------------------------------------------ names (strict mode)

    def _strict(self, *dirs: int) -> bool:
        """Whether a name change in these directories waits for a directory fsync."""
        if self._strict_all:
            return True
        return any(path == r or path.startswith(r + b"/")
                   for path in (self._path.get(d, b"") for d in dirs)
                   for r in self._strict_roots)

    def _record(self, dirs: set[int], undo: Callable[[], None],
                commit: Callable[[], None] = lambda: None) -> None:
        if self._strict(*dirs):
            self._journal.append(_NameChange(frozenset(dirs), undo, commit))

    def _commit(self, which: Callable[[_NameChange], bool]) -> None:
        keep = []
        for change in self._journal:
            if not which(change):
                keep.append(change)
                continue
            try:
                change.commit()
            except OSError:
                pass                    # the graveyard entry is gone already
        self._journal = keep

    def _moved(self, old: bytes, new: bytes) -> None:
        """Keep inode -> path right after a rename; a directory takes its subtree along."""
        prefix = old + b"/"
        for ino, path in list(self._path.items()):
            if path == old:
                self._path[ino] = new
            elif path.startswith(prefix):
                self._path[ino] = new + path[len(old):]

    def _move(self, src: bytes, dst: bytes) -> None:
        if os.path.lexists(dst):
            raise OSError(errno.EEXIST, "name taken again since", dst)
        os.rename(src, dst)
        self._moved(src, dst)

    def _bury(self, path: bytes) -> bytes:
        """Move a removed name into the graveyard, where an undo can fetch it back."""
        self._graves += 1
        grave = os.path.join(self._grave, b"%d" % self._graves)
        os.rename(path, grave)
        self._moved(path, grave)
        return grave

    def _remove(self, path: bytes) -> None:
        st = os.lstat(path)
        if stat.S_ISDIR(st.st_mode):
            os.rmdir(path)
        else:
            os.unlink(path)
        self._forget_name(path, st)

    # ------------------------------------------------------------------ FUSE: names

    async def lookup(self, parent_inode: int, name: bytes,
                     ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        if parent_inode == pyfuse3.ROOT_INODE and name == GRAVEYARD:
            raise pyfuse3.FUSEError(errno.ENOENT)
        return self._entry(self._child(parent_inode, name))

    async def getattr(self, inode: int, ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        return self._attrs(inode, self._stat(inode))

    async def setattr(self, inode: int, attr: pyfuse3.EntryAttributes,
                      fields: pyfuse3.SetattrFields, fh: int | None,
                      ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        path = self._path.get(inode)
        try:
            if fields.update_size:
                if inode not in self._fd:        # truncate(2) by name of a closed file
                    self._fd[inode] = os.open(self._path[inode], os.O_RDWR)
                self._truncate(inode, attr.st_size)
                self._release_if_idle(inode)
            target: int | bytes | None = self._fd.get(inode, path)
            if target is None:
                raise pyfuse3.FUSEError(errno.ENOENT)
            if fields.update_mode:
                os.chmod(target, stat.S_IMODE(attr.st_mode))
            if fields.update_uid or fields.update_gid:
                os.chown(target, attr.st_uid if fields.update_uid else -1,
                         attr.st_gid if fields.update_gid else -1)
            if fields.update_atime or fields.update_mtime:
                st = self._stat(inode)
                os.utime(target, ns=(
                    attr.st_atime_ns if fields.update_atime else st.st_atime_ns,
                    attr.st_mtime_ns if fields.update_mtime else st.st_mtime_ns))
        except OSError as exc:
            raise _fail(exc) from None
        return await self.getattr(inode, ctx)

    async def mkdir(self, parent_inode: int, name: bytes, mode: int,
                    ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        path = self._child(parent_inode, name)
        try:
            os.mkdir(path, mode & ~ctx.umask)
        except OSError as exc:
            raise _fail(exc) from None
        self._record({parent_inode}, lambda: self._remove(self._child(parent_inode, name)))
        return self._entry(path)

    async def create(self, parent_inode: int, name: bytes, mode: int, flags: int,
                     ctx: pyfuse3.RequestContext
                     ) -> tuple[pyfuse3.FileInfo, pyfuse3.EntryAttributes]:
        path = self._child(parent_inode, name)
        new = not os.path.lexists(path)
        try:
            # Always read-write and never O_APPEND: the kernel hands us the offsets, and
            # fsync later writes pages back through this same fd.
            fd = os.open(path, os.O_RDWR | os.O_CREAT | (flags & os.O_EXCL), mode & ~ctx.umask)
        except OSError as exc:
            raise _fail(exc) from None
        if new:
            self._record({parent_inode}, lambda: self._remove(self._child(parent_inode, name)))
        entry = self._entry(path)
        ino = entry.st_ino
        if ino in self._fd:
            os.close(fd)
        else:
            self._fd[ino] = fd
        self._opens[ino] = self._opens.get(ino, 0) + 1
        return pyfuse3.FileInfo(fh=ino, keep_cache=False), entry

    async def unlink(self, parent_inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> None:
        self._remove_name(parent_inode, name, directory=False)

    async def rmdir(self, parent_inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> None:
        self._remove_name(parent_inode, name, directory=True)

    def _remove_name(self, parent_inode: int, name: bytes, directory: bool) -> None:
        path = self._child(parent_inode, name)
        try:
            st = os.lstat(path)
            if stat.S_ISDIR(st.st_mode) != directory:
                raise pyfuse3.FUSEError(errno.EISDIR if not directory else errno.ENOTDIR)
            if not self._strict(parent_inode):
                self._remove(path)
                return
            if directory and os.listdir(path):
                raise pyfuse3.FUSEError(errno.ENOTEMPTY)
            grave = self._bury(path)
        except OSError as exc:
            raise _fail(exc) from None
        self._record({parent_inode}, lambda: self._move(grave, self._child(parent_inode, name)),
                     lambda: self._remove(grave))

    def _forget_name(self, path: bytes, st: os.stat_result) -> None:
        ino = self._ino.get((st.st_dev, st.st_ino))
        if ino is not None:
            if self._path.get(ino) == path:
                del self._path[ino]
            self._release_if_idle(ino)

    async def rename(self, parent_inode_old: int, name_old: bytes, parent_inode_new: int,
                     name_new: bytes, flags: int, ctx: pyfuse3.RequestContext) -> None:
        old = self._child(parent_inode_old, name_old)
        new = self._child(parent_inode_new, name_new)
        if flags & pyfuse3.RENAME_EXCHANGE:
            raise pyfuse3.FUSEError(errno.EINVAL)
        grave: bytes | None = None
        try:
            replaced = os.lstat(new) if os.path.lexists(new) else None
            if replaced is not None and flags & pyfuse3.RENAME_NOREPLACE:
                raise pyfuse3.FUSEError(errno.EEXIST)
            if replaced is not None and self._strict(parent_inode_old, parent_inode_new):
                # Check what rename(2) would refuse before the target leaves its place.
                if stat.S_ISDIR(replaced.st_mode):
                    if not stat.S_ISDIR(os.lstat(old).st_mode):
                        raise pyfuse3.FUSEError(errno.EISDIR)
                    if os.listdir(new):
                        raise pyfuse3.FUSEError(errno.ENOTEMPTY)
                elif stat.S_ISDIR(os.lstat(old).st_mode):
                    raise pyfuse3.FUSEError(errno.ENOTDIR)
                grave = self._bury(new)
            os.rename(old, new)
        except OSError as exc:
            if grave is not None:
                self._move(grave, new)
            raise _fail(exc) from None
        if replaced is not None and grave is None:
            self._forget_name(new, replaced)
        self._moved(old, new)

        def undo() -> None:
            self._move(self._child(parent_inode_new, name_new),
                       self._child(parent_inode_old, name_old))
            if grave is not None:
                self._move(grave, self._child(parent_inode_new, name_new))

        self._record({parent_inode_old, parent_inode_new}, undo,
                     lambda: self._remove(grave) if grave is not None else None)

    # ------------------------------------------------------------------ FUSE: files

    async def open(self, inode: int, flags: int, ctx: pyfuse3.RequestContext) -> pyfuse3.FileInfo:
        if inode not in self._fd:
            try:
                self._fd[inode] = os.open(self._path[inode], os.O_RDWR)
            except OSError as exc:
                raise _fail(exc) from None
        self._opens[inode] = self._opens.get(inode, 0) + 1
        # keep_cache=False: the kernel drops its cached pages of the file on every open,
        # so a process started after a cut reads what we hold now.
        return pyfuse3.FileInfo(fh=inode, keep_cache=False)

    async def read(self, fh: int, off: int, size: int) -> bytes:
        return self._read(fh, off, size)

    async def write(self, fh: int, off: int, buf: bytes) -> int:
        self._write(fh, off, buf)
        return len(buf)

    async def flush(self, fh: int) -> None:
        pass                            # close(2) makes nothing durable

    async def release(self, fh: int) -> None:
        self._opens[fh] -= 1
        self._release_if_idle(fh)

    async def fsync(self, fh: int, datasync: bool) -> None:
        try:
            self._sync(fh)
        except OSError as exc:
            raise _fail(exc) from None

    # ------------------------------------------------------------------ FUSE: directories

    async def opendir(self, inode: int, ctx: pyfuse3.RequestContext) -> int:
        return inode

    async def readdir(self, fh: int, start_id: int, token: pyfuse3.ReaddirToken) -> None:
        path = self._path[fh]
        try:
            names = sorted(os.listdir(path))
        except OSError as exc:
            raise _fail(exc) from None
        for i in range(start_id, len(names)):
            try:
                entry = self._entry(os.path.join(path, names[i]))
            except pyfuse3.FUSEError:
                continue                # vanished since the listing
            if fh == pyfuse3.ROOT_INODE and names[i] == GRAVEYARD:
                continue
            if not pyfuse3.readdir_reply(token, names[i], entry, i + 1):
                break

    async def releasedir(self, fh: int) -> None:
        pass

    async def fsyncdir(self, fh: int, datasync: bool) -> None:
        try:
            fd = os.open(self._path[fh], os.O_RDONLY | os.O_DIRECTORY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        except OSError as exc:
            raise _fail(exc) from None
        self._commit(lambda change: fh in change.dirs)

    async def statfs(self, ctx: pyfuse3.RequestContext) -> pyfuse3.StatvfsData:
        st = os.statvfs(self._path[pyfuse3.ROOT_INODE])
        out = pyfuse3.StatvfsData()
        for name in ("f_bsize", "f_frsize", "f_blocks", "f_bfree", "f_bavail", "f_files",
                     "f_ffree", "f_favail", "f_namemax"):
            setattr(out, name, getattr(st, name))
        return out


# ---------------------------------------------------------------------- control socket

async def _serve_control(ops: PowerLossOps, path: str) -> None:
    """One request line per connection: ``cut``, ``stats`` or ``ping``; one JSON reply."""
    sock = trio.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    await sock.bind(path)
    sock.listen(8)

    async def handle(stream: trio.SocketStream) -> None:
        line = b""
        while not line.endswith(b"\n"):
            chunk = await stream.receive_some(256)
            if not chunk:
                return
            line += chunk
        cmd = line.strip().decode()
        if cmd == "cut":
            reply: dict[str, object] = {"ok": True, "discarded_bytes": ops.cut_power()}
        elif cmd in ("stats", "ping"):
            reply = {"ok": True, **ops.stats()}
        else:
            reply = {"ok": False, "error": f"unknown command {cmd!r}"}
        await stream.send_all(json.dumps(reply).encode() + b"\n")
        await stream.aclose()

    await trio.serve_listeners(handle, [trio.SocketListener(sock)])


async def _stop_on_signals() -> None:
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async for _ in signals:
            pyfuse3.terminate()
            return


async def _run(ops: PowerLossOps, control: str) -> None:
    async with trio.open_nursery() as nursery:
        nursery.start_soon(_serve_control, ops, control)
        nursery.start_soon(_stop_on_signals)
        await pyfuse3.main()
        nursery.cancel_scope.cancel()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m josefine.chaos.powerfs_main",
                                description="FUSE passthrough that loses unsynced data on 'cut'")
    p.add_argument("backing")
    p.add_argument("mountpoint")
    p.add_argument("--control", required=True, help="unix socket path (outside the mount)")
    p.add_argument("--strict-dirs", action="store_true",
                   help="a name change is durable only once a directory it touched is fsynced")
    p.add_argument("--strict-dir", action="append", default=[], metavar="REL",
                   help="like --strict-dirs, only for the subtree REL of the mount (repeatable)")
    args = p.parse_args(argv)
    ops = PowerLossOps(args.backing, strict_dirs=True if args.strict_dirs else args.strict_dir)
    options = set(pyfuse3.default_options) | {"fsname=powerlossfs"}
    pyfuse3.init(ops, args.mountpoint, options)
    try:
        trio.run(_run, ops, args.control)
    finally:
        ops.sync_all()
        pyfuse3.close(unmount=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
