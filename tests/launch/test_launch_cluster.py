"""Launcher with fake node processes: config files, supervision, stop, and no orphans."""
from __future__ import annotations

import io
import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time

import pytest

from josefine.config import ConfigError, load_cluster_config, load_node_config
from josefine.launch.cluster import LaunchError, Launcher
from josefine.launch.procutil import pid_alive, process_state, wait_gone

pytestmark = pytest.mark.timeout(120)

STUBBORN = ("import signal, time\nsignal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
            "print('stub' + 'born', flush=True)\ntime.sleep(600)\n")
CRASHER = "import sys\nsys.exit(3)\n"


def _new_pid(launcher, node_id, old):
    pid = launcher.pid(node_id)
    return pid if pid not in (None, old) else None


def test_writes_cluster_and_node_configs(make_launcher, tmp_path):
    out = io.StringIO()
    launcher = make_launcher(3, fault_injection=True, fsync=False, tick_ms=7,
                             node_overrides={2: {"log_level": "DEBUG"}}, out=out)
    launcher.start()
    base = launcher.base_port
    cluster = load_cluster_config(tmp_path / "cluster" / "cluster.toml")
    assert cluster.cluster_id == launcher.cluster_id and len(cluster.cluster_id) == 12
    assert cluster.addresses() == [f"tcp://127.0.0.1:{base + k}" for k in range(3)]
    for i in (1, 2, 3):
        node_dir = tmp_path / "cluster" / f"node-{i}"
        config = load_node_config(node_dir / "node.toml")
        assert cluster.nodes[i].config_path == str(node_dir / "node.toml")
        assert config.node_id == i and config.cluster_id == cluster.cluster_id
        assert config.address == f"tcp://127.0.0.1:{base + i - 1}"
        assert config.peers == {j: f"tcp://127.0.0.1:{base + j - 1}" for j in (1, 2, 3) if j != i}
        assert config.data_dir == str(node_dir / "data") == cluster.nodes[i].data_dir
        assert (node_dir / "data").is_dir()
        assert config.fault_injection and not config.fsync and config.tick_ms == 7
        assert config.log_level == ("DEBUG" if i == 2 else "INFO")
        assert config == launcher.node_config(i)
    # Every fake node was handed its own node.toml.
    for i in (1, 2, 3):
        log = launcher.log_path(i)
        text = wait_text(log, "fake node")
        assert str(launcher.config_path(i)) in text
    pids = json.loads((tmp_path / "cluster" / "pids.json").read_text())
    assert pids["launcher"] == os.getpid()
    assert pids["nodes"] == {str(i): launcher.pid(i) for i in (1, 2, 3)}
    out = out.getvalue()
    for i in (1, 2, 3):
        assert f"node {i}  tcp://127.0.0.1:{base + i - 1}  pid {launcher.pid(i)}" in out


def wait_text(path, needle, timeout_s=30.0):
    deadline = time.monotonic() + timeout_s
    while True:
        text = path.read_text() if path.exists() else ""
        if needle in text or time.monotonic() >= deadline:
            return text
        time.sleep(0.02)


def wait_ready(launcher, *node_ids):
    """Wait until the fake nodes have installed their SIGTERM handler (they print 'fake node')."""
    for i in node_ids:
        assert "fake node" in wait_text(launcher.log_path(i), "fake node")


def test_relaunch_keeps_cluster_id_and_refuses_other_membership(make_launcher, tmp_path):
    first = make_launcher(3)
    first.start()
    first.stop()
    second = make_launcher(3, base_port=first.base_port)
    assert second.cluster_id == first.cluster_id
    with pytest.raises(LaunchError, match="changing membership"):
        make_launcher(5)


def test_killed_node_is_restarted(make_launcher, wait_for):
    launcher = make_launcher(3)
    launcher.start()
    old = launcher.pid(2)
    assert launcher.kill(2)
    new = wait_for(lambda: _new_pid(launcher, 2, old))
    assert new != old and pid_alive(new) and not pid_alive(old)
    assert launcher.restart_count(2) == 1 and launcher.restarts == {1: 0, 2: 1, 3: 0}
    (event,) = launcher.restart_events
    assert (event.node_id, event.exit_code, event.delay_s) == (2, -signal.SIGKILL, 0.2)
    wait_for(lambda: json.loads(launcher.pids_path.read_text())["nodes"]["2"] == new)


def test_killed_node_stays_down_when_restart_is_off(make_launcher, wait_for):
    launcher = make_launcher(2, restart=False)
    launcher.start()
    assert launcher.kill(1)
    wait_for(lambda: launcher.last_exit(1) == -signal.SIGKILL)
    assert launcher.pid(1) is None
    # Prove a negative: stay down well past the first backoff (0.2 s).
    time.sleep(1.0)
    assert launcher.pid(1) is None and launcher.restart_count(1) == 0
    assert launcher.pid(2) is not None
    assert not launcher.kill(1)


def test_restart_backoff_doubles(make_launcher, wait_for):
    launcher = make_launcher(1, script=CRASHER)
    launcher.start()
    wait_for(lambda: len(launcher.restart_events) >= 4, timeout_s=30)
    events = launcher.restart_events[:4]
    assert [e.delay_s for e in events] == [0.2, 0.4, 0.8, 1.6]
    assert all(e.exit_code == 3 for e in events)
    gaps = [b.at - a.at for a, b in zip(events, events[1:])]
    assert all(gap >= e.delay_s * 0.9 for gap, e in zip(gaps, events))


def test_stop_node_keeps_it_down_until_start_node(make_launcher, wait_for):
    launcher = make_launcher(3)
    launcher.start()
    old = launcher.pid(3)
    wait_ready(launcher, 3)
    assert launcher.stop_node(3) == 0  # the fake node exits 0 on SIGTERM
    assert launcher.pid(3) is None and not pid_alive(old)
    time.sleep(0.6)
    assert launcher.pid(3) is None and launcher.restart_count(3) == 0
    new = launcher.start_node(3)
    assert new != old and launcher.pid(3) == new
    assert launcher.start_node(3) == new  # already running: unchanged


def test_pause_and_resume(make_launcher, wait_for):
    launcher = make_launcher(1)
    launcher.start()
    pid = launcher.pid(1)
    assert launcher.pause(1)
    wait_for(lambda: process_state(pid) == "T")
    assert launcher.resume(1)
    wait_for(lambda: process_state(pid) in ("S", "R"))
    assert launcher.pid(1) == pid


def test_stop_leaves_no_process(make_launcher, wait_for, tmp_path):
    launcher = make_launcher(3)
    launcher.start()
    pids = [launcher.pid(i) for i in (1, 2, 3)]
    wait_ready(launcher, 1, 2, 3)
    launcher.pause(2)  # a paused node must still stop
    launcher.stop(grace_s=5)
    assert wait_gone(pids, 0) == set()
    assert launcher.pids() == {1: None, 2: None, 3: None}
    assert [launcher.last_exit(i) for i in (1, 2, 3)] == [0, 0, 0]  # graceful, via SIGTERM
    assert json.loads(launcher.pids_path.read_text())["nodes"] == {"1": None, "2": None, "3": None}
    assert launcher.wait(timeout=0)
    launcher.stop()  # idempotent


def test_stop_kills_nodes_that_ignore_sigterm(make_launcher):
    launcher = make_launcher(2, script=STUBBORN)
    launcher.start()
    pids = [launcher.pid(1), launcher.pid(2)]
    for i in (1, 2):  # the fakes have installed their SIG_IGN
        assert "stubborn" in wait_text(launcher.log_path(i), "stubborn")
    t0 = time.monotonic()
    launcher.stop(grace_s=0.5)
    assert time.monotonic() - t0 < 5
    assert wait_gone(pids, 0) == set()
    assert launcher.last_exit(1) == launcher.last_exit(2) == -signal.SIGKILL


def test_second_launcher_on_same_dir_is_refused(make_launcher, tmp_path):
    first = make_launcher(2)
    first.start()
    second = make_launcher(2, base_port=first.base_port + 10)
    with pytest.raises(LaunchError, match="another launcher is running"):
        second.start()
    assert first.pid(1) is not None


def test_taken_port_is_refused(make_launcher, free_base_port):
    base = free_base_port(2)
    with socket.socket() as s:
        s.bind(("127.0.0.1", base + 1))
        s.listen()
        launcher = make_launcher(2, base_port=base)
        with pytest.raises(LaunchError, match=f"port {base + 1} for node 2"):
            launcher.start()
    assert launcher.pids() == {1: None, 2: None}


def test_bad_arguments(tmp_path):
    with pytest.raises(LaunchError, match="nodes must be"):
        Launcher(0, tmp_path, 7000)
    with pytest.raises(LaunchError, match="base_port"):
        Launcher(3, tmp_path, 65534)
    with pytest.raises(LaunchError, match="cannot be set: the launcher assigns"):
        Launcher(3, tmp_path, 7000, node_id=4)
    with pytest.raises(LaunchError, match="cannot be set: the launcher assigns"):
        Launcher(3, tmp_path, 7000, node_overrides={2: {"data_dir": "/elsewhere"}})
    with pytest.raises(LaunchError, match="node_overrides names node"):
        Launcher(3, tmp_path, 7000, node_overrides={4: {}})


def test_unstartable_node_command_fails_start_cleanly(make_launcher):
    launcher = make_launcher(2, node_cmd=lambda path: ["/nonexistent/josefine-node", str(path)])
    with pytest.raises(LaunchError, match="cannot start node 1"):
        launcher.start()
    assert launcher.stopped and launcher.pids() == {1: None, 2: None}


def test_bad_setting_names_the_key(tmp_path):
    with pytest.raises(ConfigError, match="key 'tick_ms'"):
        Launcher(3, tmp_path, 7000, tick_ms="fast")
    assert not (tmp_path / "cluster.toml").exists()


def test_run_forever_returns_1_when_all_nodes_exit_and_restart_is_off(make_launcher):
    before = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    launcher = make_launcher(2, script=CRASHER, restart=False)
    assert launcher.run_forever() == 1
    assert launcher.stopped and launcher.pids() == {1: None, 2: None}
    assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == before


# -- the launcher as its own process ------------------------------------------------

LAUNCHER_SCRIPT = textwrap.dedent(
    """
    import sys
    from josefine.launch.cluster import Launcher

    SLEEPER = "import time; time.sleep(600)"
    launcher = Launcher(3, sys.argv[1], int(sys.argv[2]),
                        node_cmd=lambda path: [sys.executable, "-c", SLEEPER, str(path)])
    sys.exit(launcher.run_forever())
    """
)


@pytest.fixture
def launcher_process(tmp_path, free_base_port, reap_pids):
    """Start `python -c LAUNCHER_SCRIPT`; return (process, data_dir, node pids)."""
    data_dir = tmp_path / "cluster"
    out = open(tmp_path / "launcher.out", "wb")
    proc = subprocess.Popen([sys.executable, "-c", LAUNCHER_SCRIPT, str(data_dir), str(free_base_port(3))],
                            stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    reap_pids.add(proc.pid)
    pids_path = data_dir / "pids.json"

    def node_pids():
        try:
            data = json.loads(pids_path.read_text())
        except (OSError, ValueError):
            return None
        pids = list(data["nodes"].values())
        return pids if len(pids) == 3 and all(pids) and all(pid_alive(p) for p in pids) else None

    deadline = time.monotonic() + 60
    pids = None
    while pids is None:
        assert proc.poll() is None, (tmp_path / "launcher.out").read_text()
        assert time.monotonic() < deadline, "launcher did not start its nodes"
        time.sleep(0.02)
        pids = node_pids()
    reap_pids.update(pids)
    try:
        yield proc, data_dir, pids
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        out.close()


def test_no_orphans_when_launcher_is_sigkilled(launcher_process):
    proc, _, pids = launcher_process
    proc.send_signal(signal.SIGKILL)
    assert proc.wait(30) == -signal.SIGKILL
    assert wait_gone(pids, 10) == set()


def test_sigterm_stops_launcher_and_nodes(launcher_process, tmp_path):
    proc, data_dir, pids = launcher_process
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(30) == 0
    assert wait_gone(pids, 0) == set()  # stopped before the launcher exited
    assert json.loads((data_dir / "pids.json").read_text())["nodes"] == {"1": None, "2": None, "3": None}
    out = (tmp_path / "launcher.out").read_text()
    assert "all nodes stopped" in out


def test_sigint_stops_launcher_and_nodes(launcher_process):
    proc, _, pids = launcher_process
    proc.send_signal(signal.SIGINT)
    assert proc.wait(30) == 0
    assert wait_gone(pids, 0) == set()
