"""Chaos with power loss (issue 11): every node's data dir on a FUSE layer that drops what
was not fsynced when the nemesis cuts the power (josefine/chaos/powerfs.py). A correct node
passes every check, whole-cluster power cuts included; a node whose store skips its fsync
loses acknowledged writes and the run fails."""
from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from josefine.chaos import ChaosConfig, run_chaos
from josefine.chaos.powerfs import unavailable

REPO_ROOT = Path(__file__).resolve().parents[2]

pytestmark = [pytest.mark.timeout(240),
              pytest.mark.skipif(unavailable() is not None,
                                 reason=f"power-loss filesystem: {unavailable()}")]


def _no_mounts_left(out: Path) -> None:
    mounts = Path("/proc/mounts").read_text()
    assert str(out) not in mounts, "a power-loss mount outlived the run"


def test_chaos_with_power_loss_passes_every_check(tmp_path):
    out = tmp_path / "run"
    # snapshots every 200 blocks: power cuts land on snapshot writes and installs too
    report = run_chaos(ChaosConfig(out=out, nodes=3, duration=30, seed=3, clients=4, keys=4,
                                   faults=["powerloss", "kill"], fault_gap=(1.0, 2.0),
                                   fault_hold=(0.5, 2.0),
                                   node_settings={"snapshot_blocks": 200}))
    assert report.passed, report.format()
    cuts = [f for f in report.faults if f["kind"] == "powerloss"]
    assert any(f["variant"] == "all" for f in cuts), report.format()
    assert all("power cut" in f["mechanism"] for f in cuts)
    _no_mounts_left(out)


def _unsynced_node_cmd(config_path: Path) -> list[str]:
    code = ("import tests.chaos.unsynced_store_patch\n"
            "from josefine.launch.node import main\n"
            f"raise SystemExit(main(['--config', {str(config_path)!r}]))\n")
    return [sys.executable, "-c", code]


def test_a_store_that_skips_its_fsync_fails_the_power_loss_run(tmp_path):
    out = tmp_path / "broken"
    path = os.pathsep.join(p for p in (str(REPO_ROOT), os.environ.get("PYTHONPATH")) if p)
    report = run_chaos(ChaosConfig(out=out, nodes=3, duration=25, seed=3, clients=4, keys=4,
                                   faults=["powerloss"], fault_gap=(1.0, 2.0),
                                   fault_hold=(0.5, 2.0), node_cmd=_unsynced_node_cmd,
                                   env={"PYTHONPATH": path}))
    assert not report.passed, report.format()
    assert any(f["variant"] == "all" and f["dropped_bytes"] > 0 for f in report.faults), \
        report.format()
    _no_mounts_left(out)
