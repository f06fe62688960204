"""The `josefine` command line: usage, errors, and the client/status/delegate commands against fakes."""
from __future__ import annotations

import json
import subprocess
import sys
import types
from pathlib import Path

import pytest

from josefine.config import ClusterConfig, ClusterNode
from josefine.errors import NotLeaderError, UnknownOutcomeError
from josefine.launch.cli import STATUS_FIELDS, main

pytestmark = pytest.mark.timeout(120)


def _josefine_cmd() -> list[str]:
    script = Path(sys.executable).parent / "josefine"
    return [str(script)] if script.exists() else [sys.executable, "-m", "josefine.launch.cli"]


@pytest.fixture
def cluster_file(tmp_path, monkeypatch):
    monkeypatch.delenv("JOSEFINE_CLUSTER", raising=False)
    path = tmp_path / "cluster.toml"
    cluster = ClusterConfig("c1d2", {i: ClusterNode(f"tcp://127.0.0.1:{7000 + i}") for i in (1, 2, 3)},
                            insecure=True)   # these tests fake the client: no keys needed
    path.write_text(cluster.to_toml())
    return path


class FakeClient:
    """Stands in for josefine.client.Client: Client({id: address}, cluster_id, *, timeout=...)."""

    store: dict[str, str] = {}
    calls: list = []
    fail: Exception | None = None

    def __init__(self, addresses, cluster_id, *, timeout, read_from="leader"):
        FakeClient.calls.append(("init", dict(addresses), cluster_id, timeout))

    def _check(self):
        if FakeClient.fail is not None:
            raise FakeClient.fail

    def put(self, key, value):
        self._check()
        self.store[key] = value

    def get(self, key):
        self._check()
        return self.store.get(key)

    def delete(self, key):
        self._check()
        return self.store.pop(key, None) is not None

    def cas(self, key, expected, new):
        self._check()
        if self.store.get(key) != expected:
            return False
        self.store[key] = new
        return True

    def close(self):
        FakeClient.calls.append(("close",))


@pytest.fixture
def fake_client(monkeypatch):
    FakeClient.store, FakeClient.calls, FakeClient.fail = {}, [], None
    module = types.ModuleType("josefine.client")
    module.Client = FakeClient
    monkeypatch.setitem(sys.modules, "josefine.client", module)
    return module


def test_launch_help_via_console_script():
    result = subprocess.run(_josefine_cmd() + ["launch", "--help"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    for option in ("--nodes", "--data-dir", "--base-port", "--no-restart", "--fault-injection", "--no-fsync"):
        assert option in result.stdout


def test_top_level_help_lists_commands(capsys):
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    for command in ("node", "launch", "put", "get", "delete", "cas", "status", "check", "chaos", "bench"):
        assert command in out


@pytest.mark.parametrize(
    "argv",
    [[], ["frobnicate"], ["launch", "--nodes", "zero"], ["launch", "--base-port", "70000"],
     ["put", "only-key"], ["node"], ["status", "--timeout", "-1"], ["launch", "--set", "novalue"]],
)
def test_usage_errors_exit_2(argv, capsys):
    assert main(argv) == 2
    assert capsys.readouterr().err


def test_put_without_cluster_is_a_clear_error(monkeypatch, capsys, fake_client):
    monkeypatch.delenv("JOSEFINE_CLUSTER", raising=False)
    assert main(["put", "k", "v"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert "--cluster" in err and "JOSEFINE_CLUSTER" in err
    assert FakeClient.calls == []


def test_cluster_from_env_var(cluster_file, monkeypatch, capsys, fake_client):
    monkeypatch.setenv("JOSEFINE_CLUSTER", str(cluster_file))
    assert main(["put", "k", "v", "--timeout", "2.5"]) == 0
    assert FakeClient.calls[0] == ("init", {1: "tcp://127.0.0.1:7001", 2: "tcp://127.0.0.1:7002",
                                            3: "tcp://127.0.0.1:7003"}, "c1d2", 2.5)
    monkeypatch.setenv("JOSEFINE_CLUSTER", str(cluster_file.parent / "missing.toml"))
    assert main(["get", "k"]) == 1
    assert "JOSEFINE_CLUSTER" in capsys.readouterr().err


def test_kv_commands(cluster_file, capsys, fake_client):
    c = ["--cluster", str(cluster_file)]
    assert main(["put", *c, "k", "v1"]) == 0
    assert capsys.readouterr().out == "OK\n"
    assert main(["get", *c, "k"]) == 0
    assert capsys.readouterr().out == "v1\n"
    assert main(["cas", *c, "k", "nope", "v2"]) == 3
    assert "unchanged" in capsys.readouterr().err
    assert main(["cas", *c, "k", "v1", "v2"]) == 0
    assert main(["get", *c, "k"]) == 0
    assert capsys.readouterr().out == "OK\nv2\n"
    assert main(["delete", *c, "k"]) == 0
    assert main(["delete", *c, "k"]) == 3
    assert main(["get", *c, "k"]) == 3
    captured = capsys.readouterr()
    assert captured.out == "deleted\n" and "not found" in captured.err
    assert FakeClient.calls.count(("close",)) == 8


@pytest.mark.parametrize(
    ("exc", "text"),
    [(UnknownOutcomeError("no reply in 5 s"), "unknown outcome"),
     (NotLeaderError("node 2 is a follower", leader_hint=3), "not leader"),
     (ConnectionRefusedError(111, "Connection refused"), "Connection refused")],
)
def test_client_errors_are_one_line_exit_1(cluster_file, capsys, fake_client, exc, text):
    FakeClient.fail = exc
    assert main(["put", "--cluster", str(cluster_file), "k", "v"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("josefine put: error: ") and err.count("\n") == 1 and text in err
    assert FakeClient.calls[-1] == ("close",)


def _fake_status(address, cluster_id, timeout):
    assert cluster_id == "c1d2"
    if address.endswith(":7002"):
        raise ConnectionError("no reply")
    node_id = int(address[-1])
    return {"pid": 100 + node_id, "role": "leader" if node_id == 1 else "follower", "term": 4, "leader": 1,
            "head": (4, 9), "commit": [4, 8], "applied": {"term": 4, "height": 8}, "dropped_frames": node_id,
            "rss_bytes": 40 << 20, "leveldb_memory_bytes": 1 << 20}


def test_status_table_and_json(cluster_file, capsys, fake_client):
    fake_client.query_status = _fake_status
    assert main(["status", "--cluster", str(cluster_file)]) == 1  # node 2 is unreachable
    captured = capsys.readouterr()
    lines = captured.out.splitlines()
    assert lines[0] == "cluster c1d2"
    assert lines[1].split() == ["id", "address", "pid", "role", "term", "leader", "head", "commit", "applied",
                                "dropped"]
    assert lines[2].split() == ["1", "tcp://127.0.0.1:7001", "101", "leader", "4", "1", "(4,9)", "(4,8)", "(4,8)", "1"]
    assert lines[3].split()[:4] == ["2", "tcp://127.0.0.1:7002", "-", "unreachable"]
    assert "node 2" in captured.err and "no reply" in captured.err

    assert main(["status", "--cluster", str(cluster_file), "--json"]) == 1
    data = json.loads(capsys.readouterr().out)
    assert data["cluster_id"] == "c1d2"
    assert [n["id"] for n in data["nodes"]] == [1, 2, 3]
    assert all(tuple(n) == STATUS_FIELDS for n in data["nodes"])
    one, two, three = data["nodes"]
    assert one == {"id": 1, "address": "tcp://127.0.0.1:7001", "reachable": True, "pid": 101, "role": "leader",
                   "term": 4, "leader": 1, "head": [4, 9], "commit": [4, 8], "applied": [4, 8],
                   "dropped_frames": 1, "rss_bytes": 40 << 20, "leveldb_memory_bytes": 1 << 20,
                   "members": None, "error": None, "metrics_address": None}
    assert two["reachable"] is False and two["role"] == "unreachable" and "no reply" in two["error"]
    assert three["role"] == "follower"


def test_status_all_reachable_exits_0(cluster_file, capsys, fake_client):
    fake_client.query_status = lambda address, cluster_id, timeout: {"role": "follower", "term": 1}
    assert main(["status", "--cluster", str(cluster_file)]) == 0


@pytest.mark.parametrize("command", ["chaos", "bench"])
def test_missing_optional_command_is_not_available(command, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, f"josefine.{command}.cli", None)  # as if not built
    assert main([command, "--anything"]) == 2
    assert "not available in this build" in capsys.readouterr().err


@pytest.mark.parametrize(("command", "module"), [("check", "josefine.check.cli"), ("chaos", "josefine.chaos.cli"),
                                                 ("bench", "josefine.bench.cli")])
def test_delegated_commands_get_their_arguments(command, module, monkeypatch):
    seen = []
    fake = types.ModuleType(module)
    fake.main = lambda argv: seen.append(argv) or 7
    monkeypatch.setitem(sys.modules, module, fake)
    assert main([command, "history.jsonl", "--verbose", "--help"]) == 7
    assert seen == [["history.jsonl", "--verbose", "--help"]]


def test_node_command_delegates(monkeypatch, tmp_path):
    seen = []
    fake = types.ModuleType("josefine.launch.node")
    fake.main = lambda argv: seen.append(argv) or 0
    monkeypatch.setitem(sys.modules, "josefine.launch.node", fake)
    assert main(["node", "--config", str(tmp_path / "node.toml")]) == 0
    assert seen == [["--config", str(tmp_path / "node.toml")]]


def test_launch_reports_bad_setting(tmp_path, capsys):
    assert main(["launch", "--data-dir", str(tmp_path), "--set", "tick_ms=true"]) == 1
    err = capsys.readouterr().err
    assert "key 'tick_ms'" in err and err.count("\n") == 1
    assert main(["launch", "--data-dir", str(tmp_path), "--set", "nodes=4"]) == 1  # not a node.toml key
    assert main(["launch", "--data-dir", str(tmp_path), "--set", "data_dir='x'"]) == 1
    assert not (tmp_path / "cluster.toml").exists()
