"""Node and cluster configuration: TOML files, validated once at start.

Two files exist:

* ``node.toml`` — everything one node process needs (`NodeConfig`). A node is
  started with ``josefine node --config node.toml``.
* ``cluster.toml`` — written by ``josefine launch``; lists every node's
  address so clients and ``josefine status`` can find the cluster
  (`ClusterConfig`).

House rules: a config is checked completely before anything starts, and every
error names the file, the offending key and why it is wrong, e.g.::

    node.toml: key 'peers.2': expected 'tcp://HOST:PORT', got 'foo'

Unknown keys are errors (a typo must not silently fall back to a default).
Files are parsed with the standard library's `tomllib`; they are written by
the small hand-written emitter below, which only needs strings, integers,
booleans and one level of tables.

Example ``node.toml``::

    node_id = 1
    cluster_id = "3f9c1a2b7d4e"
    address = "tcp://127.0.0.1:7001"
    data_dir = "/var/lib/josefine/node-1"   # relative paths: relative to this file
    tick_ms = 20

    [peers]
    "2" = "tcp://127.0.0.1:7002"
    "3" = "tcp://127.0.0.1:7003"
"""
from __future__ import annotations

import dataclasses
import difflib
import math
import os
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping

from josefine.errors import JosefineError

if TYPE_CHECKING:
    from josefine.raft.core import CoreConfig

__all__ = [
    "CLUSTER_ENV_VAR",
    "ClusterConfig",
    "ClusterNode",
    "ConfigError",
    "NodeConfig",
    "load_cluster_config",
    "load_node_config",
    "parse_address",
    "resolve_cluster_path",
]

CLUSTER_ENV_VAR = "JOSEFINE_CLUSTER"
"""Environment variable naming the cluster file when ``--cluster`` is absent."""

_MIB = 1024 * 1024
_LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
_CLUSTER_ID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
_ADDRESS_RE = re.compile(
    r"tcp://(\[[0-9A-Fa-f:.]+\]|\*|[A-Za-z0-9](?:[A-Za-z0-9.-]*[A-Za-z0-9])?):([0-9]{1,5})"
)


class ConfigError(JosefineError, ValueError):
    """A configuration file or value is invalid; the message names the key."""


# ---------------------------------------------------------------------------
# Small value checks shared by both file kinds


def parse_address(address: str) -> tuple[str, int]:
    """Split ``tcp://HOST:PORT`` into (host, port).

    Raises:
        ValueError: the address is not of that form or the port is outside 1..65535.
    """
    m = _ADDRESS_RE.fullmatch(address) if isinstance(address, str) else None
    if m is None:
        raise ValueError(f"expected 'tcp://HOST:PORT', got {address!r}")
    port = int(m.group(2))
    if not 1 <= port <= 65535:
        raise ValueError(f"port must be in 1..65535, got {port} in {address!r}")
    return m.group(1), port


def parse_metrics_address(address: str) -> tuple[str, int]:
    """Split a metrics endpoint ``HOST:PORT`` (an HTTP listener, no scheme) into (host, port).

    Raises:
        ValueError: not of that form, or the port is outside 1..65535.
    """
    host, sep, port = address.rpartition(":") if isinstance(address, str) else ("", "", "")
    if not sep or not host or not port.isdigit() or "/" in host:
        raise ValueError(f"expected 'HOST:PORT' (e.g. '127.0.0.1:9101'), got {address!r}")
    if not 1 <= int(port) <= 65535:
        raise ValueError(f"port must be in 1..65535, got {port} in {address!r}")
    return host, int(port)


def _kind(value: Any) -> str:
    """Name a value's TOML type for error messages."""
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "float"
    if isinstance(value, str):
        return "string"
    if isinstance(value, dict):
        return "table"
    if isinstance(value, list):
        return "array"
    return type(value).__name__


def _fail(source: str, key: str, why: str) -> ConfigError:
    return ConfigError(f"{source}: key {key!r}: {why}")


def _expect_int(source: str, key: str, value: Any, lo: int | None = None, hi: int | None = None) -> None:
    # NB: bool is a subclass of int, and `true` must not pass for 1.
    if not isinstance(value, int) or isinstance(value, bool):
        raise _fail(source, key, f"expected an integer, got {value!r} ({_kind(value)})")
    if lo is not None and value < lo:
        raise _fail(source, key, f"must be >= {lo}, got {value}")
    if hi is not None and value > hi:
        raise _fail(source, key, f"must be <= {hi}, got {value}")


def _expect_seconds(source: str, key: str, value: Any) -> None:
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        raise _fail(source, key, f"expected a number of seconds, got {value!r} ({_kind(value)})")
    if not 0 <= value < float("inf"):
        raise _fail(source, key, f"must be a finite number >= 0, got {value}")


def _expect_bool(source: str, key: str, value: Any) -> None:
    if not isinstance(value, bool):
        raise _fail(source, key, f"expected true or false, got {value!r} ({_kind(value)})")


def _expect_str(source: str, key: str, value: Any, *, nonempty: bool = True) -> None:
    if not isinstance(value, str):
        raise _fail(source, key, f"expected a string, got {value!r} ({_kind(value)})")
    if nonempty and not value:
        raise _fail(source, key, "must not be empty")


def _expect_str_list(source: str, key: str, value: Any) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(x, str) and x for x in value):
        raise _fail(source, key, f"expected an array of strings, got {value!r} ({_kind(value)})")
    return tuple(value)


def _expect_address(source: str, key: str, value: Any) -> None:
    _expect_str(source, key, value)
    try:
        parse_address(value)
    except ValueError as exc:
        raise _fail(source, key, str(exc)) from None


def _expect_cluster_id(source: str, key: str, value: Any) -> None:
    _expect_str(source, key, value)
    if not _CLUSTER_ID_RE.fullmatch(value):
        raise _fail(
            source, key,
            f"expected 1-64 characters from [A-Za-z0-9_.-] starting with a letter or digit, got {value!r}",
        )


def _check_unknown(source: str, data: Mapping[str, Any], known: list[str], prefix: str = "") -> None:
    for key in data:
        if key not in known:
            close = difflib.get_close_matches(key, known, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise _fail(source, prefix + key, f"unknown key{hint}")


def _peer_id(source: str, key: str, raw: Any) -> int:
    """Turn a TOML table key ("2") into a node id."""
    if isinstance(raw, int) and not isinstance(raw, bool):
        node_id = raw
    elif isinstance(raw, str) and raw.isdigit():
        node_id = int(raw)
    else:
        raise _fail(source, key, f"node ids must be integers >= 1, got {raw!r}")
    if node_id < 1:
        raise _fail(source, key, f"node ids must be integers >= 1, got {node_id}")
    return node_id


def _resolve_path(value: str, base_dir: Path | None) -> str:
    path = Path(value).expanduser()
    if base_dir is not None and not path.is_absolute():
        path = base_dir / path
    return str(path)


# ---------------------------------------------------------------------------
# Hand-written TOML emitter (strings, ints, bools, one level of tables)


_ESCAPES = {'"': '\\"', "\\": "\\\\", "\b": "\\b", "\t": "\\t", "\n": "\\n", "\f": "\\f", "\r": "\\r"}


def _toml_str(value: str) -> str:
    out = []
    for ch in value:
        if ch in _ESCAPES:
            out.append(_ESCAPES[ch])
        elif ord(ch) < 0x20 or ord(ch) == 0x7F:
            out.append(f"\\u{ord(ch):04x}")
        else:
            out.append(ch)
    return '"' + "".join(out) + '"'


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float) and math.isfinite(value):
        return repr(value)   # e.g. 3.0, 1e-05: both TOML floats
    if isinstance(value, str):
        return _toml_str(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    raise TypeError(f"cannot write {type(value).__name__} as TOML")


# ---------------------------------------------------------------------------
# node.toml


@dataclass(frozen=True)
class NodeConfig:
    """Everything one node process needs. Immutable; validated on construction.

    Time is counted in ticks of `tick_ms` milliseconds (the Raft core never
    reads a clock; the timer actor turns ticks into wall time).
    """

    node_id: int
    """This node's id, >= 1, unique in the cluster."""
    cluster_id: str
    """Shared by all nodes of a cluster; messages carrying another id are dropped."""
    address: str
    """Where peers and clients reach this node: ``tcp://HOST:PORT`` (what it advertises).
    It listens there too unless `bind` says otherwise."""
    peers: dict[int, str] = field(hash=False)
    """The other nodes' addresses by node id (never includes `node_id`)."""
    data_dir: str
    """Directory holding this node's LevelDB store."""
    tick_ms: int = 20
    """Length of one logical tick in milliseconds."""
    heartbeat_ticks: int = 2
    """A leader sends heartbeats every this many ticks."""
    election_ticks: int = 10
    """Election timeout base: each timeout is drawn from [election_ticks, 2*election_ticks) ticks."""
    fsync: bool = True
    """Sync every write batch to disk. Off only for benchmarks and throwaway clusters."""
    fault_injection: bool = False
    """Accept fault-rule changes (drop/delay/partition) over the admin interface."""
    max_frame_bytes: int = 16 * _MIB
    """Largest wire frame accepted or sent."""
    max_batch_blocks: int = 64
    """Most blocks carried by one AppendBlocks message."""
    max_inflight: int = 64
    """Most unacknowledged AppendBlocks messages per follower."""
    max_uncommitted_bytes: int = 64 * _MIB
    """Leader answers BUSY once uncommitted payload exceeds this."""
    snapshot_blocks: int = 2048
    """Snapshot the state machine once this many blocks were applied since the last
    snapshot (0: never by count). Snapshots bound disk use and restart time (A.14)."""
    snapshot_bytes: int = 16 * _MIB
    """... or once the payloads applied since then reach this many bytes (0: never). It
    bounds what a crash restart replays and the tail a follower fetches after an install:
    16 MiB is about 450 blocks under full load (measured, bench --snapshots)."""
    snapshot_on_stop_blocks: int = 64
    """On a planned stop (SIGTERM), snapshot first if at least this many blocks were
    applied since the last snapshot (0: never), so the restart replays almost nothing."""
    snapshot_on_stop_timeout_s: float = 3.0
    """Longest a planned stop waits for that snapshot; past it the node stops without it
    (the restart then replays the blocks since the previous snapshot)."""
    log_level: str = "INFO"
    """One of DEBUG, INFO, WARNING, ERROR, CRITICAL (case-insensitive)."""
    seed: int | None = None
    """Seed for the timer's random election timeouts; None: from the OS."""
    pre_vote: bool = True
    """Run a pre-vote round before starting an election (thesis §9.6)."""
    check_quorum: bool = True
    """A leader steps down when it has not heard from a quorum for an election timeout."""
    insecure: bool = False
    """Plaintext ZeroMQ, no authentication: any process that reaches the port can forge
    frames. Off by default; a node started insecure logs a warning."""
    bind: str | None = None
    """Where this node listens, when that differs from `address` (a container, NAT, or
    ``tcp://0.0.0.0:PORT`` for every interface); None: listen on `address`."""
    metrics_address: str | None = None
    """``HOST:PORT`` where the node serves Prometheus metrics over HTTP (``/metrics``);
    None (the default): no metrics, no listener, nothing measured."""
    secret_key_file: str | None = None
    """This node's Curve key pair (``josefine launch`` writes ``node.key_secret``, mode
    0600). Required unless `insecure`."""
    cluster_file: str | None = None
    """The ``cluster.toml`` whose public keys this node trusts; re-read on a key reload.
    Required unless `insecure`."""
    join: bool = False
    """This node joins a running cluster: `peers` are its current members, and this node is
    not one of them until the leader adds it (`Node.add_learner`, the ``member`` admin op).
    It never campaigns before a committed configuration makes it a voter, so an empty new
    node cannot start a cluster of its own. False: `peers` and this node are the bootstrap
    voters. Either way this only shapes the configuration below the chain's first CONFIG
    block (or the snapshot's): once those are on a node's path, they decide."""

    def __post_init__(self) -> None:
        if isinstance(self.peers, Mapping):
            # Own a private copy so the caller's dict cannot change us later.
            object.__setattr__(self, "peers", dict(self.peers))
        _check_node(dataclasses.asdict(self) | {"peers": self.peers}, "NodeConfig")
        object.__setattr__(self, "log_level", self.log_level.upper())

    # -- derived values -----------------------------------------------------

    @property
    def nodes(self) -> dict[int, str]:
        """Every node's address by id, this node included."""
        return dict(sorted({**self.peers, self.node_id: self.address}.items()))

    @property
    def host(self) -> str:
        return parse_address(self.address)[0]

    @property
    def port(self) -> int:
        return parse_address(self.address)[1]

    @property
    def heartbeat_interval_ms(self) -> int:
        return self.heartbeat_ticks * self.tick_ms

    @property
    def election_timeout_range_ms(self) -> tuple[int, int]:
        """Half-open range [lo, hi) the election timeout is drawn from."""
        return self.election_ticks * self.tick_ms, 2 * self.election_ticks * self.tick_ms

    # -- (de)serialisation --------------------------------------------------

    @classmethod
    def from_dict(
        cls, data: Mapping[str, Any], source: str = "<config>", base_dir: Path | None = None
    ) -> NodeConfig:
        """Build a config from parsed TOML, naming `source` in every error.

        A relative `data_dir` is taken relative to `base_dir` when given.
        """
        names = [f.name for f in dataclasses.fields(cls)]
        _check_unknown(source, data, names)
        for f in dataclasses.fields(cls):
            if f.default is dataclasses.MISSING and f.name not in data and f.name != "peers":
                raise _fail(source, f.name, "missing (required)")
        values = dict(data)
        peers_raw = values.get("peers", {})
        if not isinstance(peers_raw, Mapping):
            raise _fail(source, "peers", f"expected a table of id = address, got {peers_raw!r} ({_kind(peers_raw)})")
        values["peers"] = {_peer_id(source, f"peers.{k}", k): v for k, v in peers_raw.items()}
        for key in ("data_dir", "secret_key_file", "cluster_file"):
            if isinstance(values.get(key), str) and values[key]:
                values[key] = _resolve_path(values[key], base_dir)
        _check_node(values, source)
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        """Plain data, TOML-shaped: peer ids as strings, `seed` left out when None."""
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.name == "peers":
                value = {str(k): v for k, v in sorted(value.items())}
            elif value is None:
                continue
            out[f.name] = value
        return out

    def to_toml(self) -> str:
        """Render as a ``node.toml`` that `load_node_config` reads back equal."""
        lines = [f"# josefine node {self.node_id} of cluster {self.cluster_id}"]
        data = self.to_dict()
        peers = data.pop("peers")
        lines += [f"{key} = {_toml_value(value)}" for key, value in data.items()]
        lines += ["", "[peers]"]
        lines += [f"{_toml_str(k)} = {_toml_value(v)}" for k, v in peers.items()]
        return "\n".join(lines) + "\n"


def _default(key: str) -> Any:
    """A NodeConfig field's default: declared once, on the dataclass."""
    return NodeConfig.__dataclass_fields__[key].default


def core_config(source: Any, **fixed: Any) -> "CoreConfig":
    """The core's settings taken by name from `source` (a NodeConfig, the simulation's
    config): a CoreConfig field that `source` also has is passed on as it is, so a new
    core setting needs no mapping code anywhere; `fixed` sets the rest (node id, voters,
    seed)."""
    from josefine.raft.core import CoreConfig
    names = CoreConfig.__dataclass_fields__.keys()
    kw = {k: getattr(source, k) for k in names if k not in fixed and hasattr(source, k)}
    return CoreConfig(**kw, **fixed)


_UNSPECIFIED_HOSTS = frozenset({"*", "0.0.0.0", "[::]", "[0:0:0:0:0:0:0:0]"})
_LOOPBACK_HOSTS = frozenset({"localhost", "[::1]"})


def _is_loopback(host: str) -> bool:
    return host in _LOOPBACK_HOSTS or host.startswith("127.")


def _check_bind(v: Mapping[str, Any], source: str) -> None:
    """`address` is dialed by others and `bind` is listened on: refuse the combinations
    that cannot work, naming the fix."""
    host, _ = parse_address(v["address"])
    if host in _UNSPECIFIED_HOSTS:
        raise _fail(source, "address",
                    f"{v['address']} cannot be dialed by peers or clients: set address to a "
                    f"host they can reach and bind = \"tcp://{host}:PORT\" to listen on "
                    "every interface")
    bind = v.get("bind")
    if bind is None:
        return
    _expect_address(source, "bind", bind)
    bind_host, _ = parse_address(bind)
    if _is_loopback(bind_host) and not _is_loopback(host):
        raise _fail(source, "bind",
                    f"{bind} accepts loopback connections only, but the node advertises "
                    f"{v['address']}: peers dialing that would never get through (bind to "
                    "that host, or to 0.0.0.0)")


def _check_node(v: Mapping[str, Any], source: str) -> None:
    """Validate every NodeConfig field; raise ConfigError naming the first bad key."""
    _expect_int(source, "node_id", v["node_id"], lo=1)
    _expect_cluster_id(source, "cluster_id", v["cluster_id"])
    _expect_address(source, "address", v["address"])
    _expect_str(source, "data_dir", v["data_dir"])

    peers = v["peers"]
    if not isinstance(peers, Mapping):
        raise _fail(source, "peers", f"expected a table of id = address, got {peers!r} ({_kind(peers)})")
    seen = {v["address"]: v["node_id"]}
    for peer_id, addr in peers.items():
        key = f"peers.{peer_id}"
        if not isinstance(peer_id, int) or isinstance(peer_id, bool) or peer_id < 1:
            raise _fail(source, key, f"node ids must be integers >= 1, got {peer_id!r}")
        if peer_id == v["node_id"]:
            raise _fail(source, key, f"this node's own id ({peer_id}) must not be listed among its peers")
        _expect_address(source, key, addr)
        if addr in seen:
            raise _fail(source, key, f"address {addr} is already used by node {seen[addr]}")
        seen[addr] = peer_id

    _expect_int(source, "tick_ms", v.get("tick_ms", _default("tick_ms")), lo=1, hi=60_000)
    _expect_int(source, "heartbeat_ticks", v.get("heartbeat_ticks", _default("heartbeat_ticks")), lo=1)
    _expect_int(source, "election_ticks", v.get("election_ticks", _default("election_ticks")), lo=2)
    hb, el = v.get("heartbeat_ticks", _default("heartbeat_ticks")), v.get("election_ticks", _default("election_ticks"))
    if el <= hb:
        raise _fail(source, "election_ticks", f"must be greater than heartbeat_ticks ({hb}), got {el}")
    for key in ("secret_key_file", "cluster_file"):
        if v.get(key) is not None:
            _expect_str(source, key, v[key])
    _check_bind(v, source)
    if v.get("metrics_address") is not None:
        _expect_str(source, "metrics_address", v["metrics_address"])
        try:
            parse_metrics_address(v["metrics_address"])
        except ValueError as exc:
            raise _fail(source, "metrics_address", str(exc)) from None
    for key in ("fsync", "fault_injection", "pre_vote", "check_quorum", "insecure", "join"):
        if key in v:
            _expect_bool(source, key, v[key])
    _expect_int(source, "max_frame_bytes", v.get("max_frame_bytes", _default("max_frame_bytes")), lo=1024)
    _expect_int(source, "max_batch_blocks", v.get("max_batch_blocks", _default("max_batch_blocks")), lo=1)
    _expect_int(source, "max_inflight", v.get("max_inflight", _default("max_inflight")), lo=1)
    _expect_int(source, "max_uncommitted_bytes", v.get("max_uncommitted_bytes", _default("max_uncommitted_bytes")), lo=1)
    _expect_int(source, "snapshot_blocks", v.get("snapshot_blocks", _default("snapshot_blocks")), lo=0)
    _expect_int(source, "snapshot_bytes", v.get("snapshot_bytes", _default("snapshot_bytes")), lo=0)
    _expect_int(source, "snapshot_on_stop_blocks",
                v.get("snapshot_on_stop_blocks", _default("snapshot_on_stop_blocks")), lo=0)
    _expect_seconds(source, "snapshot_on_stop_timeout_s",
                    v.get("snapshot_on_stop_timeout_s", _default("snapshot_on_stop_timeout_s")))
    level = v.get("log_level", _default("log_level"))
    _expect_str(source, "log_level", level)
    if level.upper() not in _LOG_LEVELS:
        raise _fail(source, "log_level", f"expected one of {', '.join(_LOG_LEVELS)}, got {level!r}")
    if v.get("seed") is not None:
        _expect_int(source, "seed", v["seed"])


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror or exc}") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 text: {exc}") from None
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: invalid TOML: {exc}") from None


def load_node_config(path: str | os.PathLike[str]) -> NodeConfig:
    """Read and validate a ``node.toml``.

    Raises:
        ConfigError: unreadable file, bad TOML, or an invalid/unknown/missing key.
    """
    p = Path(path)
    return NodeConfig.from_dict(_read_toml(p), source=str(p), base_dir=p.resolve().parent)


# ---------------------------------------------------------------------------
# cluster.toml


@dataclass(frozen=True)
class ClusterNode:
    """One node as listed in ``cluster.toml``."""

    address: str
    """Where the node listens (``tcp://HOST:PORT``)."""
    data_dir: str | None = None
    """The node's data directory, when the file was written by the launcher."""
    config_path: str | None = None
    """The node's ``node.toml``, when the file was written by the launcher."""
    public_key: str | None = None
    """The node's Curve public key (Z85); required unless the cluster is insecure."""
    previous_keys: tuple[str, ...] = ()
    """Older public keys still accepted for this node while its key is being rotated."""
    metrics_address: str | None = None
    """Where the node serves Prometheus metrics (``HOST:PORT``), when it does."""


@dataclass(frozen=True)
class ClusterConfig:
    """The cluster as clients see it: its id and every node's address.

    Example ``cluster.toml``::

        cluster_id = "3f9c1a2b7d4e"

        [nodes."1"]
        address = "tcp://127.0.0.1:7001"
        data_dir = "/tmp/c/node-1/data"
        config_path = "/tmp/c/node-1/node.toml"
    """

    cluster_id: str
    nodes: dict[int, ClusterNode] = field(hash=False)
    insecure: bool = False
    """Plaintext cluster: no keys. Every node's ``insecure`` must agree with it."""
    client_keys: tuple[str, ...] = ()
    """Public keys allowed to send client requests."""
    admin_keys: tuple[str, ...] = ()
    """Public keys allowed to send client and admin requests."""
    client_key_file: str | None = None
    """Where clients of this file find their key pair (``josefine launch``: client.key_secret)."""
    admin_key_file: str | None = None
    """Where admin tools find their key pair (``josefine launch``: admin.key_secret)."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "nodes", dict(sorted(self.nodes.items())))
        object.__setattr__(self, "client_keys", tuple(self.client_keys))
        object.__setattr__(self, "admin_keys", tuple(self.admin_keys))
        _expect_cluster_id("ClusterConfig", "cluster_id", self.cluster_id)
        if not self.nodes:
            raise _fail("ClusterConfig", "nodes", "at least one node is required")
        for node_id, node in self.nodes.items():
            if not isinstance(node_id, int) or isinstance(node_id, bool) or node_id < 1:
                raise _fail("ClusterConfig", f"nodes.{node_id}", "node ids must be integers >= 1")
            _expect_address("ClusterConfig", f"nodes.{node_id}.address", node.address)

    def addresses(self) -> list[str]:
        """Every node's address, in node id order."""
        return [n.address for n in self.nodes.values()]

    @classmethod
    def from_dict(
        cls, data: Mapping[str, Any], source: str = "<cluster>", base_dir: Path | None = None
    ) -> ClusterConfig:
        """Build from parsed TOML; relative paths are taken relative to `base_dir`."""
        _check_unknown(source, data, ["cluster_id", "nodes", "insecure", "client_keys",
                                      "admin_keys", "client_key_file", "admin_key_file"])
        if "cluster_id" not in data:
            raise _fail(source, "cluster_id", "missing (required)")
        _expect_cluster_id(source, "cluster_id", data["cluster_id"])
        raw_nodes = data.get("nodes")
        if raw_nodes is None:
            raise _fail(source, "nodes", "missing (required)")
        if not isinstance(raw_nodes, Mapping) or not raw_nodes:
            raise _fail(source, "nodes", "expected a non-empty table of node tables")
        fields = ["address", "data_dir", "config_path", "public_key", "previous_keys",
                  "metrics_address"]
        nodes: dict[int, ClusterNode] = {}
        seen: dict[str, int] = {}
        for raw_id, entry in raw_nodes.items():
            node_id = _peer_id(source, f"nodes.{raw_id}", raw_id)
            prefix = f"nodes.{raw_id}"
            if not isinstance(entry, Mapping):
                raise _fail(source, prefix, f"expected a table with 'address', got {entry!r} ({_kind(entry)})")
            _check_unknown(source, entry, fields, prefix=prefix + ".")
            if "address" not in entry:
                raise _fail(source, prefix + ".address", "missing (required)")
            _expect_address(source, prefix + ".address", entry["address"])
            if entry["address"] in seen:
                raise _fail(source, prefix + ".address", f"address already used by node {seen[entry['address']]}")
            seen[entry["address"]] = node_id
            paths: dict[str, str | None] = {}
            for key in ("data_dir", "config_path"):
                if key in entry:
                    _expect_str(source, f"{prefix}.{key}", entry[key])
                    paths[key] = _resolve_path(entry[key], base_dir)
            if "public_key" in entry:
                _expect_str(source, f"{prefix}.public_key", entry["public_key"])
            previous = _expect_str_list(source, f"{prefix}.previous_keys",
                                        entry.get("previous_keys", []))
            if "metrics_address" in entry:
                _expect_str(source, f"{prefix}.metrics_address", entry["metrics_address"])
                try:
                    parse_metrics_address(entry["metrics_address"])
                except ValueError as exc:
                    raise _fail(source, f"{prefix}.metrics_address", str(exc)) from None
            nodes[node_id] = ClusterNode(address=entry["address"],
                                         public_key=entry.get("public_key"),
                                         previous_keys=previous,
                                         metrics_address=entry.get("metrics_address"), **paths)
        extra: dict[str, Any] = {}
        if "insecure" in data:
            _expect_bool(source, "insecure", data["insecure"])
            extra["insecure"] = data["insecure"]
        for key in ("client_keys", "admin_keys"):
            extra[key] = _expect_str_list(source, key, data.get(key, []))
        for key in ("client_key_file", "admin_key_file"):
            if key in data:
                _expect_str(source, key, data[key])
                extra[key] = _resolve_path(data[key], base_dir)
        if not extra.get("insecure", False):
            for node_id, node in nodes.items():
                if node.public_key is None:
                    raise _fail(source, f"nodes.{node_id}.public_key",
                                "missing: a secure cluster lists every node's public key "
                                "(or set insecure = true)")
        return cls(cluster_id=data["cluster_id"], nodes=nodes, **extra)

    def to_toml(self) -> str:
        """Render as a ``cluster.toml`` that `load_cluster_config` reads back equal."""
        lines = ["# josefine cluster file: pass it as --cluster FILE or set JOSEFINE_CLUSTER",
                 f"cluster_id = {_toml_str(self.cluster_id)}"]
        if self.insecure:
            lines.append("insecure = true")
        for key in ("client_keys", "admin_keys", "client_key_file", "admin_key_file"):
            value = getattr(self, key)
            if value:
                lines.append(f"{key} = {_toml_value(value)}")
        for node_id, node in self.nodes.items():
            lines += ["", f"[nodes.{_toml_str(str(node_id))}]", f"address = {_toml_str(node.address)}"]
            for key in ("data_dir", "config_path", "public_key", "previous_keys",
                        "metrics_address"):
                value = getattr(node, key)
                if value:
                    lines.append(f"{key} = {_toml_value(value)}")
        return "\n".join(lines) + "\n"


def load_cluster_config(path: str | os.PathLike[str]) -> ClusterConfig:
    """Read and validate a ``cluster.toml``.

    Raises:
        ConfigError: unreadable file, bad TOML, or an invalid/unknown/missing key.
    """
    p = Path(path)
    return ClusterConfig.from_dict(_read_toml(p), source=str(p), base_dir=p.resolve().parent)


def resolve_cluster_path(arg: str | os.PathLike[str] | None) -> Path:
    """Pick the cluster file: `arg` if given, else ``$JOSEFINE_CLUSTER``.

    A directory stands for the ``cluster.toml`` inside it (the launcher's
    ``--data-dir``).

    Raises:
        ConfigError: neither is set, or the file does not exist.
    """
    origin = "--cluster"
    if arg is None or str(arg) == "":
        env = os.environ.get(CLUSTER_ENV_VAR, "")
        if not env:
            raise ConfigError(
                f"no cluster file given: pass --cluster FILE or set {CLUSTER_ENV_VAR} "
                "(`josefine launch` writes DATA_DIR/cluster.toml)"
            )
        arg, origin = env, CLUSTER_ENV_VAR
    path = Path(arg).expanduser()
    if path.is_dir():
        path = path / "cluster.toml"
    if not path.is_file():
        raise ConfigError(f"cluster file {str(path)!r} (from {origin}) does not exist")
    return path
