"""A leader stopped on purpose (SIGTERM) hands leadership to its most caught-up follower
before it exits, so clients lose a round trip, not an election timeout."""
from __future__ import annotations

import threading
import time

import pytest

from josefine.client import Client
from josefine.launch.cluster import Launcher
from tests.cluster.helpers import free_port_block, leader_of, statuses, wait_for

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(180)]


def test_sigterm_of_the_leader_hands_leadership_over(tmp_path):
    launcher = Launcher(3, tmp_path / "c", free_port_block(3), out=None)
    launcher.start()
    try:
        addrs = {i: launcher.address(i) for i in launcher.node_ids}
        creds = launcher.credentials()
        old = wait_for(lambda: leader_of(addrs, launcher.cluster_id, creds), 30, "a leader")
        old_term = statuses(addrs, launcher.cluster_id, credentials=creds)[old]["term"]
        with Client(addrs, launcher.cluster_id, timeout=30, credentials=creds) as c:
            for i in range(20):
                c.put(f"k{i}", f"v{i}")
            stopper = threading.Thread(target=launcher.stop_node, args=(old,))
            stopper.start()
            c.put("after", "stop")             # served by the successor
            stopper.join(30)
            assert launcher.pid(old) is None, "the stopped leader still runs"
            rest = {i: a for i, a in addrs.items() if i != old}
            new = wait_for(lambda: leader_of(rest, launcher.cluster_id, creds), 30,
                           "the successor")
            assert c.get("after") == "stop" and c.get("k19") == "v19"
        log = launcher.log_path(old).read_text()
        assert f"handed leadership to node {new}" in log, log[-2000:]
        # a transfer: the successor's TimeoutNow election is the only new term
        assert statuses(rest, launcher.cluster_id, credentials=creds)[new]["term"] \
            == old_term + 1
    finally:
        launcher.stop()
    assert all(pid is None for pid in launcher.pids().values())


def test_a_follower_stopped_on_purpose_just_stops(tmp_path):
    launcher = Launcher(3, tmp_path / "c", free_port_block(3), out=None)
    launcher.start()
    try:
        addrs = {i: launcher.address(i) for i in launcher.node_ids}
        creds = launcher.credentials()
        leader = wait_for(lambda: leader_of(addrs, launcher.cluster_id, creds), 30, "a leader")
        follower = next(i for i in addrs if i != leader)
        t0 = time.monotonic()
        assert launcher.stop_node(follower) == 0
        assert time.monotonic() - t0 < 5
        assert "handed leadership" not in launcher.log_path(follower).read_text()
        assert leader_of(addrs, launcher.cluster_id, creds) == leader
    finally:
        launcher.stop()
