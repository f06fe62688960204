"""The launcher's membership plumbing without real nodes: which members a relaunch
starts, which id is free, the request files `josefine member` uses, and the promotion
retry (the cluster side is tests/cluster/test_member_cli.py)."""
from __future__ import annotations

import time

import pytest

from josefine.config import load_cluster_config
from josefine.errors import RejectedError
from josefine.launch.cluster import (REMOVED_FILE, LaunchError, launcher_running,
                                     promote_when_caught_up, request_launcher)
from josefine.security import set_cluster_node

pytestmark = pytest.mark.timeout(60)


def test_a_relaunch_starts_the_members_of_the_cluster_file(make_launcher, tmp_path):
    first = make_launcher(3)
    first.start()
    first.stop()
    path = first.cluster_path
    # As after `member add 4` and `member remove 3`: the file lists 1, 2, 4; node 4 joined.
    n1 = load_cluster_config(path).nodes[1]
    set_cluster_node(path, 4, n1.__class__(address=f"tcp://127.0.0.1:{first.base_port + 3}",
                                           public_key=n1.public_key))
    set_cluster_node(path, 3, None)
    (tmp_path / "cluster" / "node-4").mkdir()
    (tmp_path / "cluster" / "node-4" / "node.toml").write_text("join = true\n")
    again = make_launcher(None, base_port=first.base_port)
    assert again.node_ids == [1, 2, 4]
    assert again.node_config(4).join and not again.node_config(1).join
    assert again.node_config(1).peers == {2: again.address(2), 4: again.address(4)}
    assert again.address(4) == f"tcp://127.0.0.1:{first.base_port + 3}"
    with pytest.raises(LaunchError, match="changing membership"):
        make_launcher(5, base_port=first.base_port)


def test_next_free_id_skips_members_removed_ids_and_leftover_dirs(make_launcher, tmp_path):
    launcher = make_launcher(3)
    assert launcher.next_free_id() == 4
    (tmp_path / "cluster").mkdir(exist_ok=True)
    (tmp_path / "cluster" / REMOVED_FILE).write_text('{"removed": [5]}')
    assert launcher.next_free_id() == 6 and launcher.removed_ids() == {5}
    (tmp_path / "cluster" / "node-9").mkdir()
    assert launcher.next_free_id() == 10


def test_requests_reach_a_running_launcher_and_only_one(make_launcher, tmp_path):
    d = tmp_path / "cluster"
    with pytest.raises(LaunchError, match="no launcher is running"):
        request_launcher(d, {"op": "add"}, 1.0)
    launcher = make_launcher(1)
    launcher.start()
    assert launcher_running(d)
    # Answered by the launcher: a bad request comes back as its one-line error.
    with pytest.raises(LaunchError, match="unknown request 'grow'"):
        request_launcher(d, {"op": "grow"}, 5.0)
    # A change while another is under way is refused at once.
    with launcher._membership_change("add"):
        t0 = time.monotonic()
        with pytest.raises(LaunchError, match=r"another membership change \(add\)"):
            request_launcher(d, {"op": "remove", "node": 1}, 30.0)
        assert time.monotonic() - t0 < 5
    assert not list((d / "control").iterdir())   # nothing left behind
    launcher.stop()
    assert not launcher_running(d)


def test_promotion_is_retried_only_while_the_learner_lags():
    answers = iter([RejectedError("learner 4 is not caught up (lags by 300)")] * 3 + ["ok"])

    def promote():  # noqa: ANN202
        a = next(answers)
        if isinstance(a, Exception):
            raise a
        return a
    assert promote_when_caught_up(promote, time.monotonic() + 10) == "ok"

    def other():  # noqa: ANN202
        raise RejectedError("node 4 is already a voter")
    with pytest.raises(RejectedError, match="already a voter"):
        promote_when_caught_up(other, time.monotonic() + 10)

    def lagging():  # noqa: ANN202
        raise RejectedError("learner 4 is not caught up (lags by 300)")
    with pytest.raises(LaunchError, match="not caught up in time"):
        promote_when_caught_up(lagging, time.monotonic() + 0.2)
