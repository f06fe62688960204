"""A leader stopped on purpose (SIGTERM) hands leadership to its most caught-up follower
before it exits, so clients lose a round trip, not an election timeout."""
from __future__ import annotations

import threading
import time

import pytest

from josefine.client import Client
from tests.cluster.helpers import leader_of, running_cluster, statuses, wait_for

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(180)]


def test_sigterm_of_the_leader_hands_leadership_over(tmp_path):
    with running_cluster(tmp_path / "c") as rc:
        launcher, addrs, creds, old = rc.launcher, rc.addrs, rc.creds, rc.leader
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


def test_a_follower_stopped_on_purpose_just_stops(tmp_path):
    with running_cluster(tmp_path / "c") as rc:
        follower = next(i for i in rc.addrs if i != rc.leader)
        t0 = time.monotonic()
        assert rc.launcher.stop_node(follower) == 0
        assert time.monotonic() - t0 < 5
        assert "handed leadership" not in rc.launcher.log_path(follower).read_text()
        assert leader_of(rc.addrs, rc.launcher.cluster_id, rc.creds) == rc.leader
