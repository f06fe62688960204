"""node.toml / cluster.toml: round trips and errors that name the bad key."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from josefine.security import generate_keypair

from josefine.config import (
    ClusterConfig,
    ClusterNode,
    ConfigError,
    NodeConfig,
    load_cluster_config,
    load_node_config,
    parse_address,
    resolve_cluster_path,
)
from josefine.errors import JosefineError

pytestmark = pytest.mark.timeout(120)


def _toml_value(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, str)):
        return json.dumps(v)  # a JSON string is a valid TOML basic string for these tests
    raise TypeError(v)


def _dump(data: dict) -> str:
    """Minimal TOML for hand-made (possibly invalid) configs."""
    lines, tables = [], []
    for k, v in data.items():
        if isinstance(v, dict):
            tables.append((k, v))
        else:
            lines.append(f"{k} = {_toml_value(v)}")
    for name, table in tables:
        lines.append(f"[{name}]")
        lines += [f"{json.dumps(str(k))} = {_toml_value(v)}" for k, v in table.items()]
    return "\n".join(lines) + "\n"


def _valid() -> dict:
    return {
        "node_id": 1,
        "cluster_id": "c0ffee",
        "address": "tcp://127.0.0.1:7001",
        "data_dir": "/tmp/josefine-test/node-1",
        "peers": {"2": "tcp://127.0.0.1:7002", "3": "tcp://127.0.0.1:7003"},
    }


def _write(tmp_path: Path, data: dict, name: str = "node.toml") -> Path:
    path = tmp_path / name
    path.write_text(_dump(data))
    return path


def test_round_trip_all_fields(tmp_path):
    config = NodeConfig(
        node_id=2,
        cluster_id="abc-123_x.y",
        address="tcp://127.0.0.1:7002",
        peers={1: "tcp://127.0.0.1:7001", 3: "tcp://localhost:7003", 4: "tcp://[::1]:7004"},
        data_dir='/tmp/odd "dir"\\with\ttab\nnewline é',
        tick_ms=7,
        heartbeat_ticks=3,
        election_ticks=11,
        fsync=False,
        fault_injection=True,
        max_frame_bytes=2048,
        max_batch_blocks=5,
        max_inflight=6,
        max_uncommitted_bytes=12345,
        log_level="debug",
        seed=-42,
        pre_vote=False,
        check_quorum=False,
    )
    assert config.log_level == "DEBUG"
    path = tmp_path / "node.toml"
    path.write_text(config.to_toml())
    loaded = load_node_config(path)
    assert loaded == config
    assert loaded.peers == {1: "tcp://127.0.0.1:7001", 3: "tcp://localhost:7003", 4: "tcp://[::1]:7004"}
    assert loaded.nodes[2] == "tcp://127.0.0.1:7002"
    assert loaded.port == 7002 and loaded.host == "127.0.0.1"
    assert loaded.election_timeout_range_ms == (77, 154)
    assert loaded.heartbeat_interval_ms == 21


def test_defaults_and_seed_omitted(tmp_path):
    config = load_node_config(_write(tmp_path, _valid()))
    assert (config.tick_ms, config.heartbeat_ticks, config.election_ticks) == (20, 2, 10)
    assert config.fsync and not config.fault_injection and config.pre_vote and config.check_quorum
    assert config.max_frame_bytes == 16 * 1024 * 1024 and config.max_uncommitted_bytes == 64 * 1024 * 1024
    assert config.seed is None and "seed" not in config.to_toml()
    assert load_node_config(_write(tmp_path, {**_valid(), "seed": 0})).seed == 0


def test_config_is_frozen_and_copies_peers():
    peers = {2: "tcp://127.0.0.1:7002"}
    config = NodeConfig(node_id=1, cluster_id="c", address="tcp://127.0.0.1:7001", peers=peers, data_dir="d")
    peers[3] = "tcp://127.0.0.1:7003"
    assert config.peers == {2: "tcp://127.0.0.1:7002"}
    with pytest.raises(AttributeError):
        config.node_id = 5  # type: ignore[misc]
    hash(config)


def test_single_node_needs_no_peers(tmp_path):
    data = _valid()
    del data["peers"]
    assert load_node_config(_write(tmp_path, data)).peers == {}


def test_relative_data_dir_is_relative_to_the_file(tmp_path):
    sub = tmp_path / "conf"
    sub.mkdir()
    config = load_node_config(_write(sub, {**_valid(), "data_dir": "data/n1"}))
    assert Path(config.data_dir) == sub.resolve() / "data" / "n1"


@pytest.mark.parametrize(
    ("change", "key", "why"),
    [
        ({"tick": 5}, "tick", "unknown key (did you mean 'tick_ms'?)"),
        ({"colour": "blue"}, "colour", "unknown key"),
        ({"tick_ms": "fast"}, "tick_ms", "expected an integer, got 'fast' (string)"),
        ({"tick_ms": True}, "tick_ms", "expected an integer"),
        ({"tick_ms": 0}, "tick_ms", "must be >= 1"),
        ({"fsync": 1}, "fsync", "expected true or false"),
        ({"node_id": 0}, "node_id", "must be >= 1"),
        ({"cluster_id": ""}, "cluster_id", "must not be empty"),
        ({"cluster_id": "a b"}, "cluster_id", "expected 1-64 characters"),
        ({"address": "foo"}, "address", "expected 'tcp://HOST:PORT', got 'foo'"),
        ({"address": "tcp://127.0.0.1:0"}, "address", "port must be in 1..65535"),
        ({"address": "tcp://127.0.0.1:70000"}, "address", "port must be in 1..65535"),
        ({"address": "udp://127.0.0.1:7001"}, "address", "expected 'tcp://HOST:PORT'"),
        ({"peers": {"2": "foo"}}, "peers.2", "expected 'tcp://HOST:PORT', got 'foo'"),
        ({"peers": {"x": "tcp://127.0.0.1:7002"}}, "peers.x", "node ids must be integers"),
        ({"peers": {"1": "tcp://127.0.0.1:7009"}}, "peers.1", "own id (1) must not be listed"),
        ({"peers": {"2": "tcp://127.0.0.1:7001"}}, "peers.2", "already used by node 1"),
        ({"peers": "tcp://127.0.0.1:7002"}, "peers", "expected a table"),
        ({"election_ticks": 2}, "election_ticks", "must be greater than heartbeat_ticks (2), got 2"),
        ({"heartbeat_ticks": 12}, "election_ticks", "must be greater than heartbeat_ticks (12), got 10"),
        ({"log_level": "LOUD"}, "log_level", "expected one of DEBUG"),
        ({"max_frame_bytes": 10}, "max_frame_bytes", "must be >= 1024"),
        ({"seed": "x"}, "seed", "expected an integer"),
        ({"address": "tcp://0.0.0.0:7001"}, "address", "cannot be dialed by peers"),
        ({"address": "tcp://*:7001"}, "address", "bind = \"tcp://*:PORT\""),
        ({"bind": "7001"}, "bind", "expected 'tcp://HOST:PORT'"),
        ({"address": "tcp://10.1.2.3:7001", "bind": "tcp://127.0.0.1:7001"}, "bind",
         "accepts loopback connections only"),
        ({"metrics_address": "tcp://127.0.0.1:9101"}, "metrics_address", "expected 'HOST:PORT'"),
    ],
)
def test_bad_key_is_named(tmp_path, change, key, why):
    path = _write(tmp_path, {**_valid(), **change})
    with pytest.raises(ConfigError) as info:
        load_node_config(path)
    message = str(info.value)
    assert message.startswith(f"{path}: key '{key}': "), message
    assert why in message


def test_missing_required_key(tmp_path):
    data = _valid()
    del data["node_id"]
    with pytest.raises(ConfigError, match=r"key 'node_id': missing \(required\)"):
        load_node_config(_write(tmp_path, data))


def test_unreadable_and_invalid_toml(tmp_path):
    with pytest.raises(ConfigError, match="cannot read"):
        load_node_config(tmp_path / "absent.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("node_id = = 1\n")
    with pytest.raises(ConfigError, match=r"bad\.toml: invalid TOML"):
        load_node_config(bad)


def test_config_error_types():
    assert issubclass(ConfigError, ValueError) and issubclass(ConfigError, JosefineError)


def test_direct_construction_validates():
    with pytest.raises(ConfigError, match=r"NodeConfig: key 'peers\.1'"):
        NodeConfig(node_id=1, cluster_id="c", address="tcp://127.0.0.1:1", peers={1: "tcp://127.0.0.1:2"},
                   data_dir="d")


def test_parse_address():
    assert parse_address("tcp://127.0.0.1:7001") == ("127.0.0.1", 7001)
    assert parse_address("tcp://[::1]:9") == ("[::1]", 9)
    for bad in ["tcp://:1", "tcp://host", "127.0.0.1:7001", "tcp://h:99999", "tcp://h:1/x"]:
        with pytest.raises(ValueError):
            parse_address(bad)


def test_cluster_config_round_trip(tmp_path):
    cluster = ClusterConfig(
        cluster_id="abc",
        nodes={
            2: ClusterNode("tcp://127.0.0.1:7002", str(tmp_path / "n2" / "data"), str(tmp_path / "n2" / "node.toml")),
            1: ClusterNode("tcp://127.0.0.1:7001"),
        },
        insecure=True,
    )
    path = tmp_path / "cluster.toml"
    path.write_text(cluster.to_toml())
    loaded = load_cluster_config(path)
    assert loaded == cluster
    assert list(loaded.nodes) == [1, 2]
    assert loaded.addresses() == ["tcp://127.0.0.1:7001", "tcp://127.0.0.1:7002"]


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ('cluster_id = "c"\n', "nodes"),
        ('[nodes."1"]\naddress = "tcp://127.0.0.1:1"\n', "cluster_id"),
        ('cluster_id = "c"\n[nodes."1"]\naddress = "nope"\n', "nodes.1.address"),
        ('cluster_id = "c"\n[nodes."1"]\ndata_dir = "x"\n', "nodes.1.address"),
        ('cluster_id = "c"\n[nodes."x"]\naddress = "tcp://127.0.0.1:1"\n', "nodes.x"),
        ('cluster_id = "c"\n[nodes."1"]\naddress = "tcp://127.0.0.1:1"\nport = 3\n', "nodes.1.port"),
        ('cluster_id = "c"\nextra = 1\n[nodes."1"]\naddress = "tcp://127.0.0.1:1"\n', "extra"),
    ],
)
def test_cluster_config_bad_key_is_named(tmp_path, text, key):
    path = tmp_path / "cluster.toml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=rf"key '{key}'"):
        load_cluster_config(path)


def test_resolve_cluster_path(tmp_path, monkeypatch):
    path = tmp_path / "cluster.toml"
    path.write_text('cluster_id = "c"\n[nodes."1"]\naddress = "tcp://127.0.0.1:1"\n')
    monkeypatch.delenv("JOSEFINE_CLUSTER", raising=False)
    with pytest.raises(ConfigError, match="pass --cluster FILE or set JOSEFINE_CLUSTER"):
        resolve_cluster_path(None)
    assert resolve_cluster_path(str(path)) == path
    assert resolve_cluster_path(tmp_path) == path  # a directory means its cluster.toml
    monkeypatch.setenv("JOSEFINE_CLUSTER", str(path))
    assert resolve_cluster_path(None) == path
    monkeypatch.setenv("JOSEFINE_CLUSTER", str(tmp_path / "gone.toml"))
    with pytest.raises(ConfigError, match="from JOSEFINE_CLUSTER"):
        resolve_cluster_path(None)


def test_secure_cluster_config_round_trip_with_keys(tmp_path):
    keys = [generate_keypair().public.decode() for _ in range(5)]
    cluster = ClusterConfig(
        cluster_id="abc",
        nodes={1: ClusterNode("tcp://127.0.0.1:7001", public_key=keys[0],
                              previous_keys=(keys[1],)),
               2: ClusterNode("tcp://127.0.0.1:7002", public_key=keys[2])},
        client_keys=(keys[3],), admin_keys=(keys[4],),
        client_key_file=str(tmp_path / "client.key_secret"),
        admin_key_file=str(tmp_path / "admin.key_secret"))
    path = tmp_path / "cluster.toml"
    path.write_text(cluster.to_toml())
    assert load_cluster_config(path) == cluster


def test_a_secure_cluster_file_without_a_node_key_is_refused(tmp_path):
    path = tmp_path / "cluster.toml"
    path.write_text('cluster_id = "abc"\n[nodes."1"]\naddress = "tcp://127.0.0.1:7001"\n')
    with pytest.raises(ConfigError, match="nodes.1.public_key.*insecure = true"):
        load_cluster_config(path)


def test_bind_and_advertised_address_round_trip(tmp_path):
    config = load_node_config(_write(tmp_path, {**_valid(), "address": "tcp://10.1.2.3:7001",
                                                "bind": "tcp://0.0.0.0:7001"}))
    assert (config.address, config.bind) == ("tcp://10.1.2.3:7001", "tcp://0.0.0.0:7001")
    path = tmp_path / "again.toml"
    path.write_text(config.to_toml())
    assert load_node_config(path) == config
    assert load_node_config(_write(tmp_path, _valid())).bind is None   # listens on address
