"""The power-loss filesystem: unsynced data dies in a cut, synced data lives, and a
LevelDB store that skips its fsync is caught. Real FUSE mounts (needs /dev/fuse)."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import plyvel
import pytest

from josefine.chain.leveldb import LevelDBStore
from josefine.chaos.powerfs import PowerLossFS

pytestmark = [
    pytest.mark.timeout(90),
    pytest.mark.skipif(not os.path.exists("/dev/fuse"),
                       reason="/dev/fuse is absent: this kernel or container has no FUSE"),
]


@pytest.fixture(params=[False, True], ids=["names-at-once", "strict-dirs"])
def any_fs(request, tmp_path):
    """For the tests that hold in both models of names."""
    (tmp_path / "backing").mkdir()
    (tmp_path / "mnt").mkdir()
    with PowerLossFS.mount(tmp_path / "backing", tmp_path / "mnt",
                           strict_dirs=request.param) as handle:
        yield handle


@pytest.fixture
def fs(tmp_path):
    (tmp_path / "backing").mkdir()
    (tmp_path / "mnt").mkdir()
    with PowerLossFS.mount(tmp_path / "backing", tmp_path / "mnt") as handle:
        yield handle


def _write(path: Path, data: bytes, *, fsync: bool, mode: str = "wb") -> None:
    with open(path, mode) as f:
        f.write(data)
        f.flush()
        if fsync:
            os.fsync(f.fileno())


def _both(fs: PowerLossFS, name: str) -> tuple[bytes, bytes]:
    """The file as the mount shows it and as the backing directory holds it."""
    return (fs.mountpoint / name).read_bytes(), (fs.backing / name).read_bytes()


# ---------------------------------------------------------------------- (1) plain files

def test_unsynced_write_is_visible_then_lost_in_a_cut(fs):
    _write(fs.mountpoint / "f", b"a" * 10_000, fsync=False)
    assert _both(fs, "f") == (b"a" * 10_000, b"")     # readers see it; the disk has not
    assert fs.cut_power() >= 10_000
    assert _both(fs, "f") == (b"", b"")


def test_fsynced_write_survives_a_cut(fs):
    _write(fs.mountpoint / "f", b"b" * 10_000, fsync=True)
    assert fs.cut_power() == 0
    assert _both(fs, "f") == (b"b" * 10_000, b"b" * 10_000)


def test_cut_keeps_exactly_what_was_synced(fs):
    first, second = os.urandom(6000), os.urandom(7000)   # the boundary falls mid-page
    with open(fs.mountpoint / "log", "wb") as f:
        f.write(first)
        f.flush()
        os.fdatasync(f.fileno())
        f.write(second)
        f.flush()
        assert (fs.mountpoint / "log").read_bytes() == first + second
    assert fs.cut_power() > 0
    assert _both(fs, "log") == (first, first)
    _write(fs.mountpoint / "log", b"tail", fsync=False, mode="ab")   # O_APPEND after a cut
    assert (fs.mountpoint / "log").read_bytes() == first + b"tail"


def test_truncate_is_data_held_until_fsync(fs):
    original = os.urandom(10_000)
    _write(fs.mountpoint / "f", original, fsync=True)
    with open(fs.mountpoint / "f", "r+b") as f:
        f.truncate(100)
        f.seek(8000)
        f.write(b"z")
        f.flush()
    # The cut-off bytes read as zeros when the file grows again, not as stale disk data.
    assert (fs.mountpoint / "f").read_bytes() == original[:100] + bytes(7900) + b"z"
    fs.cut_power()
    assert _both(fs, "f") == (original, original)
    with open(fs.mountpoint / "f", "r+b") as f:
        f.truncate(100)
        os.fsync(f.fileno())
    fs.cut_power()
    assert _both(fs, "f") == (original[:100], original[:100])


def test_metadata_passes_through_but_data_of_a_renamed_file_needs_its_fsync(fs):
    """docs/powerloss.md: names are durable at once; contents only after fsync."""
    _write(fs.mountpoint / "snap.tmp", b"good", fsync=True)
    os.rename(fs.mountpoint / "snap.tmp", fs.mountpoint / "snap")
    _write(fs.mountpoint / "lazy.tmp", b"lost", fsync=False)
    os.rename(fs.mountpoint / "lazy.tmp", fs.mountpoint / "lazy")
    fs.cut_power()
    assert sorted(os.listdir(fs.mountpoint)) == ["lazy", "snap"]
    assert _both(fs, "snap") == (b"good", b"good")
    assert _both(fs, "lazy") == (b"", b"")


# ---------------------------------------------------------------------- strict directories

@pytest.fixture
def strict_fs(tmp_path):
    (tmp_path / "backing").mkdir()
    (tmp_path / "mnt").mkdir()
    with PowerLossFS.mount(tmp_path / "backing", tmp_path / "mnt", strict_dirs=True) as handle:
        yield handle


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _replace(fs: PowerLossFS, name: str, data: bytes, *, fsync_dir: bool) -> None:
    """Write ``name`` as snapshots and LevelDB's CURRENT are: temp, fsync, rename."""
    _write(fs.mountpoint / (name + ".tmp"), data, fsync=True)
    os.rename(fs.mountpoint / (name + ".tmp"), fs.mountpoint / name)
    if fsync_dir:
        _fsync_dir(fs.mountpoint)


def _visible(fs: PowerLossFS) -> list[str]:
    return sorted(os.listdir(fs.mountpoint))


def test_strict_dirs_a_rename_without_a_directory_fsync_is_undone(strict_fs):
    fs = strict_fs
    _replace(fs, "CURRENT", b"MANIFEST-1", fsync_dir=True)
    _replace(fs, "CURRENT", b"MANIFEST-2", fsync_dir=False)
    assert (fs.mountpoint / "CURRENT").read_bytes() == b"MANIFEST-2"
    assert fs.stats()["pending_names"] == 2                  # create of the temp, rename
    fs.cut_power()
    assert _visible(fs) == ["CURRENT"]                       # the temp's create undone too
    assert (fs.mountpoint / "CURRENT").read_bytes() == b"MANIFEST-1"
    assert fs.stats()["undo_failed"] == 0


def test_strict_dirs_a_directory_fsync_makes_names_durable(strict_fs):
    fs = strict_fs
    _replace(fs, "CURRENT", b"MANIFEST-1", fsync_dir=True)
    _replace(fs, "CURRENT", b"MANIFEST-2", fsync_dir=True)
    (fs.mountpoint / "sub").mkdir()
    _fsync_dir(fs.mountpoint)
    fs.cut_power()
    assert _visible(fs) == ["CURRENT", "sub"]
    assert (fs.mountpoint / "CURRENT").read_bytes() == b"MANIFEST-2"


def test_strict_dirs_unlink_and_mkdir_are_undone_without_a_directory_fsync(strict_fs):
    fs = strict_fs
    _write(fs.mountpoint / "keep", b"synced", fsync=True)
    _fsync_dir(fs.mountpoint)
    os.unlink(fs.mountpoint / "keep")
    (fs.mountpoint / "newdir").mkdir()
    assert _visible(fs) == ["newdir"]                        # the graveyard stays hidden
    fs.cut_power()
    assert _visible(fs) == ["keep"]
    assert (fs.mountpoint / "keep").read_bytes() == b"synced"
    os.unlink(fs.mountpoint / "keep")
    _fsync_dir(fs.mountpoint)
    fs.cut_power()
    assert _visible(fs) == []


# ---------------------------------------------------------------------- (2) LevelDB

_STORE_CHILD = """
import os, sys
from josefine.chain.block import BlockKind, genesis, make_block
from josefine.chain.leveldb import LevelDBStore
path, synced, unsynced, fsync_dirs = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
payload = bytes(int(sys.argv[5]))
store = LevelDBStore(path, "c1")
if fsync_dirs == "yes":         # make LevelDB's renames and unlinks of this open durable
    for d in (path, os.path.dirname(path)):
        fd = os.open(d, os.O_RDONLY | os.O_DIRECTORY)
        os.fsync(fd)
        os.close(fd)
parent = max(store.load().blocks.values(), key=lambda b: b.id.height)
for i in range(synced + unsynced):
    block = make_block(parent, 1, BlockKind.NOOP, payload)
    store.write(blocks=[block], head=block.id, sync=i < synced)
    parent = block
print("written", flush=True)
sys.stdin.read()            # hold the store open until SIGKILLed: no close, no flush
"""


def _crash_after_writing(path: Path, synced: int, unsynced: int, fsync_dirs: bool = False,
                         payload: int = 0) -> None:
    """Open the store and append blocks after its head in a child that is SIGKILLed with
    the store open, as a node dies."""
    child = subprocess.Popen([sys.executable, "-c", _STORE_CHILD, str(path), str(synced),
                              str(unsynced), "yes" if fsync_dirs else "no", str(payload)],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    try:
        assert child.stdout is not None
        assert child.stdout.readline() == b"written\n"
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()


def _heights(path: Path) -> list[int]:
    with LevelDBStore(path, "c1") as store:
        return sorted(bid.height for bid in store.load().blocks)


def _strict(fs: PowerLossFS) -> bool:
    """In strict mode the children fsync the store's directory after opening it: LevelDB
    1.22 does not (test_leveldb_fresh_store_needs_a_directory_fsync)."""
    return "--strict-dirs" in fs.proc.args


def test_leveldb_synced_blocks_survive_and_unsynced_ones_die(any_fs):
    fs = any_fs
    _crash_after_writing(fs.mountpoint / "chain", synced=5, unsynced=3, fsync_dirs=_strict(fs))
    fs.cut_power()
    assert _heights(fs.mountpoint / "chain") == list(range(6))   # genesis + 5 synced


def test_leveldb_without_sync_loses_everything_in_a_cut(fs):
    """The proof that the FS catches a store that skips its fsync. A write-through FS
    would keep the blocks (the kill alone does not lose them, see the next test)."""
    _crash_after_writing(fs.mountpoint / "chain", synced=0, unsynced=8)
    assert fs.cut_power() > 0
    assert _heights(fs.mountpoint / "chain") == [0]


def test_leveldb_without_sync_survives_a_kill_without_a_cut(fs):
    """Control for the test above: the unsynced blocks did reach the filesystem."""
    _crash_after_writing(fs.mountpoint / "chain", synced=0, unsynced=8)
    assert _heights(fs.mountpoint / "chain") == list(range(9))


def test_leveldb_with_sync_loses_nothing_in_a_cut(any_fs):
    fs = any_fs
    _crash_after_writing(fs.mountpoint / "chain", synced=8, unsynced=0, fsync_dirs=_strict(fs))
    fs.cut_power()
    assert _heights(fs.mountpoint / "chain") == list(range(9))


def test_leveldb_survives_crash_cycles_after_reopening(any_fs):
    """Every reopen writes a new MANIFEST, renames CURRENT and deletes the old files."""
    fs = any_fs
    path = fs.mountpoint / "chain"
    for cycle in range(1, 5):
        _crash_after_writing(path, synced=3, unsynced=2, fsync_dirs=_strict(fs))
        fs.cut_power()
        assert _heights(path) == list(range(3 * cycle + 1))


def test_leveldb_reopened_without_a_directory_fsync_survives_a_strict_cut(strict_fs):
    """After a reopen LevelDB renames CURRENT to a new MANIFEST without a directory
    fsync; LevelDBStore syncs the directory after opening, so no name is left pending,
    and the cut takes nothing back."""
    path = strict_fs.mountpoint / "chain"
    _crash_after_writing(path, synced=3, unsynced=0, fsync_dirs=True)
    strict_fs.cut_power()
    _crash_after_writing(path, synced=3, unsynced=0)
    assert strict_fs.stats()["pending_names"] == 0
    strict_fs.cut_power()
    assert _heights(path) == list(range(7))


def test_leveldb_fresh_store_survives_a_strict_cut(strict_fs):
    """LevelDB 1.22 creates a store without syncing MANIFEST-000001, then points CURRENT at
    MANIFEST-000002 and deletes 000001 without a directory fsync: undone by a strict cut,
    CURRENT would name an empty manifest ('no meta-nextfile entry'). LevelDBStore syncs
    its directory after opening, so the store opens with every synced block."""
    _crash_after_writing(strict_fs.mountpoint / "chain", synced=3, unsynced=0)
    strict_fs.cut_power()
    assert _heights(strict_fs.mountpoint / "chain") == list(range(4))


def test_strict_subtree_holds_back_names_there_only(tmp_path):
    """The chaos use: snapshot files in a strict subtree, LevelDB (which leaves some of
    its renames and new files without a directory fsync, docs/powerloss.md) beside it."""
    (tmp_path / "b").mkdir()
    (tmp_path / "m").mkdir()
    with PowerLossFS.mount(tmp_path / "b", tmp_path / "m", strict_dirs=["snapshots"]) as fs:
        (fs.mountpoint / "snapshots").mkdir()                # made in the root: not strict
        _crash_after_writing(fs.mountpoint / "chain", synced=500, unsynced=0, payload=10_000)
        # Past a memtable switch (~5 MB): a new log and a table file, made without a
        # directory fsync, outside the strict subtree.
        assert any(n.endswith(".ldb") for n in os.listdir(fs.mountpoint / "chain"))
        _replace(fs, "snapshots/snap-1", b"one", fsync_dir=False)
        _fsync_dir(fs.mountpoint / "snapshots")
        _replace(fs, "snapshots/snap-2", b"two", fsync_dir=False)
        _replace(fs, "meta", b"root", fsync_dir=False)
        fs.cut_power()
        assert sorted(os.listdir(fs.mountpoint)) == ["chain", "meta", "snapshots"]
        assert os.listdir(fs.mountpoint / "snapshots") == ["snap-1"]
        assert (fs.mountpoint / "meta").read_bytes() == b"root"
        assert _heights(fs.mountpoint / "chain") == list(range(501))


# ---------------------------------------------------------------------- (3) cleanup

def _in_proc_mounts(path: Path) -> bool:
    with open("/proc/mounts") as f:
        return any(line.split()[1] == str(path.resolve()) for line in f)


def test_context_manager_leaves_no_mount_and_no_process(tmp_path):
    (tmp_path / "b").mkdir()
    (tmp_path / "m").mkdir()
    with pytest.raises(RuntimeError, match="test body failed"):
        with PowerLossFS.mount(tmp_path / "b", tmp_path / "m") as fs:
            assert _in_proc_mounts(tmp_path / "m")
            _write(tmp_path / "m" / "f", b"x", fsync=False)
            raise RuntimeError("test body failed")
    assert not _in_proc_mounts(tmp_path / "m")
    assert fs.proc.returncode is not None
    with pytest.raises(ProcessLookupError):
        os.kill(fs.proc.pid, 0)
    # A clean unmount writes back what was cached, as a clean shutdown does.
    assert (tmp_path / "b" / "f").read_bytes() == b"x"


def test_unmount_cleans_up_after_the_fs_process_died(tmp_path):
    (tmp_path / "b").mkdir()
    (tmp_path / "m").mkdir()
    fs = PowerLossFS.mount(tmp_path / "b", tmp_path / "m")
    fs.proc.kill()
    fs.proc.wait()
    assert _in_proc_mounts(tmp_path / "m")         # a dead FUSE daemon leaves its mount
    fs.unmount()
    assert not _in_proc_mounts(tmp_path / "m")
