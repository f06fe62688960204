"""Durable snapshot files: streamed in checksummed chunks, committed by fsync and rename.

One directory holds a node's snapshots, one file per base block, named
``snap-<height:020>-<term:020>.snap`` so that names sort by (height, term). The byte
layout and the durability steps are described in docs/snapshots.md; in short:

* **Writing** (`SnapshotWriter`) streams the body into a temp file in the same directory
  (``snap-….snap.tmp``), one frame per chunk, each with a CRC-32, then a trailer with the
  body length and its SHA-256. Only then: fsync the file, rename it to its final name,
  fsync the directory. A crash at any point leaves either the old set of snapshots plus a
  stray temp file, or the new snapshot complete and durable, never a half file under a
  final name.
* **Reading** (`SnapshotReader`) checks the header, every chunk before handing out its
  bytes, and the trailer before reporting end of file. Any torn (truncated) or corrupt
  file raises `CorruptSnapshotError`; a consumer that reads to EOF without an exception
  has seen exactly the body that was written. NB: the whole-body checks come at the end,
  so a consumer must build its state aside and adopt it only after EOF.
* `latest_valid` picks the newest file that verifies completely, skipping (and logging)
  newer corrupt ones, or refusing in strict mode. `prune` deletes older snapshots and
  stray temp files, never the newest valid ones.

Memory is bounded by the chunk size (256 KiB by default) whatever the body size.
Everything here runs on the caller's thread and does blocking I/O; nothing here is
called by the pure core. One directory must not be written and pruned concurrently
(the node serialises both).
"""
from __future__ import annotations

import hashlib
import logging
import os
import re
import struct
import zlib
from collections.abc import Callable, Collection, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import BinaryIO

from josefine.errors import JosefineError
from josefine.snapshot.meta import SnapshotMeta
from josefine.types import BlockId

__all__ = [
    "CHUNK_SIZE",
    "FORMAT_VERSION",
    "MAGIC",
    "CorruptSnapshotError",
    "fsync_dir",
    "SnapshotFile",
    "SnapshotReader",
    "SnapshotWriter",
    "latest_valid",
    "list_snapshots",
    "name_for",
    "prune",
    "snapshot_name",
    "verify",
    "write_snapshot",
]

log = logging.getLogger(__name__)

MAGIC = b"\x89JOSNAP\n"
"""First 8 bytes of every snapshot file. The high first byte and the newline catch files
mangled by a text-mode copy, and make the file obviously not text."""

FORMAT_VERSION = 1
CHUNK_SIZE = 256 * 1024
MAX_CHUNK_SIZE = 16 * 1024 * 1024
"""Largest chunk size a writer may choose; a reader refuses a header that claims more, so
a corrupt header cannot make it allocate gigabytes."""
MAX_META_BYTES = 64 * 1024

_HEAD = struct.Struct(">8sHII")   # magic, version, chunk size, meta length
_U32 = struct.Struct(">I")        # a frame's length, and every CRC
_TAIL = struct.Struct(">Q32s")    # body length, SHA-256 of the body
_END = _U32.pack(0)               # a zero length marks the trailer: chunks are never empty

_NAME = re.compile(r"snap-(\d{20})-(\d{20})\.snap")
_TEMP = re.compile(r"snap-(\d{20})-(\d{20})\.snap\.tmp")


class CorruptSnapshotError(JosefineError):
    """A snapshot file is torn (truncated), corrupt, or not a snapshot this version reads.

    Attributes:
        path: the file.
        reason: what was wrong, for the log and the operator.
    """

    def __init__(self, path: str | os.PathLike[str], reason: str) -> None:
        super().__init__(f"corrupt snapshot {os.fspath(path)}: {reason}")
        self.path = Path(path)
        self.reason = reason


@dataclass(frozen=True, slots=True)
class SnapshotFile:
    """A snapshot file that verified completely.

    Attributes:
        path: where it is.
        meta: its header record.
        body_length: bytes of body.
        body_sha256: SHA-256 of the body; equal on every node that snapshotted the same
            state the same way, so it can be compared across nodes.
    """

    path: Path
    meta: SnapshotMeta
    body_length: int
    body_sha256: bytes


def snapshot_name(meta: SnapshotMeta) -> str:
    """The final file name of the snapshot with this meta."""
    return name_for(meta.base)


def name_for(base: BlockId) -> str:
    """The final file name of the snapshot whose base is `base`."""
    return f"snap-{base.height:020d}-{base.term:020d}.snap"


def fsync_dir(directory: Path) -> None:
    """Make a rename or unlink in `directory` durable."""
    _fsync_dir(directory)


def _fsync_dir(directory: Path) -> None:
    # A rename or unlink is durable only once the directory itself is synced (POSIX says
    # nothing either way; ext4 and xfs need it).
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# ------------------------------------------------------------------------------ writing


class SnapshotWriter:
    """Write one snapshot as a context manager; the body is streamed through `write`.

    ``with SnapshotWriter(dir, meta) as w: state_machine.snapshot(w)`` leaves the file
    durable under its final name when the block exits normally, and no file at all
    (the temp file removed) when it raises. A crash leaves only a temp file, which readers
    ignore and `prune` deletes.

    Memory stays within one chunk: `write` copies at most `chunk_size` bytes aside and
    writes whole frames straight from the caller's buffer.
    """

    def __init__(self, directory: str | os.PathLike[str], meta: SnapshotMeta,
                 *, chunk_size: int = CHUNK_SIZE) -> None:
        if not 0 < chunk_size <= MAX_CHUNK_SIZE:
            raise ValueError(f"chunk_size must be in 1..{MAX_CHUNK_SIZE}")
        self.directory = Path(directory)
        self.meta = meta
        self.chunk_size = chunk_size
        self.path = self.directory / snapshot_name(meta)
        """The final path; the file exists there only after a successful exit."""
        self.temp_path = self.path.with_name(self.path.name + ".tmp")
        self._file: BinaryIO | None = None
        self._pending = bytearray()
        self._crc = 0
        self._sha = hashlib.sha256()
        self._length = 0

    def __enter__(self) -> SnapshotWriter:
        _ensure_dir(self.directory)
        meta = self.meta.encode()
        if len(meta) > MAX_META_BYTES:
            raise ValueError(f"snapshot meta of {len(meta)} bytes is too large")
        head = _HEAD.pack(MAGIC, FORMAT_VERSION, self.chunk_size, len(meta)) + meta
        # NB: a temp file of the same name can only be the leftover of a crashed writer
        # (one writer per directory), so it is replaced, not appended to.
        self._file = open(self.temp_path, "wb")  # closed in __exit__
        self._crc = zlib.crc32(head)
        self._file.write(head + _U32.pack(self._crc))
        return self

    def write(self, data: bytes | bytearray | memoryview) -> int:
        """Append `data` to the body; returns its length (the `BinaryIO.write` contract)."""
        if self._file is None:
            raise ValueError("SnapshotWriter.write outside its with block")
        view = memoryview(data).cast("B")
        n = len(view)
        pos = 0
        if self._pending:
            take = min(n, self.chunk_size - len(self._pending))
            self._pending += view[:take]
            pos = take
            if len(self._pending) == self.chunk_size:
                self._frame(self._pending)
                self._pending = bytearray()
        while n - pos >= self.chunk_size:
            self._frame(view[pos:pos + self.chunk_size])
            pos += self.chunk_size
        if pos < n:
            self._pending += view[pos:]
        return n

    def _frame(self, chunk: bytes | bytearray | memoryview) -> None:
        assert self._file is not None
        length = _U32.pack(len(chunk))
        # Each CRC continues from the previous frame's, so a frame copied from another
        # position or another file fails even though its own bytes are intact.
        self._crc = zlib.crc32(chunk, zlib.crc32(length, self._crc))
        self._sha.update(chunk)
        self._length += len(chunk)
        self._file.write(length)
        self._file.write(chunk)
        self._file.write(_U32.pack(self._crc))

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        f = self._file
        if f is None:
            return
        if exc_type is not None:
            self._file = None
            f.close()
            self.temp_path.unlink(missing_ok=True)
            return
        try:
            if self._pending:
                self._frame(self._pending)
                self._pending = bytearray()
            self._file = None  # later writes are refused
            tail = _END + _TAIL.pack(self._length, self._sha.digest())
            f.write(tail + _U32.pack(zlib.crc32(tail, self._crc)))
            f.flush()
            os.fsync(f.fileno())  # durability step 1: the content, before any name sees it
        except BaseException:
            self._file = None
            f.close()
            self.temp_path.unlink(missing_ok=True)
            raise
        f.close()
        try:
            os.rename(self.temp_path, self.path)  # durability step 2: atomic switch of name
        except BaseException:
            self.temp_path.unlink(missing_ok=True)
            raise
        _fsync_dir(self.directory)  # durability step 3: the new name itself


def write_snapshot(directory: str | os.PathLike[str], meta: SnapshotMeta,
                   body: Callable[[SnapshotWriter], object],
                   *, chunk_size: int = CHUNK_SIZE) -> Path:
    """Write a snapshot whose body `body(writer)` streams out; returns its final path."""
    with SnapshotWriter(directory, meta, chunk_size=chunk_size) as w:
        body(w)
    return w.path


def _ensure_dir(directory: Path) -> None:
    if directory.is_dir():
        return
    directory.mkdir(parents=True, exist_ok=True)
    _fsync_dir(directory.parent)  # the new directory's own name must survive a crash


# ------------------------------------------------------------------------------ reading


class SnapshotReader:
    """Read one snapshot file, verifying it as it streams.

    Opening reads and checks the header (so `meta` is trustworthy at once). `read(n)`
    and `chunks()` hand out body bytes only from chunks whose CRC has been checked, and
    report the end (``b""`` / end of iteration) only after the trailer's length and
    SHA-256 match. Every problem raises `CorruptSnapshotError`; the reader never returns
    bytes that were not written.

    Raises:
        CorruptSnapshotError: from the constructor, `read` and `chunks`.
        OSError: the file cannot be opened or read (an I/O error, not a corruption).
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self._file: BinaryIO = open(self.path, "rb")  # closed in close()
        try:
            self.meta, self.chunk_size = self._read_header()
        except BaseException:
            self._file.close()
            raise
        self._sha = hashlib.sha256()
        self._length = 0
        self._done = False
        self._buf = b""
        self._pos = 0
        self.body_sha256 = b""
        """The body's SHA-256, set once the trailer has verified."""

    def _corrupt(self, reason: str) -> CorruptSnapshotError:
        return CorruptSnapshotError(self.path, reason)

    def _exact(self, n: int, what: str) -> bytes:
        data = self._file.read(n)
        if len(data) != n:
            raise self._corrupt(f"truncated in {what} at byte {self._file.tell()}")
        return data

    def _read_header(self) -> tuple[SnapshotMeta, int]:
        fixed = self._exact(_HEAD.size, "header")
        magic, version, chunk_size, meta_len = _HEAD.unpack(fixed)
        if magic != MAGIC:
            raise self._corrupt("bad magic: not a snapshot file")
        if meta_len > MAX_META_BYTES or not 0 < chunk_size <= MAX_CHUNK_SIZE:
            raise self._corrupt("header sizes out of range")
        meta_bytes = self._exact(meta_len, "header")
        (crc,) = _U32.unpack(self._exact(_U32.size, "header"))
        self._crc = zlib.crc32(fixed + meta_bytes)
        if crc != self._crc:
            raise self._corrupt("header checksum mismatch")
        # Version is judged only after the CRC: a flipped version byte is corruption, a
        # well-formed other version is a file from another release.
        if version != FORMAT_VERSION:
            raise self._corrupt(f"format version {version}, this release reads "
                                f"{FORMAT_VERSION}")
        try:
            meta = SnapshotMeta.decode(meta_bytes)
        except ValueError as exc:
            raise self._corrupt(str(exc)) from None
        return meta, chunk_size

    def _next_chunk(self) -> bytes:
        """The next verified chunk, or b"" once the trailer has verified."""
        if self._done:
            return b""
        at = self._file.tell()
        length_field = self._exact(_U32.size, "frame length")
        (n,) = _U32.unpack(length_field)
        if n == 0:
            self._read_trailer(length_field)
            return b""
        if n > self.chunk_size:
            raise self._corrupt(f"frame at byte {at} claims {n} bytes, more than the "
                                f"chunk size {self.chunk_size}")
        chunk = self._exact(n, f"chunk at byte {at}")
        (crc,) = _U32.unpack(self._exact(_U32.size, f"chunk at byte {at}"))
        expect = zlib.crc32(chunk, zlib.crc32(length_field, self._crc))
        if crc != expect:
            raise self._corrupt(f"checksum mismatch in chunk at byte {at}")
        self._crc = expect
        self._sha.update(chunk)
        self._length += n
        return chunk

    def _read_trailer(self, end_field: bytes) -> None:
        at = self._file.tell() - len(end_field)
        tail = end_field + self._exact(_TAIL.size, "trailer")
        (crc,) = _U32.unpack(self._exact(_U32.size, "trailer"))
        if crc != zlib.crc32(tail, self._crc):
            raise self._corrupt(f"trailer checksum mismatch at byte {at}")
        length, sha = _TAIL.unpack(tail[_U32.size:])
        if length != self._length:
            raise self._corrupt(f"trailer says {length} body bytes, chunks held "
                                f"{self._length}")
        if sha != self._sha.digest():
            raise self._corrupt("body SHA-256 mismatch")
        if self._file.read(1):
            raise self._corrupt(f"bytes after the trailer at byte {self._file.tell() - 1}")
        self.body_sha256 = sha
        self._done = True

    def chunks(self) -> Iterator[bytes]:
        """Yield the body chunk by chunk; ends only after the trailer has verified."""
        if self._buf:
            yield self._buf[self._pos:]
            self._buf, self._pos = b"", 0
        while chunk := self._next_chunk():
            yield chunk

    def read(self, n: int = -1) -> bytes:
        """Up to `n` body bytes (all remaining if n < 0); b"" only at a verified end."""
        if n < 0:
            # NB: this holds the whole rest of the body; stream with read(n) or chunks().
            return b"".join(self.chunks())
        while self._pos >= len(self._buf):
            self._buf, self._pos = self._next_chunk(), 0
            if not self._buf:
                return b""
        out = self._buf[self._pos:self._pos + n]
        self._pos += len(out)
        return out

    def verify(self) -> SnapshotFile:
        """Read the rest of the body, discarding it; the file's summary if it is sound."""
        for _ in self.chunks():
            pass
        return SnapshotFile(self.path, self.meta, self._length, self.body_sha256)

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> SnapshotReader:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()


def verify(path: str | os.PathLike[str]) -> SnapshotFile:
    """Check a whole snapshot file, streaming; its summary, or `CorruptSnapshotError`.

    Also checks that the file's name matches the base in its meta: a file renamed by hand
    to another height would otherwise be restored as the wrong snapshot.
    """
    with SnapshotReader(path) as r:
        info = r.verify()
    if info.path.name != snapshot_name(info.meta):
        raise CorruptSnapshotError(path, f"name does not match its base {info.meta.base}")
    return info


# ------------------------------------------------------------------ choosing and pruning


def list_snapshots(directory: str | os.PathLike[str]) -> list[Path]:
    """Snapshot files (by name, unverified), newest first: by base height, then term."""
    d = Path(directory)
    if not d.is_dir():
        return []
    found = []
    for p in d.iterdir():
        m = _NAME.fullmatch(p.name)
        if m:
            found.append(((int(m[1]), int(m[2])), p))
    return [p for _, p in sorted(found, reverse=True)]


def _subject(node_id: int | None) -> str:
    return "snapshots" if node_id is None else f"node {node_id}"


def latest_valid(directory: str | os.PathLike[str], *, strict: bool = False,
                 node_id: int | None = None) -> SnapshotFile | None:
    """The newest snapshot in `directory` that verifies completely, or None if none does.

    Temp files are ignored: they are writes that never committed. A newer file that fails
    verification is logged and skipped, so the node falls back to an older snapshot and
    replays more of its chain. With `strict`, a corrupt newest file refuses instead: the
    operator decides, rather than the node silently running from an older state.

    Args:
        directory: the snapshot directory (it may not exist: no snapshot yet).
        strict: raise on the first corrupt file instead of skipping it.
        node_id: put in log lines and messages, to tell nodes' logs apart.

    Raises:
        CorruptSnapshotError: in strict mode, the newest snapshot does not verify.
        OSError: a file cannot be read at all; an I/O error is not taken for corruption,
            so it stops the caller instead of silently falling back.
    """
    for path in list_snapshots(directory):
        try:
            return verify(path)
        except CorruptSnapshotError as exc:
            if strict:
                raise CorruptSnapshotError(
                    path, f"{exc.reason}; {_subject(node_id)} refuses to start from an "
                    "older snapshot in strict mode (move the file aside to fall back, or "
                    "start without strict)") from None
            log.error("%s skips corrupt snapshot %s (%s), falling back to an older one",
                      _subject(node_id), path.name, exc.reason)
    return None


def prune(directory: str | os.PathLike[str], keep: int = 2, *,
          trusted: Collection[str | os.PathLike[str]] = (),
          node_id: int | None = None) -> list[Path]:
    """Durably delete all but the newest `keep` valid snapshots, and stray temp files.

    Snapshots are checked from the newest down until `keep` have verified; every older
    one is deleted, and so is every corrupt one met on the way (it could never be used
    and would be re-verified, and logged, at every start). Valid snapshots are never
    deleted while fewer than `keep` are known, so pruning cannot remove the last good
    one. Files in `trusted` (e.g. the one just written) are counted without re-reading.
    The directory is synced once after the deletions. Returns the deleted paths.

    NB: not to be run while a `SnapshotWriter` writes into the same directory: its temp
    file would be deleted under it.
    """
    if keep < 1:
        raise ValueError("prune must keep at least one snapshot")
    d = Path(directory)
    trusted_paths = {Path(p).resolve() for p in trusted}
    doomed: list[Path] = []
    kept = 0
    for path in list_snapshots(d):
        if kept >= keep:
            doomed.append(path)
            continue
        if path.resolve() in trusted_paths:
            kept += 1
            continue
        try:
            verify(path)
            kept += 1
        except CorruptSnapshotError as exc:
            log.warning("%s deletes corrupt snapshot %s (%s)", _subject(node_id), path.name,
                        exc.reason)
            doomed.append(path)
    if d.is_dir():
        doomed.extend(p for p in d.iterdir() if _TEMP.fullmatch(p.name))
    for path in doomed:
        path.unlink(missing_ok=True)
    if doomed:
        _fsync_dir(d)
        log.info("%s pruned %d snapshot file(s), kept %d", _subject(node_id), len(doomed),
                 kept)
    return doomed
