"""`josefine chain` against real node processes: the `chain` admin request of a running
cluster (answered by each node's role actor), the lock error for a running node's data dir,
and the same chains read from disk once the cluster has stopped."""
from __future__ import annotations

import pytest

from josefine.client import Client, admin_request
from josefine.errors import RejectedError
from josefine.launch import cli
from josefine.launch.cluster import Launcher
from tests.cluster.helpers import free_port_block, leader_of, statuses, wait_for

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(180)]


def _row(text: str, height: int) -> list[str]:
    return [ln for ln in text.splitlines() if ln.split()[:1] == [str(height)]]


def test_chain_of_a_running_cluster_then_of_its_stopped_data_dirs(tmp_path, capsys):
    launcher = Launcher(3, tmp_path / "c", free_port_block(3), out=None)
    launcher.start()
    try:
        addrs = {i: launcher.address(i) for i in launcher.node_ids}
        creds = launcher.credentials()
        wait_for(lambda: leader_of(addrs, launcher.cluster_id, creds), 30, "a leader")
        with Client(addrs, launcher.cluster_id, timeout=20, credentials=creds) as c:
            for i in range(30):
                c.put(f"k{i}", "v" * 20)

        def settled():   # every node at the same head, committed
            st = statuses(addrs, launcher.cluster_id, credentials=creds)
            heads = {tuple(s.get("head", ())) for s in st.values()}
            ok = len(heads) == 1 and all(s.get("commit") == s.get("head") for s in st.values())
            return st if ok else None
        st = wait_for(settled, 30, "all nodes at one committed head")
        head = st[1]["head"]
        cluster_file = str(launcher.cluster_path)

        # the admin request itself: bounded by `last`, refused without the admin key
        desc = admin_request(addrs[1], launcher.cluster_id, "chain", {"last": 5}, timeout=5,
                             credentials=launcher.credentials(admin=True))
        assert desc["head"] == head and len(desc["blocks"]) == 5
        with pytest.raises(RejectedError, match="last"):
            admin_request(addrs[1], launcher.cluster_id, "chain", {"last": 0}, timeout=5,
                          credentials=launcher.credentials(admin=True))
        with pytest.raises(RejectedError, match="admin key required"):
            admin_request(addrs[1], launcher.cluster_id, "chain", {}, timeout=2, credentials=creds)

        assert cli.main(["chain", "--cluster", cluster_file, "--last", "5"]) == 0
        out = capsys.readouterr().out
        for i in (1, 2, 3):
            assert f"node {i}: term {st[i]['term']}, {st[i]['role']}; head ({head[0]},{head[1]})" in out
        assert out.count("<- commit, <- head") == 3
        for h in range(head[1] - 4, head[1] + 1):
            rows = _row(out, h)
            assert len(rows) == 3 and all(r.split()[5] == f"({head[0]},{h})" for r in rows)
        assert _row(out, head[1] - 5) == []
        assert f"heights 0..{head[1] - 5} not shown" in out

        svg = tmp_path / "chain.svg"
        assert cli.main(["chain", "--cluster", cluster_file, "--node", "2", "--out", str(svg)]) == 0
        text = svg.read_text()
        assert f"head ({head[0]},{head[1]})" in text and f"t{head[0]} h{head[1]}" in text
        assert "node 2: term" in text and "node 1: term" not in text

        # a running node's store is locked: the CLI says to ask the cluster instead
        assert cli.main(["chain", "--data-dir", str(tmp_path / "c"), "--node", "1"]) == 1
        err = capsys.readouterr().err
        assert "is locked" in err and "--cluster" in err
    finally:
        launcher.stop()
    assert all(pid is None for pid in launcher.pids().values())

    # stopped: the same chains from disk (the commit marker on disk may lag: it is lazy).
    # The term may have moved on: a stopping leader hands leadership over first.
    assert cli.main(["chain", "--data-dir", str(tmp_path / "c"), "--last", "5"]) == 0
    out = capsys.readouterr().out
    for i in (1, 2, 3):
        line = next(ln for ln in out.splitlines() if ln.startswith(f"node {i}: term "))
        term = int(line.split("term ", 1)[1].split(";", 1)[0])
        assert term >= st[i]["term"] and f"; head ({head[0]},{head[1]})" in line, line
    assert len([r for r in _row(out, head[1]) if "<- head" in r]) == 3
