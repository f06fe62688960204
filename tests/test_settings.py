"""A node setting is declared once: the core gets it by name, the checker's defaults are the
dataclass's, and the simulation's config reaches its cores the same way."""
from __future__ import annotations

import dataclasses

import pytest

from josefine.config import NodeConfig, _default, core_config
from josefine.raft.core import CoreConfig
from josefine.sim.simulation import SimConfig, Simulation

pytestmark = pytest.mark.timeout(60)

SHARED = [f.name for f in dataclasses.fields(CoreConfig)
          if f.name in NodeConfig.__dataclass_fields__ and f.name not in ("node_id", "seed")]


def _changed(value):  # noqa: ANN001, ANN202
    return (not value) if isinstance(value, bool) else value + 3


def test_every_core_setting_of_a_node_config_reaches_the_core(tmp_path):
    assert {"heartbeat_ticks", "election_ticks", "pre_vote", "check_quorum",
            "max_batch_blocks", "max_inflight", "max_uncommitted_bytes"} <= set(SHARED)
    base = NodeConfig(node_id=1, cluster_id="c", address="tcp://127.0.0.1:1", peers={},
                      data_dir=str(tmp_path))
    cfg = dataclasses.replace(base, **{k: _changed(getattr(base, k)) for k in SHARED})
    core = core_config(cfg, node_id=1, voters=frozenset({1}), seed=7)
    for k in SHARED:
        assert getattr(core, k) == getattr(cfg, k), k
    assert core.seed == 7 and core.voters == frozenset({1})


def test_the_checker_defaults_are_the_dataclass_defaults():
    for f in dataclasses.fields(NodeConfig):
        if f.default is not dataclasses.MISSING:
            assert _default(f.name) == f.default


def test_the_simulation_config_reaches_its_cores():
    cfg = SimConfig(nodes=3, steps=5, election_ticks=13, max_inflight=2, keep_blocks=9)
    sim = Simulation(1, cfg)
    core_cfg = sim.nodes[1].core.cfg
    assert (core_cfg.election_ticks, core_cfg.max_inflight, core_cfg.keep_blocks) == (13, 2, 9)


def test_docs_runtime_lists_every_channel():
    """docs/runtime.md's channel table names every channel the code declares."""
    from pathlib import Path

    from josefine.runtime.channels import CHANNELS
    text = (Path(__file__).resolve().parents[1] / "docs" / "runtime.md").read_text()
    for ch in CHANNELS:
        assert f"| `{ch.name}` |" in text, ch.name


def test_the_hand_over_target_is_the_most_caught_up_then_the_lowest_id():
    from josefine.runtime.status import most_caught_up
    assert most_caught_up({2: 40, 3: 41}) == 3
    assert most_caught_up({3: 41, 2: 41, 5: 7}) == 2
