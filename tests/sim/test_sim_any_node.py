"""The simulation's clients use followers: reads served at followers and writes answered
by the follower that forwarded them, under every fault, with the history still
linearizable (the checks themselves run inside `Simulation.run`)."""
from __future__ import annotations

import pytest

from josefine.sim.simulation import SimConfig, Simulation

pytestmark = pytest.mark.timeout(300)


@pytest.mark.parametrize("cfg", [SimConfig(nodes=3, steps=1000),
                                 SimConfig(nodes=5, steps=1000, clients=4)],
                         ids=["3-nodes", "5-nodes"])
def test_followers_serve_reads_and_forward_writes_in_the_simulation(cfg):
    totals = {"follower_reads": 0, "follower_writes": 0, "completed": 0}
    for seed in range(40):
        sim = Simulation(seed, cfg).run()
        totals["follower_reads"] += sim.stats["follower_reads"]
        totals["follower_writes"] += sim.stats["follower_writes"]
        totals["completed"] += sim.completed
    # a fair share of the work went through followers, not a token few
    assert totals["follower_reads"] >= totals["completed"] // 20, totals
    assert totals["follower_writes"] >= totals["completed"] // 20, totals


def test_clients_that_only_ask_the_leader_use_no_follower():
    cfg = SimConfig(nodes=3, steps=1000, follower_reads=False, forward_proposals=False)
    for seed in range(10):
        sim = Simulation(seed, cfg).run()
        # (a write may still be answered by a node that took it as leader and applied it
        # after stepping down: that is no forwarding)
        assert sim.stats["follower_reads"] == 0
        assert all(n.core.forwarded_writes == 0 for n in sim.nodes.values() if n.core)
