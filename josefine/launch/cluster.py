"""Start, supervise and stop a local cluster of node processes.

`Launcher` is the one way tests, chaos runs and humans (``josefine launch``)
bring up a cluster on one machine. For ``nodes=N`` under ``data_dir=DIR`` it
writes::

    DIR/cluster.toml          every node's address; for clients and `josefine status`
    DIR/pids.json             {"launcher": pid, "cluster_id": ..., "nodes": {"1": pid | null, ...}}
    DIR/launcher.lock         held (flock) while a launcher runs on DIR
    DIR/node-<i>/node.toml    node i's NodeConfig; it listens on tcp://127.0.0.1:(base_port + i - 1)
    DIR/node-<i>/data/        node i's LevelDB store
    DIR/node-<i>/node.log     node i's stdout and stderr (appended across restarts)
    DIR/node-<i>/node.key_secret   node i's Curve key pair (mode 0600)
    DIR/client.key_secret     a client key pair (0600): Client, the CLI, bench, demo
    DIR/admin.key_secret      an admin key pair (0600): fault rules, key reload, transfer

Keys are made once, on the first launch on DIR, and reused by every relaunch; the
public halves go in ``cluster.toml``, which every node trusts (``cluster_file``).
``insecure=True`` makes none and runs plaintext.

Relaunching on the same DIR keeps the cluster id from the existing
``cluster.toml`` (the nodes' stores belong to that cluster) and refuses a
different set of node ids.

Supervision: a node that exits without being asked to is restarted after a
backoff of 0.2 s, doubling up to 5 s, reset once the node has run for 30 s.
`stop_node` keeps a node down until `start_node`. Every node is spawned from
the launcher's single supervisor thread, so the parent-death signal of
`procutil.spawn_node` holds for restarts too; nodes never outlive the
launcher, even when it is SIGKILLed.

With ``netns=True`` every node runs in a network namespace of its own, with its own
address on a bridge (see `josefine.launch.netns`; root only); ``pids.json`` then also
records the namespace and link names, and ``DIR/netns.log`` is the reaper's log.

Thread safety: every public method may be called from any thread.
"""
from __future__ import annotations

import atexit
import fcntl
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from josefine.config import (
    ClusterConfig,
    ClusterNode,
    ConfigError,
    NodeConfig,
    load_cluster_config,
    parse_metrics_address,
)
from josefine.errors import JosefineError
from josefine.launch import netns as netns_mod
from josefine.launch import procutil
from josefine.security import (ClientCredentials, KeyPair, client_credentials,
                               generate_keypair, load_keypair, write_keypair)

__all__ = ["LaunchError", "Launcher", "RestartEvent", "default_node_cmd"]

HOST = "127.0.0.1"
"""Launched clusters bind to loopback only, unless each node has a namespace (netns=True)."""


_LAUNCHER_OWNED = frozenset({"node_id", "cluster_id", "address", "peers", "data_dir",
                             "insecure", "secret_key_file", "cluster_file"})
"""NodeConfig keys the launcher derives from the node id, base port and data dir."""


class LaunchError(JosefineError):
    """The launcher cannot start or control the cluster (the message says why)."""


@dataclass(frozen=True)
class RestartEvent:
    """A node exited on its own and the supervisor scheduled its restart."""

    node_id: int
    exit_code: int
    """Exit status of the process that died (negative: killed by that signal)."""
    delay_s: float
    """Backoff before the restart."""
    at: float
    """Wall-clock time (time.time()) of the exit."""


@dataclass
class _Node:
    node_id: int
    config: NodeConfig
    config_path: Path
    log_path: Path
    proc: subprocess.Popen[bytes] | None = None
    started_at: float = 0.0  # monotonic
    wanted: bool = True  # False after stop_node(): never restart
    restart_at: float | None = None  # monotonic time of a pending restart
    backoff_s: float = 0.0
    restarts: int = 0
    last_exit: int | None = None


@dataclass
class _SpawnRequest:
    node_id: int
    done: threading.Event = field(default_factory=threading.Event)
    error: BaseException | None = None
    pid: int | None = None


def default_node_cmd(python: str) -> Callable[[Path], list[str]]:
    """The command that runs one node: ``python -m josefine.launch.node --config PATH``."""
    return lambda config_path: [python, "-m", "josefine.launch.node", "--config", str(config_path)]


def _describe_exit(code: int) -> str:
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit code {code}"


def _load_legacy_or_current(path: Path) -> ClusterConfig | None:
    """The cluster file at `path`, or None if it was written before keys existed (no
    `insecure` key and no node key at all): such a cluster ran plaintext."""
    import tomllib
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError):
        data = None
    if isinstance(data, dict) and "insecure" not in data and "client_keys" not in data \
            and isinstance(data.get("nodes"), dict) and data["nodes"] \
            and "cluster_id" in data \
            and not any(isinstance(n, dict) and "public_key" in n for n in data["nodes"].values()):
        return None
    return load_cluster_config(path)


def _union(first: Sequence[str], more: Sequence[str]) -> tuple[str, ...]:
    return tuple(dict.fromkeys([*first, *more]))


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp.{os.getpid()}")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


class Launcher:
    """A local cluster of `nodes` node processes, supervised.

    Args:
        nodes: number of nodes; their ids are 1..nodes.
        data_dir: directory for all files (see the module docstring).
        base_port: node i listens on ``base_port + i - 1`` on 127.0.0.1.
        restart: restart nodes that exit on their own.
        node_overrides: per-node NodeConfig keys, e.g. ``{2: {"log_level": "DEBUG"}}``.
        python: interpreter for the default node command.
        fault_injection: NodeConfig.fault_injection for every node.
        fsync: NodeConfig.fsync for every node.
        node_cmd: ``config_path -> argv``; replaces the default command (tests).
        env: extra environment variables for the nodes.
        out: where to print human-readable progress; None for silence.
        check_ports: refuse to start when a node's port is already taken.
        config: further NodeConfig keys for every node, as a mapping.
        insecure: plaintext transport and no keys (every node logs a warning).
        netns: run each node in its own network namespace, node i at the subnet's host
            number 10+i (see `josefine.launch.netns`); needs root.
        netns_subnet: the IPv4 subnet for netns (default 10.213.47.0/24).
        **settings: the same as keyword arguments (``tick_ms=10``, ...).

    Raises:
        ConfigError: a setting is invalid (the message names it).
        LaunchError: bad node count or port range, or DIR belongs to another cluster shape.
    """

    RESTART_BACKOFF_MIN_S = 0.2
    RESTART_BACKOFF_MAX_S = 5.0
    BACKOFF_RESET_AFTER_S = 30.0
    POLL_S = 0.05

    def __init__(
        self,
        nodes: int,
        data_dir: str | os.PathLike[str],
        base_port: int,
        restart: bool = True,
        node_overrides: Mapping[int, Mapping[str, Any]] | None = None,
        python: str = sys.executable,
        fault_injection: bool = False,
        fsync: bool = True,
        *,
        node_cmd: Callable[[Path], Sequence[str]] | None = None,
        env: Mapping[str, str] | None = None,
        out: TextIO | None = sys.stdout,
        check_ports: bool = True,
        config: Mapping[str, Any] | None = None,
        insecure: bool = False,
        metrics_base_port: int | None = None,
        netns: bool = False,
        netns_subnet: str | None = None,
        **settings: Any,
    ) -> None:
        settings = {**(config or {}), **settings}
        if isinstance(nodes, bool) or not isinstance(nodes, int) or nodes < 1:
            raise LaunchError(f"nodes must be an integer >= 1, got {nodes!r}")
        if isinstance(base_port, bool) or not isinstance(base_port, int) or not 1 <= base_port <= 65535 - nodes + 1:
            raise LaunchError(f"base_port must be in 1..{65535 - nodes + 1} for {nodes} nodes, got {base_port!r}")
        if metrics_base_port is not None and (
                isinstance(metrics_base_port, bool) or not isinstance(metrics_base_port, int)
                or not 1 <= metrics_base_port <= 65535 - nodes + 1):
            raise LaunchError(f"metrics_base_port must be in 1..{65535 - nodes + 1} for {nodes} "
                              f"nodes, got {metrics_base_port!r}")
        if metrics_base_port is not None and not (
                metrics_base_port + nodes <= base_port or base_port + nodes <= metrics_base_port):
            raise LaunchError(f"metrics ports {metrics_base_port}..{metrics_base_port + nodes - 1} "
                              f"overlap the node ports {base_port}..{base_port + nodes - 1}")
        overrides = {i: dict(o) for i, o in (node_overrides or {}).items()}
        for where, keys in [("settings", settings), *((f"node_overrides[{i}]", o) for i, o in overrides.items())]:
            fixed = sorted(set(keys) & _LAUNCHER_OWNED)
            if fixed:
                owned = ", ".join(sorted(_LAUNCHER_OWNED))
                raise LaunchError(f"{where}: {', '.join(fixed)} cannot be set: the launcher assigns {owned}")
        unknown = sorted(set(overrides) - set(range(1, nodes + 1)))
        if unknown:
            raise LaunchError(f"node_overrides names node(s) {unknown}, but the nodes are 1..{nodes}")

        self.data_dir = Path(data_dir).expanduser().resolve()
        self.base_port = base_port
        self.restart = restart
        self.cluster_path = self.data_dir / "cluster.toml"
        self.pids_path = self.data_dir / "pids.json"
        self._out = out
        self._check_ports = check_ports
        self._node_cmd = node_cmd or default_node_cmd(python)
        self._env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
        self.insecure = bool(insecure)
        self.client_key_path = self.data_dir / "client.key_secret"
        self.admin_key_path = self.data_dir / "admin.key_secret"
        self._existing: ClusterConfig | None = None
        self._credentials: dict[bool, ClientCredentials | None] = {}
        self.cluster_id = self._existing_cluster_id(nodes) or uuid.uuid4().hex[:12]
        self.netns_plan: netns_mod.NetnsPlan | None = None
        self._network: netns_mod.Network | None = None
        if netns:
            try:
                self.netns_plan = netns_mod.NetnsPlan(nodes, netns_subnet or netns_mod.DEFAULT_SUBNET)
            except netns_mod.NetnsError as exc:
                raise LaunchError(str(exc)) from None
        elif netns_subnet is not None:
            raise LaunchError("netns_subnet is only for netns=True")
        plan = self.netns_plan

        def host(i: int) -> str:
            return HOST if plan is None else plan.node_ip(i)

        addresses = {i: f"tcp://{host(i)}:{base_port + i - 1}" for i in range(1, nodes + 1)}
        common = {"fault_injection": fault_injection, "fsync": fsync, **settings}
        self._nodes: dict[int, _Node] = {}
        for i, address in addresses.items():
            node_dir = self.data_dir / f"node-{i}"
            values = {
                "node_id": i,
                "cluster_id": self.cluster_id,
                "address": address,
                "peers": {j: a for j, a in addresses.items() if j != i},
                "data_dir": str(node_dir / "data"),
                "insecure": self.insecure,
                **({} if self.insecure else {
                    "secret_key_file": str(node_dir / "node.key_secret"),
                    "cluster_file": str(self.cluster_path)}),
                **({} if metrics_base_port is None else {
                    "metrics_address": f"{host(i)}:{metrics_base_port + i - 1}"}),
                **common,
                **overrides.get(i, {}),
            }
            node_config = NodeConfig.from_dict(values, source=f"settings of node {i}")
            self._nodes[i] = _Node(i, node_config, node_dir / "node.toml", node_dir / "node.log")

        self._cond = threading.Condition()
        self._requests: list[_SpawnRequest] = []
        self._events: list[RestartEvent] = []
        self._supervisor: threading.Thread | None = None
        self._started = False
        self._ready = False  # every node spawned once
        self._stopping = False
        self._closing = False
        self._stopped = threading.Event()
        self._lock_file: Any = None
        self._signals_seen = 0

    # -- public API --------------------------------------------------------

    @property
    def node_ids(self) -> list[int]:
        return list(self._nodes)

    def address(self, node_id: int) -> str:
        return self._node(node_id).config.address

    def config_path(self, node_id: int) -> Path:
        return self._node(node_id).config_path

    def log_path(self, node_id: int) -> Path:
        return self._node(node_id).log_path

    def node_config(self, node_id: int) -> NodeConfig:
        return self._node(node_id).config

    def cluster_config(self) -> ClusterConfig:
        """The ClusterConfig written to ``cluster.toml`` (making missing keys first)."""
        if self.insecure:
            return ClusterConfig(
                cluster_id=self.cluster_id, insecure=True,
                nodes={i: ClusterNode(address=n.config.address, data_dir=n.config.data_dir,
                                      config_path=str(n.config_path),
                                      metrics_address=n.config.metrics_address)
                       for i, n in self._nodes.items()})
        old = self._existing
        nodes = {}
        for i, n in self._nodes.items():
            prev = old.nodes[i].previous_keys if old is not None and i in old.nodes else ()
            assert n.config.secret_key_file is not None
            nodes[i] = ClusterNode(
                address=n.config.address, data_dir=n.config.data_dir,
                config_path=str(n.config_path),
                public_key=self._keypair(Path(n.config.secret_key_file), f"node {i}").public.decode(),
                previous_keys=prev, metrics_address=n.config.metrics_address)
        client = self._keypair(self.client_key_path, "client").public.decode()
        admin = self._keypair(self.admin_key_path, "admin").public.decode()
        # Keys an operator added to an existing cluster.toml are kept on relaunch.
        clients = _union([client], old.client_keys if old is not None else ())
        admins = _union([admin], old.admin_keys if old is not None else ())
        return ClusterConfig(cluster_id=self.cluster_id, nodes=nodes, client_keys=clients,
                             admin_keys=admins, client_key_file=str(self.client_key_path),
                             admin_key_file=str(self.admin_key_path))

    def credentials(self, admin: bool = False) -> ClientCredentials | None:
        """What a `Client` of this cluster needs (None when insecure); `admin` for the
        admin key (fault rules, key reload, leadership transfer). Read once and cached:
        after `josefine keys rotate`, use `Client.from_cluster_file` for the new keys."""
        cached = self._credentials.get(admin)
        if cached is None and not self.insecure:
            cached = self._credentials[admin] = client_credentials(
                self.cluster_config(), admin=admin, source=str(self.cluster_path))
        return cached

    def _keypair(self, path: Path, what: str) -> KeyPair:
        if path.exists():
            try:
                return load_keypair(path)
            except JosefineError as exc:
                raise LaunchError(f"{what}: {exc}") from None
        pair = generate_keypair()
        write_keypair(path, pair, comment=f"{what} of cluster {self.cluster_id}")
        return pair

    def write_configs(self) -> None:
        """Write every ``node.toml`` and ``cluster.toml`` (start() does this too), making
        the key pairs that do not exist yet."""
        for node in self._nodes.values():
            Path(node.config.data_dir).mkdir(parents=True, exist_ok=True)
            _write_atomic(node.config_path, node.config.to_toml())
        _write_atomic(self.cluster_path, self.cluster_config().to_toml())

    def start(self) -> None:
        """Write the config files, start every node and the supervisor.

        Returns once every node process has been spawned (not once it is ready
        to serve; poll `josefine status` or a client for that).

        Raises:
            LaunchError: another launcher holds DIR, a port is taken, or a node
                cannot be spawned (then nothing is left running).
        """
        with self._cond:
            if self._started:
                raise LaunchError("this Launcher was already started; make a new one")
            self._started = True
        if self.netns_plan is not None:
            try:
                netns_mod.check_privileges()  # before anything is made
            except netns_mod.NetnsError as exc:
                with self._cond:
                    self._stopping = self._closing = True
                self._stopped.set()
                raise LaunchError(str(exc)) from None
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self._take_dir_lock()
        try:
            if self._check_ports and self.netns_plan is None:
                # (fresh namespaces have every port free)
                self._ensure_ports_free()
            if self.netns_plan is not None:
                self._create_network(self.netns_plan)
            self.write_configs()
            self._supervisor = threading.Thread(target=self._supervise, name="josefine-supervisor", daemon=True)
            self._supervisor.start()
            atexit.register(self._atexit)
            for node_id in self._nodes:
                self._spawn_via_supervisor(node_id)
            with self._cond:
                self._ready = True
                self._cond.notify_all()
        except BaseException:
            self.stop(grace_s=1.0)
            raise
        self._say(f"josefine: cluster {self.cluster_id}: {len(self._nodes)} node(s), data in {self.data_dir}")
        if self._network is not None:
            p = self._network.plan
            self._say(f"  network: bridge {p.bridge} {p.bridge_ip}/{p.network.prefixlen}, "
                      f"node i in namespace {p.prefix}n<i> (reaper pid {self._network.reaper_pid})")
        for i, node in self._nodes.items():
            self._say(f"  node {i}  {node.config.address}  pid {self.pid(i)}  log {node.log_path}")
        self._say(f"cluster file: {self.cluster_path}  (export JOSEFINE_CLUSTER={self.cluster_path})")

    def stop(self, grace_s: float = 5.0) -> None:
        """Stop every node: SIGTERM in reverse id order, SIGKILL after `grace_s`.

        Idempotent. Returns once no node process is left.
        """
        with self._cond:
            if self._stopping:
                already = True
            else:
                already = False
                self._stopping = True  # the supervisor spawns nothing from now on
                procs = []
                for node in reversed(list(self._nodes.values())):
                    node.restart_at = None
                    if node.proc is not None:
                        procs.append(node.proc)
        if already:
            self._stopped.wait()
            return
        try:
            procutil.terminate_all(procs, grace_s, hurry=lambda: self._signals_seen > 1)
        finally:
            # Only now let the supervisor thread exit: its death would SIGKILL
            # (PDEATHSIG) any node it spawned that is still alive.
            with self._cond:
                for node in self._nodes.values():
                    if node.proc is not None and node.proc.poll() is not None:
                        self._record_exit(node, node.proc.returncode, restart=False)
                self._closing = True
                self._cond.notify_all()
            if self._supervisor is not None and self._supervisor is not threading.current_thread():
                self._supervisor.join()
            if self._network is not None:
                left = self._network.close()
                if left:
                    self._say(f"josefine: could not delete {', '.join(left)}")
            self._write_pids()
            self._release_dir_lock()
            atexit.unregister(self._atexit)
            self._stopped.set()
            with self._cond:
                self._cond.notify_all()

    def start_node(self, node_id: int) -> int:
        """(Re)start a node stopped by `stop_node`, or cut short its restart backoff.

        Returns:
            The node's pid (the existing one if it is already running).
        """
        node = self._node(node_id)
        with self._cond:
            self._require_running()
            node.wanted = True
            node.backoff_s = 0.0
            if node.proc is not None and node.proc.poll() is None:
                return node.proc.pid
        return self._spawn_via_supervisor(node_id)

    def stop_node(self, node_id: int, grace_s: float = 5.0) -> int | None:
        """Stop one node gracefully and keep it down until `start_node`.

        Returns:
            The node's exit status, or None if it was not running.
        """
        node = self._node(node_id)
        with self._cond:
            node.wanted = False
            node.restart_at = None
            proc = node.proc
        if proc is None:
            return None
        code = procutil.terminate(proc, grace_s)
        with self._cond:
            if node.proc is proc:
                self._record_exit(node, code, restart=False)
        return code

    def kill(self, node_id: int, sig: int = signal.SIGKILL) -> bool:
        """Send `sig` to a node's process group (chaos and tests).

        A node killed this way is restarted by the supervisor like any crash
        (when restart is on); use `stop_node` to keep it down.

        Returns:
            False if the node was not running.
        """
        node = self._node(node_id)
        with self._cond:
            if node.proc is None:
                return False
            sent = procutil.signal_process(node.proc, sig)
            self._cond.notify_all()
            return sent

    def pause(self, node_id: int) -> bool:
        """Freeze a node with SIGSTOP (it keeps its sockets but answers nothing)."""
        return self.kill(node_id, signal.SIGSTOP)

    def resume(self, node_id: int) -> bool:
        """Continue a paused node with SIGCONT."""
        return self.kill(node_id, signal.SIGCONT)

    def pid(self, node_id: int) -> int | None:
        """The pid of the node's live process, or None while it is down."""
        node = self._node(node_id)
        with self._cond:
            if node.proc is None or node.proc.poll() is not None:
                return None
            return node.proc.pid

    def pids(self) -> dict[int, int | None]:
        """`pid` of every node."""
        return {i: self.pid(i) for i in self._nodes}

    def restart_count(self, node_id: int) -> int:
        """How many times the supervisor has restarted (or scheduled) this node."""
        with self._cond:
            return self._node(node_id).restarts

    @property
    def restarts(self) -> dict[int, int]:
        with self._cond:
            return {i: n.restarts for i, n in self._nodes.items()}

    @property
    def restart_events(self) -> list[RestartEvent]:
        with self._cond:
            return list(self._events)

    def last_exit(self, node_id: int) -> int | None:
        """Exit status of the node's most recent process, None if none exited yet."""
        with self._cond:
            return self._node(node_id).last_exit

    @property
    def stopped(self) -> bool:
        return self._stopped.is_set()

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the launcher is stopped or nothing is left to supervise.

        "Nothing left" means no node is running and no restart is pending
        (all nodes exited with restart off, or all were `stop_node`d).

        Returns:
            True when that happened, False on timeout.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            while not (self._stopped.is_set() or (self._ready and self._idle())):
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    return False
                self._cond.wait(0.5 if remaining is None else min(remaining, 0.5))
            return True

    def run_forever(self) -> int:
        """Start, then supervise until SIGINT/SIGTERM; stop everything and return.

        Must run in the main thread (it installs signal handlers). A second
        signal cuts the stop's grace period short (SIGKILL at once).

        Returns:
            0 after a signal; 1 if every node exited and none will be restarted.
        """
        def on_signal(signum: int, frame: Any) -> None:
            # Only set a counter here: the main thread may be inside a lock.
            self._signals_seen += 1

        previous = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            self.start()
            self._say("Ctrl-C stops all nodes.")
            while not self._signals_seen:
                if self.wait(timeout=0.2):
                    break
            signalled = self._signals_seen > 0
            if signalled:
                self._say("josefine: stopping all nodes ...")
            else:
                self._say("josefine: every node has exited and none will be restarted; stopping")
            self.stop()
            self._say("josefine: all nodes stopped")
            return 0 if signalled else 1
        finally:
            self.stop(grace_s=0.5)
            for s, handler in previous.items():
                signal.signal(s, handler)

    def __enter__(self) -> Launcher:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- supervisor thread ---------------------------------------------------

    def _supervise(self) -> None:
        with self._cond:
            while not self._closing:
                try:
                    self._supervise_once()
                except Exception as exc:  # noqa: BLE001 - this thread must not die
                    # Its death would SIGKILL every node (PDEATHSIG); report and go on.
                    self._say(f"josefine: supervisor error: {type(exc).__name__}: {exc}")
                self._cond.wait(self.POLL_S)

    def _supervise_once(self) -> None:
        """One round: serve spawn requests, reap exits, run due restarts. Lock held."""
        requests, self._requests = self._requests, []
        for req in requests:
            self._serve(req)
        changed = bool(requests)
        now = time.monotonic()
        for node in self._nodes.values():
            if node.proc is not None and node.proc.poll() is not None:
                self._record_exit(node, node.proc.returncode, restart=True)
                changed = True
            if node.restart_at is not None and node.restart_at <= now and not self._stopping:
                node.restart_at = None
                changed = True
                try:
                    self._spawn(node)
                except Exception as exc:  # noqa: BLE001 - retry with backoff
                    self._say(f"node {node.node_id}: restart failed: {exc}")
                    node.restart_at = now + node.backoff_s
                    node.backoff_s = min(node.backoff_s * 2, self.RESTART_BACKOFF_MAX_S)
        if changed:
            self._write_pids()
            self._cond.notify_all()

    def _serve(self, req: _SpawnRequest) -> None:
        try:
            if self._stopping:
                raise LaunchError("the launcher is stopping")
            node = self._nodes[req.node_id]
            if node.proc is not None and node.proc.poll() is not None:
                self._record_exit(node, node.proc.returncode, restart=False)
            if node.proc is None:
                node.restart_at = None
                self._spawn(node)
            assert node.proc is not None, "running, or just spawned"
            req.pid = node.proc.pid
        except BaseException as exc:  # handed to the requesting thread
            req.error = exc
        finally:
            req.done.set()

    def _spawn(self, node: _Node) -> None:
        """Start a node's process. Caller: the supervisor thread, holding the lock."""
        cmd = list(self._node_cmd(node.config_path))
        if self._network is not None:
            cmd = self._network.exec_prefix(node.node_id) + cmd
        node.proc = procutil.spawn_node(cmd, node.log_path, env=self._env)
        node.started_at = time.monotonic()
        if node.restarts:
            self._say(f"node {node.node_id}: started, pid {node.proc.pid} (restart #{node.restarts})")

    def _record_exit(self, node: _Node, code: int, *, restart: bool) -> None:
        """Note that node.proc exited; maybe schedule a restart. Caller holds the lock."""
        node.proc = None
        node.last_exit = code
        if not restart or self._stopping or not node.wanted:
            return
        if not self.restart:
            self._say(f"node {node.node_id} exited ({_describe_exit(code)}); restart is off")
            return
        now = time.monotonic()
        if node.backoff_s == 0.0 or now - node.started_at >= self.BACKOFF_RESET_AFTER_S:
            node.backoff_s = self.RESTART_BACKOFF_MIN_S
        delay = node.backoff_s
        node.backoff_s = min(node.backoff_s * 2, self.RESTART_BACKOFF_MAX_S)
        node.restart_at = now + delay
        node.restarts += 1
        self._events.append(RestartEvent(node.node_id, code, delay, time.time()))
        self._say(f"node {node.node_id} exited ({_describe_exit(code)}); restarting in {delay:.1f} s")

    # -- helpers -------------------------------------------------------------

    def _node(self, node_id: int) -> _Node:
        try:
            return self._nodes[node_id]
        except KeyError:
            raise LaunchError(f"no node {node_id!r}; nodes are {list(self._nodes)}") from None

    def _require_running(self) -> None:
        if not self._started or self._supervisor is None:
            raise LaunchError("the launcher is not started")
        if self._stopping:
            raise LaunchError("the launcher is stopping")

    def _idle(self) -> bool:
        return all(n.proc is None and n.restart_at is None for n in self._nodes.values())

    def _spawn_via_supervisor(self, node_id: int) -> int:
        req = _SpawnRequest(node_id)
        with self._cond:
            self._require_running()
            self._requests.append(req)
            self._cond.notify_all()
        while not req.done.wait(1.0):
            if self._supervisor is None or not self._supervisor.is_alive():
                raise LaunchError("the supervisor thread died")
        if req.error is not None:
            if isinstance(req.error, OSError):
                cmd = " ".join(map(str, self._node_cmd(self._nodes[node_id].config_path)))
                raise LaunchError(f"cannot start node {node_id} ({cmd}): {req.error}") from req.error
            raise req.error
        assert req.pid is not None
        return req.pid

    def _say(self, line: str) -> None:
        if self._out is not None:
            try:
                print(line, file=self._out, flush=True)
            except (OSError, ValueError):
                pass  # a closed stdout must not kill supervision

    def _write_pids(self) -> None:
        data = {
            "launcher": os.getpid(),
            "cluster_id": self.cluster_id,
            "nodes": {
                str(i): (n.proc.pid if n.proc is not None and n.proc.returncode is None else None)
                for i, n in self._nodes.items()
            },
        }
        if self._network is not None:
            data["netns"] = {**self._network.plan.describe(), "reaper": self._network.reaper_pid}
        try:
            _write_atomic(self.pids_path, json.dumps(data, indent=2) + "\n")
        except OSError:
            pass  # informational only

    def _create_network(self, plan: netns_mod.NetnsPlan) -> None:
        """Make the namespaces and links (the reaper first), and record their names in
        pids.json at once, so that whoever finds a launcher dead can find them too."""
        network = netns_mod.Network(plan, python=sys.executable, env=self._env,
                                    log_path=self.data_dir / "netns.log")
        self._network = network
        try:
            network.create()
        except netns_mod.NetnsError as exc:
            raise LaunchError(str(exc)) from None
        self.netns_plan = network.plan  # the tag may have been redrawn
        self._write_pids()

    def _existing_cluster_id(self, nodes: int) -> str | None:
        if not self.cluster_path.exists():
            return None
        try:
            existing = _load_legacy_or_current(self.cluster_path)
        except ConfigError as exc:
            raise LaunchError(f"{exc}; fix or remove it to launch on {self.data_dir}") from None
        if existing is None:   # written before keys existed: plaintext, no keys yet
            return self._upgrade_legacy(nodes)
        if existing.insecure != self.insecure:
            was = "insecure" if existing.insecure else "secure"
            raise LaunchError(f"{self.cluster_path} describes a {was} cluster: relaunch it "
                              f"{'with' if existing.insecure else 'without'} --insecure "
                              "(all nodes of a cluster must agree)")
        self._existing = existing
        want = list(range(1, nodes + 1))
        if list(existing.nodes) != want:
            raise LaunchError(
                f"{self.cluster_path} describes nodes {list(existing.nodes)}, not {want}: "
                "changing membership by relaunching is unsafe; use a fresh --data-dir"
            )
        return existing.cluster_id

    def _upgrade_legacy(self, nodes: int) -> str:
        """A cluster.toml from before Curve keys: keep its cluster id; a secure relaunch
        makes the keys (every node restarts with them, so no node is left plaintext)."""
        import tomllib
        data = tomllib.loads(self.cluster_path.read_text(encoding="utf-8"))
        ids = sorted(int(k) for k in data.get("nodes", {}))
        if ids != list(range(1, nodes + 1)):
            raise LaunchError(f"{self.cluster_path} describes nodes {ids}, not "
                              f"{list(range(1, nodes + 1))}: use a fresh --data-dir")
        self._say(f"josefine: {self.cluster_path} predates Curve keys; "
                  + ("relaunching insecure" if self.insecure else "making keys for it"))
        return str(data["cluster_id"])

    def _take_dir_lock(self) -> None:
        f = open(self.data_dir / "launcher.lock", "a+")
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.close()
            with self._cond:
                self._stopping = self._closing = True
            self._stopped.set()
            raise LaunchError(f"another launcher is running on {self.data_dir}") from None
        f.seek(0)
        f.truncate()
        f.write(f"{os.getpid()}\n")
        f.flush()
        self._lock_file = f

    def _release_dir_lock(self) -> None:
        if self._lock_file is not None:
            self._lock_file.close()  # closing drops the flock
            self._lock_file = None

    def _ensure_ports_free(self) -> None:
        for i, node in self._nodes.items():
            wanted = [(node.config.port, "--base-port")]
            if node.config.metrics_address is not None:
                wanted.append((parse_metrics_address(node.config.metrics_address)[1],
                               "--metrics-base-port"))
            for port, flag in wanted:
                with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
                    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                    try:
                        s.bind((HOST, port))
                    except OSError as exc:
                        raise LaunchError(
                            f"port {port} for node {i} on {HOST} is not free ({exc.strerror}); "
                            f"choose another {flag}"
                        ) from None

    def _atexit(self) -> None:
        # Interpreter exiting without stop(): shut the nodes down gracefully.
        self.stop(grace_s=2.0)
