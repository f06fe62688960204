"""Snapshot files: format round trip, torn and corrupt files, fallback, pruning, and the
fsync -> rename -> directory fsync order (docs/snapshots.md)."""
from __future__ import annotations

import hashlib
import logging
import os
import random
import stat
import struct
import subprocess
import sys
import textwrap
import tracemalloc
import types
import zlib
from pathlib import Path

import pytest

import josefine
import josefine.snapshot.files as files_mod
from josefine.snapshot import (
    CorruptSnapshotError,
    SnapshotMeta,
    SnapshotReader,
    SnapshotWriter,
    latest_valid,
    list_snapshots,
    prune,
    snapshot_name,
    verify,
    write_snapshot,
)
from josefine.types import BlockId

pytestmark = pytest.mark.timeout(120)

CLUSTER = "c0ffee"


def meta(height: int = 5, term: int = 2, node: int = 1) -> SnapshotMeta:
    digest = hashlib.sha256(f"{term}/{height}".encode()).digest()
    return SnapshotMeta(CLUSTER, BlockId(term, height), digest, frozenset({1, 2, 3}), node)


def write_bytes(directory: Path, body: bytes, m: SnapshotMeta | None = None,
                chunk_size: int = 16) -> Path:
    return write_snapshot(directory, m or meta(), lambda w: w.write(body),
                          chunk_size=chunk_size)


def read_all_until_error(path: Path) -> tuple[bytes, CorruptSnapshotError | None]:
    """Everything a consumer reading in small pieces receives, and how it ended."""
    got = bytearray()
    try:
        with SnapshotReader(path) as r:
            while piece := r.read(7):
                got += piece
    except CorruptSnapshotError as exc:
        return bytes(got), exc
    return bytes(got), None


# --------------------------------------------------------------------------------- meta


def test_meta_round_trips_and_encodes_deterministically():
    m = meta()
    assert SnapshotMeta.decode(m.encode()) == m
    same = SnapshotMeta(CLUSTER, BlockId(2, 5), m.base_digest, frozenset([3, 1, 2]), 1)
    assert same.encode() == m.encode()  # voters are written sorted, whatever set order


@pytest.mark.parametrize("bad", [
    dict(cluster_id=""), dict(base=(1,)), dict(base_digest=b"short"),
    dict(voters=frozenset()), dict(voters=frozenset({-1})), dict(node_id=True),
])
def test_meta_refuses_invalid_fields(bad):
    fields = dict(cluster_id=CLUSTER, base=BlockId(1, 1), base_digest=bytes(32),
                  voters=frozenset({1}), node_id=1) | bad
    with pytest.raises(ValueError, match="invalid snapshot meta"):
        SnapshotMeta(**fields)


@pytest.mark.parametrize("data", [
    b"\xc1", b"\x90", b"\x80",
    meta().encode()[:-1],
])
def test_meta_decode_raises_value_error_on_garbage(data):
    with pytest.raises(ValueError):
        SnapshotMeta.decode(data)


# --------------------------------------------------------------------------- round trip


@pytest.mark.parametrize("size", [0, 1, 15, 16, 17, 64, 100])
def test_small_bodies_round_trip_through_every_read_style(tmp_path, size):
    body = bytes(random.Random(size).randbytes(size))
    path = write_bytes(tmp_path, body)
    assert path.name == snapshot_name(meta()) == f"snap-{5:020d}-{2:020d}.snap"
    got, err = read_all_until_error(path)
    assert err is None and got == body
    with SnapshotReader(path) as r:
        assert r.meta == meta()
        assert b"".join(r.chunks()) == body
    with SnapshotReader(path) as r:
        assert r.read() == body and r.read(5) == b""
    info = verify(path)
    assert (info.meta, info.body_length) == (meta(), size)
    assert info.body_sha256 == hashlib.sha256(body).digest()
    assert [p.name for p in tmp_path.iterdir()] == [path.name]  # no temp file left


def test_many_small_writes_and_one_huge_write_frame_identically(tmp_path):
    body = random.Random(1).randbytes(1000)
    a = write_snapshot(tmp_path / "a", meta(), lambda w: [w.write(body[i:i + 3])
                                                          for i in range(0, 1000, 3)])
    b = write_snapshot(tmp_path / "b", meta(), lambda w: w.write(memoryview(body)))
    # Same meta, body and chunk size: byte-identical files (no time, no randomness inside).
    assert a.read_bytes() == b.read_bytes()


def _pieces(total: int, seed: int, sha):
    """`total` pseudo-random bytes in odd-sized pieces, made on demand, hashed on the way."""
    rng = random.Random(seed)
    left = total
    while left:
        piece = rng.randbytes(min(left, 100_003))
        sha.update(piece)
        left -= len(piece)
        yield piece


def test_large_body_streams_through_in_bounded_memory(tmp_path):
    total = 48 * 1024 * 1024
    sent = hashlib.sha256()
    tracemalloc.start()
    try:
        with SnapshotWriter(tmp_path, meta()) as w:
            for piece in _pieces(total, 7, sent):
                w.write(piece)
        _, write_peak = tracemalloc.get_traced_memory()
        tracemalloc.reset_peak()
        got = hashlib.sha256()
        n = 0
        with SnapshotReader(w.path) as r:
            for chunk in r.chunks():
                got.update(chunk)
                n += len(chunk)
        _, read_peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert n == total and got.digest() == sent.digest()
    # The body is 48 MiB; a chunk is 256 KiB. Both paths must stay within a few chunks.
    assert write_peak < 4 * 1024 * 1024, write_peak
    assert read_peak < 4 * 1024 * 1024, read_peak


def spec_file(m: SnapshotMeta, body: bytes, chunk: int, *, length: int | None = None,
              sha: bytes | None = None) -> bytes:
    """A snapshot built straight from docs/snapshots.md, with checksums made to match
    whatever `length` and `sha` the trailer is given."""
    meta_bytes = m.encode()
    head = b"\x89JOSNAP\n" + struct.pack(">HII", 1, chunk, len(meta_bytes)) + meta_bytes
    crc = zlib.crc32(head)
    out = bytearray(head + struct.pack(">I", crc))
    for i in range(0, len(body), chunk):
        frame = struct.pack(">I", len(body[i:i + chunk])) + body[i:i + chunk]
        crc = zlib.crc32(frame, crc)
        out += frame + struct.pack(">I", crc)
    tail = struct.pack(">IQ", 0, len(body) if length is None else length)
    tail += hashlib.sha256(body).digest() if sha is None else sha
    return bytes(out + tail + struct.pack(">I", zlib.crc32(tail, crc)))


@pytest.mark.parametrize("size", [0, 5, 32, 50])
def test_writer_output_is_the_documented_layout(tmp_path, size):
    body = bytes(range(size))
    assert write_bytes(tmp_path, body, chunk_size=16).read_bytes() == spec_file(meta(), body, 16)


@pytest.mark.parametrize("lie", ["length", "sha"])
def test_trailer_checks_hold_even_when_every_crc_matches(tmp_path, lie):
    """CRCs only catch accidents; a trailer whose length or SHA-256 disagrees with the
    chunks is refused even if it was written with valid checksums (a writer bug)."""
    body = bytes(range(50))
    wrong = dict(length=49) if lie == "length" else dict(sha=hashlib.sha256(b"other").digest())
    target = tmp_path / snapshot_name(meta())
    target.write_bytes(spec_file(meta(), body, 16, **wrong))
    got, err = read_all_until_error(target)
    assert err is not None and ("SHA-256" in err.reason or "body bytes" in err.reason)
    assert got == body  # every chunk was sound; only the end is refused


# ------------------------------------------------------------------ torn and corrupt files


@pytest.fixture
def small_snapshot(tmp_path):
    """A small file with a header, four chunks (16, 16, 16, 2 bytes) and a trailer."""
    body = bytes(range(50))
    path = write_bytes(tmp_path / "src", body, chunk_size=16)
    return path, body, path.read_bytes()


def test_every_single_byte_flip_is_detected(tmp_path, small_snapshot):
    _, body, data = small_snapshot
    target = tmp_path / snapshot_name(meta())
    target.write_bytes(data)
    assert read_all_until_error(target) == (body, None)  # the pristine copy reads fine
    for offset in range(len(data)):
        for mask in (0x01, 0x80, 0xFF):
            bad = bytearray(data)
            bad[offset] ^= mask
            target.write_bytes(bad)
            got, err = read_all_until_error(target)
            assert err is not None, f"flip {mask:#x} at byte {offset} of {len(data)} not seen"
            assert body.startswith(got), f"garbage handed out for flip at {offset}"
            with pytest.raises(CorruptSnapshotError):
                verify(target)


def test_truncation_at_every_offset_is_detected(tmp_path, small_snapshot):
    _, body, data = small_snapshot
    target = tmp_path / snapshot_name(meta())
    for cut in range(len(data)):
        target.write_bytes(data[:cut])
        got, err = read_all_until_error(target)
        assert err is not None, f"file torn at byte {cut} of {len(data)} read as whole"
        assert body.startswith(got)
    target.write_bytes(data + b"\0")
    assert read_all_until_error(target)[1] is not None  # bytes after the trailer


def test_errors_name_the_file_and_the_reason(tmp_path, small_snapshot):
    _, _, data = small_snapshot
    target = tmp_path / snapshot_name(meta())
    target.write_bytes(data[:-10])
    with pytest.raises(CorruptSnapshotError) as info:
        verify(target)
    assert info.value.path == target and "truncated in trailer" in info.value.reason
    assert str(target) in str(info.value)


def test_a_file_renamed_to_another_base_is_refused(tmp_path, small_snapshot):
    src, _, _ = small_snapshot
    wrong = tmp_path / snapshot_name(meta(height=6))
    src.rename(wrong)
    with pytest.raises(CorruptSnapshotError, match="does not match its base"):
        verify(wrong)
    assert latest_valid(tmp_path) is None


# ------------------------------------------------------------------ crashes and fallbacks


def test_an_exception_in_the_with_block_leaves_no_file(tmp_path):
    with pytest.raises(RuntimeError), SnapshotWriter(tmp_path, meta()) as w:
        w.write(b"x" * 100_000)
        raise RuntimeError("state machine failed mid-snapshot")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.timeout(60)
def test_temp_file_of_a_crashed_writer_is_ignored_and_pruned(tmp_path):
    old = write_bytes(tmp_path, b"old state", meta(height=5))
    script = textwrap.dedent(f"""
        import hashlib, os
        from josefine.snapshot import SnapshotMeta, SnapshotWriter
        from josefine.types import BlockId
        m = SnapshotMeta({CLUSTER!r}, BlockId(3, 9), hashlib.sha256(b"x").digest(),
                         frozenset({{1, 2, 3}}), 1)
        w = SnapshotWriter({str(tmp_path)!r}, m).__enter__()
        for _ in range(8):
            w.write(os.urandom(300_000))
        w._file.flush()
        os._exit(7)  # the process dies mid-body: no trailer, no fsync, no rename
    """)
    root = str(Path(josefine.__file__).parent.parent)
    proc = subprocess.run([sys.executable, "-c", script], env={**os.environ, "PYTHONPATH": root},
                          capture_output=True, timeout=50, check=False)
    assert proc.returncode == 7, proc.stderr.decode()
    temp = tmp_path / (snapshot_name(meta(height=9, term=3)) + ".tmp")
    assert temp.stat().st_size > 1_000_000  # the crash really left a big partial file
    assert not (tmp_path / snapshot_name(meta(height=9, term=3))).exists()

    found = latest_valid(tmp_path)
    assert found is not None and found.path == old
    assert latest_valid(tmp_path, strict=True).path == old  # a crashed write is not corruption

    assert prune(tmp_path, keep=2) == [temp]
    assert sorted(tmp_path.iterdir()) == [old]


@pytest.mark.parametrize("damage", ["flip", "tear"])
def test_newest_corrupt_snapshot_falls_back_to_the_previous_one(tmp_path, caplog, damage):
    older = write_bytes(tmp_path, b"state at 5", meta(height=5))
    newest = write_bytes(tmp_path, b"state at 9 " * 20, meta(height=9, term=3))
    data = bytearray(newest.read_bytes())
    if damage == "flip":
        data[len(data) // 2] ^= 0x10
    else:
        del data[len(data) - 30:]
    newest.write_bytes(data)

    with caplog.at_level(logging.ERROR, logger="josefine.snapshot.files"):
        found = latest_valid(tmp_path, node_id=3)
    assert found is not None and found.path == older and found.meta.base == BlockId(2, 5)
    (line,) = [r.getMessage() for r in caplog.records]
    assert line.startswith("node 3 skips corrupt snapshot " + newest.name), line


def test_strict_mode_refuses_a_corrupt_newest_snapshot(tmp_path):
    write_bytes(tmp_path, b"state at 5", meta(height=5))
    newest = write_bytes(tmp_path, b"state at 9", meta(height=9, term=3))
    assert latest_valid(tmp_path, strict=True).path == newest  # sound files: no refusal
    newest.write_bytes(newest.read_bytes()[:-1])
    with pytest.raises(CorruptSnapshotError) as info:
        latest_valid(tmp_path, strict=True, node_id=2)
    msg = str(info.value)
    assert info.value.path == newest and "truncated" in msg
    assert "node 2 refuses to start" in msg and "strict" in msg


def test_no_directory_or_no_snapshot_means_none(tmp_path):
    assert latest_valid(tmp_path / "missing") is None
    assert latest_valid(tmp_path, strict=True) is None
    assert prune(tmp_path / "missing") == []


def test_newest_is_chosen_by_height_then_term(tmp_path):
    for h, t in [(9, 1), (10, 1), (10, 2), (2, 5)]:
        write_bytes(tmp_path, b"s", meta(height=h, term=t))
    assert [p.name for p in list_snapshots(tmp_path)] == [
        snapshot_name(meta(h, t)) for h, t in [(10, 2), (10, 1), (9, 1), (2, 5)]]
    assert latest_valid(tmp_path).meta.base == BlockId(2, 10)


# ------------------------------------------------------------------------------- pruning


def test_prune_keeps_the_newest_valid_and_deletes_the_rest(tmp_path):
    paths = [write_bytes(tmp_path, b"s%d" % h, meta(height=h)) for h in range(1, 6)]
    assert sorted(prune(tmp_path, keep=2)) == paths[:3]
    assert sorted(tmp_path.iterdir()) == paths[3:]


def test_prune_never_counts_a_corrupt_snapshot_as_kept(tmp_path):
    paths = [write_bytes(tmp_path, b"s%d" % h, meta(height=h)) for h in range(1, 5)]
    paths[3].write_bytes(b"garbage")  # newest corrupt
    assert sorted(prune(tmp_path, keep=2)) == [paths[0], paths[3]]
    assert sorted(tmp_path.iterdir()) == paths[1:3]
    for p in paths[1:3]:
        p.write_bytes(p.read_bytes()[:-1])  # now nothing is valid: nothing valid is lost
    assert prune(tmp_path, keep=1) == sorted(paths[1:3], reverse=True)


def test_prune_does_not_reread_trusted_files(tmp_path):
    paths = [write_bytes(tmp_path, b"s%d" % h, meta(height=h)) for h in range(1, 4)]
    paths[2].write_bytes(b"not re-read")
    assert prune(tmp_path, keep=1, trusted=[paths[2]]) == paths[1::-1]


# ------------------------------------------------------------------------------- fsyncs


def record_commit(monkeypatch, module, directory: Path) -> tuple[list, Path]:
    """Write a snapshot with `module`'s writer; the fsyncs and renames, in order."""
    events: list[tuple] = []
    real_fsync, real_rename = os.fsync, os.rename

    def fsync(fd):
        st = os.fstat(fd)
        where = os.readlink(f"/proc/self/fd/{fd}")
        size = None if stat.S_ISDIR(st.st_mode) else st.st_size
        events.append(("fsync", where, size))
        real_fsync(fd)

    def rename(src, dst):
        events.append(("rename", os.path.realpath(src), os.path.realpath(dst)))
        real_rename(src, dst)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "rename", rename)
    with module.SnapshotWriter(directory, meta(), chunk_size=64) as w:
        w.write(b"y" * 1000)
    monkeypatch.undo()
    return events, w.path


def check_commit_order(events: list, final: Path) -> None:
    """File fsync (of the complete content) -> rename -> directory fsync, nothing else."""
    final = final.resolve()  # /proc/self/fd names real paths
    temp = str(final) + ".tmp"
    assert events == [
        ("fsync", temp, final.stat().st_size),
        ("rename", temp, str(final)),
        ("fsync", str(final.parent), None),
    ]


def test_commit_order_is_file_fsync_then_rename_then_directory_fsync(tmp_path, monkeypatch):
    events, final = record_commit(monkeypatch, files_mod, tmp_path)
    check_commit_order(events, final)


def test_prune_syncs_the_directory_after_deleting(tmp_path, monkeypatch):
    for h in range(1, 4):
        write_bytes(tmp_path, b"s", meta(height=h))
    events: list = []
    real_unlink, real_fsync = Path.unlink, os.fsync
    monkeypatch.setattr(Path, "unlink",
                        lambda p, missing_ok=False: (events.append(("unlink", p.name)),
                                                     real_unlink(p, missing_ok=missing_ok)))
    monkeypatch.setattr(os, "fsync", lambda fd: (events.append(("fsync",
                        os.readlink(f"/proc/self/fd/{fd}"))), real_fsync(fd)))
    prune(tmp_path, keep=1)
    assert events == [("unlink", snapshot_name(meta(height=2))),
                      ("unlink", snapshot_name(meta(height=1))),
                      ("fsync", str(tmp_path.resolve()))]


STEP1 = "os.fsync(f.fileno())  # durability step 1"
STEP2 = "os.rename(self.temp_path, self.path)  # durability step 2"
STEP3 = "_fsync_dir(self.directory)  # durability step 3"
MUTANTS = {
    "no file fsync": [(STEP1, "pass  #")],
    "rename before file fsync": [(STEP1, "os.rename(self.temp_path, self.path); " + STEP1),
                                 (STEP2, "pass  #")],
    "fsync before the buffered bytes are flushed": [("f.flush()\n", "\n")],
    "no directory fsync": [(STEP3, "pass  #")],
}


@pytest.mark.parametrize("name", sorted(MUTANTS))
def test_commit_order_check_catches_a_broken_writer(tmp_path, monkeypatch, name):
    """The order test above is not vacuous: each mutant still writes a readable snapshot,
    but with a durability bug a power loss would expose, and the check rejects it."""
    src = Path(files_mod.__file__).read_text()
    for old, new in MUTANTS[name]:
        assert src.count(old) == 1, old
        src = src.replace(old, new)
    mutant = types.ModuleType("josefine.snapshot._mutant")
    mutant.__file__ = "<mutant>"
    monkeypatch.setitem(sys.modules, mutant.__name__, mutant)
    exec(compile(src, f"<mutant: {name}>", "exec"), mutant.__dict__)
    events, final = record_commit(monkeypatch, mutant, tmp_path)
    assert verify(final).body_length == 1000  # the bug is invisible without a power loss
    with pytest.raises(AssertionError):
        check_commit_order(events, final)
