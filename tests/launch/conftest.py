"""Fixtures for launcher tests: free loopback ports, fake node commands, cleanup by pid.

The real node entry point (josefine.launch.node) is not needed here: every
Launcher gets a `node_cmd` that runs a tiny Python script instead.
"""
from __future__ import annotations

import io
import os
import signal
import socket
import sys
import time
from pathlib import Path

import pytest

from josefine.launch.cluster import Launcher
from josefine.launch.procutil import pid_alive

# A fake node: exits 0 on SIGTERM, otherwise sleeps; prints its config path.
SLEEPER = (
    "import signal, sys, time\n"
    "signal.signal(signal.SIGTERM, lambda *a: sys.exit(0))\n"
    "print('fake', 'node', sys.argv[1], flush=True)  # marker absent from the command line\n"
    "time.sleep(600)\n"
)
# A fake node that ignores SIGTERM, so only SIGKILL stops it.
STUBBORN = (
    "import signal, time\n"
    "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
    "time.sleep(600)\n"
)


def script_cmd(script: str):
    """node_cmd for Launcher: run `script` with the config path as argv[1]."""
    return lambda config_path: [sys.executable, "-c", script, str(config_path)]


def _port_free(port: int) -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


@pytest.fixture
def free_base_port():
    """Return a function n -> base port with n consecutive free loopback ports."""

    def find(n: int) -> int:
        for _ in range(200):
            with socket.socket() as s:
                s.bind(("127.0.0.1", 0))
                base = s.getsockname()[1]
            if base + n <= 65535 and all(_port_free(base + k) for k in range(n)):
                return base
        raise RuntimeError("no free port range")

    return find


@pytest.fixture
def reap_pids():
    """A set of pids to SIGKILL at teardown (whatever the test left behind)."""
    pids: set[int] = set()
    yield pids
    for pid in pids:
        if pid_alive(pid):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


@pytest.fixture
def make_launcher(tmp_path: Path, free_base_port, reap_pids):
    """Build Launchers with fake nodes; each is stopped and its nodes killed at teardown."""
    made: list[Launcher] = []

    def make(nodes: int = 3, script: str = SLEEPER, data_dir: Path | None = None, **kwargs) -> Launcher:
        kwargs.setdefault("out", io.StringIO())
        launcher = Launcher(
            nodes,
            data_dir or tmp_path / "cluster",
            kwargs.pop("base_port", None) or free_base_port(nodes),
            node_cmd=kwargs.pop("node_cmd", None) or script_cmd(script),
            **kwargs,
        )
        made.append(launcher)
        return launcher

    yield make
    for launcher in made:
        reap_pids.update(p for p in launcher.pids().values() if p)
        try:
            launcher.stop(grace_s=0.5)
        except Exception:  # noqa: BLE001 - cleanup must go on
            pass


def poll(predicate, timeout_s: float = 10.0, interval_s: float = 0.02):
    """Wait until predicate() is truthy; return its value or fail the test."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            pytest.fail(f"condition not met within {timeout_s} s: {predicate}")
        time.sleep(interval_s)


@pytest.fixture
def wait_for():
    return poll
