"""Mount a filesystem that forgets unsynced writes, and cut its power (docs/powerloss.md).

    with PowerLossFS.mount(backing, mountpoint) as fs:
        ...                        # a node writes under mountpoint
        kill the node (SIGKILL)
        fs.cut_power()             # everything not fsynced is gone, in the mount and backing
        ...                        # restart the node on the same mount

The filesystem runs as its own process (`josefine.chaos.powerfs_main`, pyfuse3), so a
node under test can be killed without touching it, and the mount survives a cut: no
remount between a cut and the node's restart. This module only starts, talks to and
stops that process; it does not import pyfuse3, so the chaos harness can import it on a
machine without FUSE and ask `unavailable()` why it cannot be used.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import TracebackType
from typing import Any, Sequence

__all__ = ["PowerLossFS", "PowerFSError", "unavailable"]


class PowerFSError(RuntimeError):
    pass


def unavailable() -> str | None:
    """Why a power-loss mount cannot work here, or None if it can."""
    if not os.path.exists("/dev/fuse"):
        return "/dev/fuse is absent (no FUSE in this kernel or container)"
    try:
        import pyfuse3  # noqa: F401
    except ImportError as exc:
        return f"pyfuse3 is not installed ({exc}); pip install '.[powerloss]'"
    return None


def _mounted(path: Path) -> bool:
    """From /proc/mounts, not os.path.ismount: stat on a dead FUSE mount fails."""
    target = str(path.resolve()).replace(" ", "\\040")   # as /proc/mounts escapes it
    with open("/proc/mounts") as f:
        return any(line.split()[1] == target for line in f)


def _umount(path: Path, lazy: bool = False) -> bool:
    tool = ["fusermount3", "-u"] if shutil.which("fusermount3") else ["umount"]
    cmd = tool + (["-z"] if lazy and tool[0] == "fusermount3" else ["-l"] if lazy else [])
    return subprocess.run(cmd + [str(path)], capture_output=True).returncode == 0


def _strict_args(strict_dirs: bool | Sequence[str]) -> list[str]:
    if isinstance(strict_dirs, bool):
        return ["--strict-dirs"] if strict_dirs else []
    if isinstance(strict_dirs, str):
        raise TypeError("strict_dirs: give a list of relative paths, not one string")
    return [arg for d in strict_dirs for arg in ("--strict-dir", d)]


class PowerLossFS:
    """A live power-loss mount: its process, its control socket, and how to stop both."""

    def __init__(self, proc: subprocess.Popen[bytes], backing: Path, mountpoint: Path,
                 workdir: Path) -> None:
        self.proc = proc
        self.backing = backing
        self.mountpoint = mountpoint
        self._workdir = workdir
        self.control = workdir / "control.sock"
        self.log = workdir / "powerfs.log"

    @classmethod
    def mount(cls, backing: str | os.PathLike[str], mountpoint: str | os.PathLike[str], *,
              strict_dirs: bool | Sequence[str] = False, timeout: float = 15.0
              ) -> "PowerLossFS":
        """Start the FS process over ``backing`` and return once the mount answers.

        Both directories must exist. ``strict_dirs=True``: a create, rename or unlink is
        lost in a cut unless a directory it touched was fsynced since; a list of paths
        relative to the mount: the same, only inside those subtrees; False: names are
        durable at once. The control socket and the process's log live in a
        private temp directory, outside the mount, removed again by `unmount`.
        """
        reason = unavailable()
        if reason is not None:
            raise PowerFSError(reason)
        backing, mountpoint = Path(backing).resolve(), Path(mountpoint).resolve()
        workdir = Path(tempfile.mkdtemp(prefix="powerfs-"))
        log = open(workdir / "powerfs.log", "wb")
        try:
            proc = subprocess.Popen(
                [sys.executable, "-m", "josefine.chaos.powerfs_main", str(backing),
                 str(mountpoint), "--control", str(workdir / "control.sock")]
                + _strict_args(strict_dirs),
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
        finally:
            log.close()
        fs = cls(proc, backing, mountpoint, workdir)
        try:
            fs._wait_live(timeout)
        except BaseException:
            fs.unmount()
            raise
        return fs

    def _wait_live(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise PowerFSError(f"powerfs exited with {self.proc.returncode}: "
                                   f"{self.log.read_text(errors='replace')[-2000:]}")
            if os.path.ismount(self.mountpoint) and self.control.exists():
                try:
                    self.stats()
                    return
                except OSError:
                    pass                 # bound but not yet listening
            if time.monotonic() > deadline:
                raise PowerFSError(f"{self.mountpoint} not mounted within {timeout} s")
            time.sleep(0.02)

    def _ask(self, cmd: str) -> dict[str, Any]:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(10.0)
            s.connect(str(self.control))
            s.sendall(cmd.encode() + b"\n")
            data = b""
            while not data.endswith(b"\n"):
                chunk = s.recv(4096)
                if not chunk:
                    break
                data += chunk
        reply: dict[str, Any] = json.loads(data)
        if not reply.get("ok"):
            raise PowerFSError(f"powerfs refused {cmd!r}: {reply}")
        return reply

    def cut_power(self) -> int:
        """Drop every write and size change not yet fsynced; returns the bytes dropped.

        Stop (SIGKILL) the processes using the mount first: a process that keeps a file
        open across the cut may still see the kernel's cached pages of it until it
        reopens the file.
        """
        return int(self._ask("cut")["discarded_bytes"])

    def stats(self) -> dict[str, Any]:
        """Dirty files and bytes now; syncs, cuts and discarded bytes so far."""
        return self._ask("stats")

    def unmount(self, timeout: float = 15.0) -> None:
        """Unmount (unsynced data is written back, as at a clean shutdown) and end the
        process; falls back to SIGKILL and a lazy unmount, so nothing is left behind."""
        if self.proc.poll() is None and _mounted(self.mountpoint):
            _umount(self.mountpoint)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if _mounted(self.mountpoint):
            _umount(self.mountpoint, lazy=True)
        shutil.rmtree(self._workdir, ignore_errors=True)

    def __enter__(self) -> "PowerLossFS":
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.unmount()
