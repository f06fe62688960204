"""Process helpers for the launcher: children that cannot outlive it.

A node process started by `spawn_node` asks the kernel (Linux
``prctl(PR_SET_PDEATHSIG, SIGKILL)``) to SIGKILL it when its parent goes
away. That is what keeps a launcher that is itself SIGKILLed (or crashes)
from leaving orphaned nodes holding ports and LevelDB locks; a signal handler
or `atexit` hook cannot help there, since neither runs under SIGKILL.

NB: the kernel's "parent" here is the **thread** that forked the child, not
the process. If that thread exits while the process lives on, the child is
killed at once. So spawn only from the main thread or from one long-lived
supervisor thread (the launcher spawns every node, restarts included, from its
supervisor thread), never from a short-lived worker thread or thread pool.

The child runs in a new session (``start_new_session=True``): a Ctrl-C in the
launcher's terminal reaches only the launcher, which then stops the nodes
gracefully in order. Signals are sent to the child's whole process group, so
anything a node starts goes down with it.

Outside Linux there is no PDEATHSIG; `spawn_node` still works but only a
graceful launcher exit stops the children (`pdeathsig_supported()` says which).
"""
from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path

__all__ = [
    "pdeathsig_supported",
    "pid_alive",
    "process_state",
    "signal_process",
    "spawn_node",
    "terminate",
    "terminate_all",
    "wait_gone",
]

_PR_SET_PDEATHSIG = 1  # from <linux/prctl.h>


def _load_prctl() -> Callable[..., int] | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        prctl = libc.prctl
    except (OSError, AttributeError):
        return None
    prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]
    prctl.restype = ctypes.c_int
    return prctl


# Resolved once at import: between fork and exec the child may only do
# async-signal-safe work, so preexec_fn must not dlopen or import anything.
_PRCTL = _load_prctl()


def pdeathsig_supported() -> bool:
    """True where children are SIGKILLed when their spawning thread dies."""
    return _PRCTL is not None


def _child_setup(parent_pid: int) -> Callable[[], None]:
    prctl = _PRCTL
    sigkill = int(signal.SIGKILL)

    def preexec() -> None:  # runs in the child, after fork, before exec
        if prctl is None:
            return
        if prctl(_PR_SET_PDEATHSIG, sigkill, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG) failed")
        # The parent may have died between fork() and prctl(); then no signal
        # will ever come, and we were already reparented. Die now instead.
        if os.getppid() != parent_pid:
            os.kill(os.getpid(), sigkill)

    return preexec


def spawn_node(
    cmd: Sequence[str],
    log_path: str | os.PathLike[str],
    env: Mapping[str, str] | None = None,
    *,
    cwd: str | os.PathLike[str] | None = None,
) -> subprocess.Popen[bytes]:
    """Start `cmd` with stdout and stderr appended to `log_path`.

    The child gets stdin from /dev/null, a new session, and (on Linux) a
    parent-death SIGKILL. See the module docstring for the thread rule.

    Args:
        cmd: program and arguments.
        log_path: file to append output to; created with its parent directories.
        env: the child's complete environment; None inherits ours.
        cwd: working directory for the child.

    Raises:
        OSError: the program cannot be started.
    """
    log_path = Path(log_path)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y-%m-%d %H:%M:%S")
    with open(log_path, "ab", buffering=0) as log:
        log.write(f"--- {stamp} launcher (pid {os.getpid()}) starts: {' '.join(map(str, cmd))}\n".encode())
        return subprocess.Popen(
            list(map(str, cmd)),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=dict(env) if env is not None else None,
            cwd=cwd,
            close_fds=True,
            start_new_session=True,
            preexec_fn=_child_setup(os.getpid()),
        )


def signal_process(proc: subprocess.Popen[bytes], sig: int) -> bool:
    """Send `sig` to `proc`'s process group (or just `proc` if it leads none).

    Returns:
        False if the process has already exited, else True.
    """
    if proc.poll() is not None:
        return False
    try:
        # Not reaped yet (poll() said so), so the pid cannot have been reused.
        if os.getpgid(proc.pid) == proc.pid:
            os.killpg(proc.pid, sig)
        else:
            os.kill(proc.pid, sig)
    except ProcessLookupError:
        return False
    return True


def terminate(proc: subprocess.Popen[bytes], grace_s: float = 5.0) -> int:
    """SIGTERM `proc`, then SIGKILL it if it is still alive after `grace_s`.

    A SIGSTOPped process is continued so it can act on the SIGTERM.

    Returns:
        The exit status (negative: killed by that signal).
    """
    terminate_all([proc], grace_s)
    return proc.wait()


def terminate_all(
    procs: Iterable[subprocess.Popen[bytes]],
    grace_s: float = 5.0,
    *,
    hurry: Callable[[], bool] | None = None,
) -> None:
    """SIGTERM every process in order, then SIGKILL the stragglers.

    All processes share one grace period. Returns once every one has exited
    and been reaped.

    Args:
        procs: processes to stop, in the order to signal them.
        grace_s: how long to wait for a graceful exit.
        hurry: polled while waiting; when it returns True the grace period
            ends at once (e.g. a second Ctrl-C).
    """
    procs = list(procs)
    for proc in procs:
        if signal_process(proc, signal.SIGTERM):
            signal_process(proc, signal.SIGCONT)
    deadline = time.monotonic() + grace_s
    while any(p.poll() is None for p in procs):
        if time.monotonic() >= deadline or (hurry is not None and hurry()):
            break
        time.sleep(0.02)
    for proc in procs:
        signal_process(proc, signal.SIGKILL)
    for proc in procs:
        proc.wait()


def process_state(pid: int) -> str | None:
    """The kernel's one-letter state of `pid` (R, S, D, T, Z, ...), or None if gone.

    Linux only (reads /proc); elsewhere returns "?" for a live pid.
    """
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read().decode(errors="replace")
    except FileNotFoundError:
        return None
    except OSError:
        return "?" if _kill0(pid) else None
    # The command name (field 2) is in parentheses and may contain spaces or ')'.
    rest = stat[stat.rfind(")") + 1 :].split()
    return rest[0] if rest else None


def _kill0(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def pid_alive(pid: int) -> bool:
    """True if `pid` names a process that has not exited.

    A zombie (exited, not yet reaped by its parent) counts as gone: an orphan
    reparented to an init that never reaps stays a zombie forever.
    """
    if not _kill0(pid):
        return False
    return process_state(pid) not in (None, "Z", "X")


def wait_gone(pids: Iterable[int], timeout_s: float, poll_s: float = 0.02) -> set[int]:
    """Poll until none of `pids` is alive or `timeout_s` passes.

    Returns:
        The pids still alive (empty on success).
    """
    alive = set(pids)
    deadline = time.monotonic() + timeout_s
    while True:
        alive = {p for p in alive if pid_alive(p)}
        if not alive or time.monotonic() >= deadline:
            return alive
        time.sleep(poll_s)
