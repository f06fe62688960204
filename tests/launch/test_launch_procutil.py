"""procutil: children die with their spawning thread, terminate escalates, zombies count as gone."""
from __future__ import annotations

import signal
import subprocess
import sys
import threading
import time

import pytest

from josefine.launch import procutil

pytestmark = [
    pytest.mark.timeout(120),
    pytest.mark.skipif(not procutil.pdeathsig_supported(), reason="needs Linux PR_SET_PDEATHSIG"),
]

SLEEP = [sys.executable, "-c", "import time; time.sleep(600)"]
IGNORE_TERM = [sys.executable, "-c",
               "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); print('rea' + 'dy', flush=True); "
               "time.sleep(600)"]


@pytest.fixture
def procs():
    started: list[subprocess.Popen] = []
    yield started
    for p in started:
        if p.poll() is None:
            p.kill()
        p.wait()


def test_spawn_appends_output_to_log(tmp_path, procs):
    log = tmp_path / "sub" / "node.log"
    for word in ("one", "two"):
        p = procutil.spawn_node([sys.executable, "-c", f"print({word!r})"], log)
        procs.append(p)
        assert p.wait(30) == 0
    text = log.read_text()
    assert text.index("one") < text.index("two")
    assert text.count("launcher (pid") == 2


def test_child_runs_in_its_own_session(tmp_path, procs):
    import os

    p = procutil.spawn_node(SLEEP, tmp_path / "log")
    procs.append(p)
    assert os.getsid(p.pid) == p.pid != os.getsid(0)


def test_terminate_escalates_to_sigkill(tmp_path, procs):
    log = tmp_path / "log"
    p = procutil.spawn_node(IGNORE_TERM, log)
    procs.append(p)
    deadline = time.monotonic() + 30
    while "ready" not in log.read_text() and time.monotonic() < deadline:
        time.sleep(0.02)
    t0 = time.monotonic()
    assert procutil.terminate(p, grace_s=0.3) == -signal.SIGKILL
    assert time.monotonic() - t0 >= 0.3


def test_terminate_continues_a_stopped_process(tmp_path, procs):
    p = procutil.spawn_node(SLEEP, tmp_path / "log")
    procs.append(p)
    procutil.signal_process(p, signal.SIGSTOP)
    assert procutil.terminate(p, grace_s=10) == -signal.SIGTERM


def test_child_dies_when_spawning_thread_exits(tmp_path, procs):
    """PR_SET_PDEATHSIG follows the *thread* that forked: the rule the launcher is built on."""
    holder: list[subprocess.Popen] = []
    t = threading.Thread(target=lambda: holder.append(procutil.spawn_node(SLEEP, tmp_path / "log")))
    t.start()
    t.join()
    procs.extend(holder)
    assert holder[0].wait(timeout=10) == -signal.SIGKILL


def test_zombie_counts_as_gone(tmp_path, procs):
    p = procutil.spawn_node([sys.executable, "-c", "pass"], tmp_path / "log")
    procs.append(p)
    deadline = time.monotonic() + 30
    while procutil.process_state(p.pid) != "Z" and time.monotonic() < deadline:
        time.sleep(0.01)
    assert procutil.process_state(p.pid) == "Z"  # exited, not reaped yet
    assert not procutil.pid_alive(p.pid)
    assert procutil.wait_gone([p.pid], 1.0) == set()
    assert p.wait() == 0
    assert procutil.process_state(p.pid) is None
    assert not procutil.signal_process(p, signal.SIGTERM)
