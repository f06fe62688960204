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

__all__ = ["LaunchError", "Launcher", "RestartEvent", "default_node_cmd", "launcher_running",
           "promote_when_caught_up", "request_launcher"]

HOST = "127.0.0.1"
"""Launched clusters bind to loopback only, unless each node has a namespace (netns=True)."""


_LAUNCHER_OWNED = frozenset({"node_id", "cluster_id", "address", "peers", "data_dir",
                             "insecure", "secret_key_file", "cluster_file", "join"})
"""NodeConfig keys the launcher derives from the node id, base port and data dir."""

CONTROL_DIR = "control"
"""Under DIR: where `josefine member` drops requests for the running launcher (see
`Launcher.serve_request` and `josefine.launch.control`)."""

REMOVED_FILE = "removed.json"
"""Under DIR: ids that were members once; never given out again (A.12: an id is never added
twice, since a node under a reused id could vote twice in one term)."""


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


def _why(exc: BaseException) -> str:
    """One line for an error: the message, prefixed by its type unless it is ours."""
    if isinstance(exc, LaunchError):
        return str(exc)
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


def launcher_running(data_dir: str | os.PathLike[str]) -> bool:
    """Whether a launcher holds DIR's lock right now (it holds it from start to stop)."""
    try:
        f = open(Path(data_dir) / "launcher.lock", "rb")   # noqa: SIM115 - closed below
    except OSError:
        return False
    try:
        fcntl.flock(f, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        f.close()   # (drops the shared lock, if it was taken)
    return False


def request_launcher(data_dir: str | os.PathLike[str], request: Mapping[str, Any],
                     timeout: float) -> Any:
    """Hand `request` to the launcher running on DIR and wait for its answer.

    The protocol is files, so it needs nothing but DIR: the request goes to
    ``DIR/control/<id>.req`` (written aside and renamed, so it is never read half-written);
    the launcher's control thread renames it ``<id>.taken`` (one taker), acts, and writes
    ``<id>.resp`` the same way. A request nobody takes within a few seconds is withdrawn
    (then nothing happened). Returns the result; raises LaunchError with the launcher's
    one-line error, or when no launcher runs on DIR or none answered in time.
    """
    directory = Path(data_dir)
    if not launcher_running(directory):
        raise LaunchError(f"no launcher is running on {directory} (start it with `josefine "
                          f"launch --data-dir {directory}`)")
    control = directory / CONTROL_DIR
    control.mkdir(exist_ok=True)
    rid = f"{int(time.time() * 1000)}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    req, resp = control / f"{rid}.req", control / f"{rid}.resp"
    _write_atomic(req, json.dumps({**request, "timeout": timeout}))
    start = time.monotonic()
    pickup_deadline = start + 5.0
    deadline = start + timeout + 10.0   # the launcher honours `timeout` itself
    while time.monotonic() < deadline:
        if resp.exists():
            answer = json.loads(resp.read_text(encoding="utf-8"))
            resp.unlink(missing_ok=True)
            if not answer.get("ok"):
                raise LaunchError(str(answer.get("error")))
            return answer.get("result")
        if time.monotonic() > pickup_deadline and req.exists():
            try:
                req.unlink()
            except FileNotFoundError:
                pass   # taken just now: wait for the answer
            else:
                raise LaunchError(f"the launcher on {directory} did not take the request "
                                  "(nothing was changed)")
        time.sleep(0.02)
    raise LaunchError(f"no answer from the launcher on {directory} within {timeout:g} s; the "
                      "change may still complete (see `josefine member list`)")


def promote_when_caught_up(promote: Callable[[], Any], deadline: float,
                           give_up: Callable[[], bool] = lambda: False) -> Any:
    """Call `promote` until it succeeds. The leader refuses a learner that lags by more than
    a batch (A.12), so that refusal is retried until `deadline` (monotonic); any other error
    propagates at once. Raises LaunchError quoting the last refusal at the deadline."""
    from josefine.errors import RejectedError
    while True:
        try:
            return promote()
        except RejectedError as exc:
            if "not caught up" not in str(exc):
                raise
            if time.monotonic() + 0.05 >= deadline or give_up():
                raise LaunchError(f"not caught up in time ({exc})") from None
        time.sleep(0.05)   # the learner catches up meanwhile


def _union(first: Sequence[str], more: Sequence[str]) -> tuple[str, ...]:
    return tuple(dict.fromkeys([*first, *more]))


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp.{os.getpid()}")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


class Launcher:
    """A local cluster of `nodes` node processes, supervised.

    Args:
        nodes: number of nodes; their ids are 1..nodes. On a DIR with a cluster.toml the
            members are that file's (`josefine member` changes them); `nodes` then must be
            their number or None (None on a fresh DIR: 3).
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
        nodes: int | None,
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
        self.data_dir = Path(data_dir).expanduser().resolve()
        self.cluster_path = self.data_dir / "cluster.toml"
        self.insecure = bool(insecure)
        self._out = out
        self._existing: ClusterConfig | None = None
        if nodes is not None and (isinstance(nodes, bool) or not isinstance(nodes, int) or nodes < 1):
            raise LaunchError(f"nodes must be an integer >= 1, got {nodes!r}")
        # The members: those of an existing cluster.toml (a relaunch starts exactly the
        # current members, whatever `josefine member` made of them), else 1..nodes.
        existing_ids, existing_cid = self._existing_members(nodes)
        ids = existing_ids or list(range(1, (nodes or 3) + 1))
        nodes = len(ids)
        top = max(ids)
        if isinstance(base_port, bool) or not isinstance(base_port, int) or not 1 <= base_port <= 65535 - top + 1:
            raise LaunchError(f"base_port must be in 1..{65535 - top + 1} for nodes up to {top}, got {base_port!r}")
        if metrics_base_port is not None and (
                isinstance(metrics_base_port, bool) or not isinstance(metrics_base_port, int)
                or not 1 <= metrics_base_port <= 65535 - top + 1):
            raise LaunchError(f"metrics_base_port must be in 1..{65535 - top + 1} for nodes up "
                              f"to {top}, got {metrics_base_port!r}")
        if metrics_base_port is not None and not (
                metrics_base_port + top <= base_port or base_port + top <= metrics_base_port):
            raise LaunchError(f"metrics ports {metrics_base_port}..{metrics_base_port + top - 1} "
                              f"overlap the node ports {base_port}..{base_port + top - 1}")
        overrides = {i: dict(o) for i, o in (node_overrides or {}).items()}
        for where, keys in [("settings", settings), *((f"node_overrides[{i}]", o) for i, o in overrides.items())]:
            fixed = sorted(set(keys) & _LAUNCHER_OWNED)
            if fixed:
                owned = ", ".join(sorted(_LAUNCHER_OWNED))
                raise LaunchError(f"{where}: {', '.join(fixed)} cannot be set: the launcher assigns {owned}")
        unknown = sorted(set(overrides) - set(ids))
        if unknown:
            raise LaunchError(f"node_overrides names node(s) {unknown}, but the nodes are {ids}")

        self.base_port = base_port
        self.metrics_base_port = metrics_base_port
        self.restart = restart
        self.pids_path = self.data_dir / "pids.json"
        self.control_dir = self.data_dir / CONTROL_DIR
        self._check_ports = check_ports
        self._node_cmd = node_cmd or default_node_cmd(python)
        self._env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
        self.client_key_path = self.data_dir / "client.key_secret"
        self.admin_key_path = self.data_dir / "admin.key_secret"
        self._credentials: dict[bool, ClientCredentials | None] = {}
        self.cluster_id = existing_cid or uuid.uuid4().hex[:12]
        self.netns_plan: netns_mod.NetnsPlan | None = None
        self._network: netns_mod.Network | None = None
        if netns:
            if ids != list(range(1, nodes + 1)):
                raise LaunchError(f"--netns runs nodes 1..N, but the members are {ids}")
            try:
                self.netns_plan = netns_mod.NetnsPlan(nodes, netns_subnet or netns_mod.DEFAULT_SUBNET)
            except netns_mod.NetnsError as exc:
                raise LaunchError(str(exc)) from None
        elif netns_subnet is not None:
            raise LaunchError("netns_subnet is only for netns=True")
        self._common = {"fault_injection": fault_injection, "fsync": fsync, **settings}
        self._overrides = overrides
        self._nodes: dict[int, _Node] = {}
        for i in ids:
            self._nodes[i] = self._make_node(i, ids, join=self._joined(i))
        self._members_lock = threading.Lock()
        self._member_op: str | None = None

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
            self.control_dir.mkdir(exist_ok=True)
            for stale in self.control_dir.iterdir():   # from a launcher that is gone
                stale.unlink(missing_ok=True)
            threading.Thread(target=self._serve_control, name="josefine-control",
                             daemon=True).start()
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

    # -- membership ----------------------------------------------------------

    def removed_ids(self) -> set[int]:
        """Ids that were members once and are never given out again (DIR/removed.json)."""
        try:
            data = json.loads((self.data_dir / REMOVED_FILE).read_text(encoding="utf-8"))
            return {int(i) for i in data.get("removed", [])}
        except (OSError, ValueError, TypeError, AttributeError):
            return set()

    def next_free_id(self) -> int:
        """One above every id in use, removed, or with a directory left under DIR."""
        dirs = {int(d.name[5:]) for d in self.data_dir.glob("node-*") if d.name[5:].isdigit()}
        return max({0, *self._nodes, *self.removed_ids(), *dirs}) + 1

    def add_member(self, node_id: int | None = None, *, learner: bool = False,
                   timeout: float = 60.0) -> dict[str, Any]:
        """Grow the running cluster by one node that this launcher runs and supervises.

        In order (docs/protocol.md A.12, "Runtime"): the node's directory, key pair and
        node.toml (``join = true``, the current members as peers); its public key into
        cluster.toml and every member's keys reloaded; its process started; the leader
        adds it as a learner; unless `learner`, the leader promotes it once it is caught up
        (refusals saying it lags are retried until `timeout`). Returns once the last change
        is committed: ``{"id", "address", "role", "members", "learner_s", "voter_s"}``.

        Raises:
            LaunchError: one line naming the problem. If the learner was not added (a bad
                id, a port in use, a change in progress, no leader, a refusal) everything
                made for it is undone; if only its promotion failed it stays a learner.
        """
        t0 = time.monotonic()
        deadline = t0 + timeout
        with self._membership_change("add"):
            leader_members = self._leader_members(min(5.0, timeout))
            if node_id is None:
                node_id = max(self.next_free_id(), max(leader_members, default=0) + 1)
            elif isinstance(node_id, bool) or not isinstance(node_id, int) or node_id < 1:
                raise LaunchError(f"a node id is an integer >= 1, not {node_id!r}")
            elif node_id in leader_members or node_id in self._nodes:
                raise LaunchError(f"node {node_id} is already a member")
            elif node_id in self.removed_ids():
                raise LaunchError(f"node {node_id} was a member before: ids are never reused "
                                  f"(next free id: {self.next_free_id()})")
            elif (self.data_dir / f"node-{node_id}").exists():
                raise LaunchError(f"{self.data_dir / f'node-{node_id}'} exists: remove it or "
                                  "choose another id")
            if node_id + self.base_port - 1 > 65535:
                raise LaunchError(f"node {node_id} would listen on port "
                                  f"{self.base_port + node_id - 1}, above 65535")
            node = self._make_node(node_id, list(self._nodes), join=True)
            address = node.config.address
            taken = [i for i, a in leader_members.items() if a == address]
            if taken:
                raise LaunchError(f"address {address} is already node {taken[0]}'s")
            if self._check_ports:
                self._ensure_port_free(node)
            self._say(f"josefine: adding node {node_id} at {address}")
            added = False
            try:
                self._create_node_files(node)
                self._reload_keys(exclude=node_id)
                self._spawn_via_supervisor(node_id)
                members = self._change("add_learner", node_id, address, deadline)
                added = True
                t_learner = time.monotonic() - t0
                self._write_node_configs()
                if not learner:
                    members = self._promote(node_id, deadline)
            except BaseException as exc:
                if not added:
                    self._undo_add(node_id)
                    raise LaunchError(f"node {node_id} not added: {_why(exc)}") from None
                raise LaunchError(f"node {node_id} joined as a learner but is not a voter: "
                                  f"{_why(exc)}; it keeps catching up: `josefine member "
                                  f"promote {node_id}` later") from None
            role = next((m["role"] for m in members if int(m["id"]) == node_id), "?")
            self._say(f"josefine: node {node_id} is a {role}")
            return {"id": node_id, "address": address, "role": role, "members": members,
                    "learner_s": round(t_learner, 3),
                    "voter_s": None if learner else round(time.monotonic() - t0, 3)}

    def promote_member(self, node_id: int, timeout: float = 30.0) -> list[dict[str, Any]]:
        """Make learner `node_id` a voter, retrying while the leader says it lags."""
        with self._membership_change("promote"):
            return self._promote(node_id, time.monotonic() + timeout)

    def remove_member(self, node_id: int, *, wipe: bool = False,
                      timeout: float = 30.0) -> dict[str, Any]:
        """Remove node `node_id` from the cluster; once that is committed, stop its process,
        drop it from cluster.toml (every remaining member reloads its keys), remember its id
        as used, and with `wipe` delete its directory. Returns ``{"id", "members",
        "committed_s", "done_s"}``: seconds until the removal was committed, and until all
        of this was done (its process stopped, the files updated).

        Raises:
            LaunchError: the leader refused (not a member, the last voter, a change in
                progress, ...) or did not answer; nothing was changed then.
        """
        t0 = time.monotonic()
        deadline = t0 + timeout
        with self._membership_change("remove"):
            if wipe and node_id not in self._nodes:
                raise LaunchError(f"node {node_id} is not run by this launcher: cannot wipe it")
            try:
                members = self._change("remove", node_id, None, deadline)
            except JosefineError as exc:
                raise LaunchError(f"node {node_id} not removed: {_why(exc)}") from None
            committed_s = time.monotonic() - t0
            self._say(f"josefine: node {node_id} removed from the cluster")
            self._remember_removed(node_id)
            if node_id in self._nodes:
                self._forget_node(node_id, wipe=wipe)
            return {"id": node_id, "members": members, "committed_s": round(committed_s, 3),
                    "done_s": round(time.monotonic() - t0, 3)}

    def serve_request(self, request: Mapping[str, Any]) -> dict[str, Any]:
        """Answer one request of `josefine member` (``{"op": "add" | "remove" | "promote",
        ...}``) as ``{"ok": true, "result": ...}`` or ``{"ok": false, "error": "..."}``."""
        try:
            op = request.get("op")
            timeout = float(request.get("timeout", 60.0))
            if op == "add":
                node = request.get("node")
                result: Any = self.add_member(None if node is None else int(node),
                                              learner=bool(request.get("learner")),
                                              timeout=timeout)
            elif op == "remove":
                result = self.remove_member(int(request["node"]),
                                            wipe=bool(request.get("wipe")), timeout=timeout)
            elif op == "promote":
                result = {"members": self.promote_member(int(request["node"]), timeout)}
            else:
                raise LaunchError(f"unknown request {op!r}")
            return {"ok": True, "result": result}
        except Exception as exc:  # noqa: BLE001 - every failure goes back as one line
            return {"ok": False, "error": _why(exc)}

    # membership helpers (callers hold _members_lock via _membership_change)

    def _membership_change(self, what: str) -> Any:
        launcher = self

        class _Held:
            def __enter__(self) -> None:
                launcher._require_running()
                if launcher._network is not None:
                    raise LaunchError("membership changes are not supported with --netns")
                if not launcher._members_lock.acquire(blocking=False):
                    raise LaunchError(f"another membership change ({launcher._member_op}) "
                                      "is in progress")
                launcher._member_op = what

            def __exit__(self, *exc: object) -> None:
                launcher._member_op = None
                launcher._members_lock.release()
        return _Held()

    def _admin_creds(self) -> ClientCredentials | None:
        """Admin credentials from cluster.toml as it is now (it names the newest nodes)."""
        if self.insecure:
            return None
        return client_credentials(load_cluster_config(self.cluster_path), admin=True,
                                  source=str(self.cluster_path))

    def _leader_members(self, timeout: float) -> dict[int, str]:
        """{id: address} of the configuration of the node that leads (newest term)."""
        from josefine.client import query_status
        creds = self._admin_creds()
        best: tuple[int, dict[str, Any]] | None = None
        for node in list(self._nodes.values()):
            try:
                st = query_status(node.config.address, self.cluster_id, min(timeout, 2.0),
                                  credentials=creds)
            except Exception:  # noqa: BLE001 - a down node is simply not the leader
                continue
            if st.get("role") == "leader" and (best is None or st.get("term", 0) > best[0]):
                best = (int(st.get("term") or 0), st)
        if best is None:
            raise LaunchError("no node of the cluster is leading right now; retry in a moment")
        return {int(m["id"]): str(m["address"]) for m in best[1].get("members") or []}

    def _client(self, deadline: float) -> Any:
        """An admin Client of the current members, its timeout what is left until `deadline`."""
        from josefine.client import Client
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise LaunchError("timed out")
        addresses = {i: n.config.address for i, n in self._nodes.items()}
        return Client(addresses, self.cluster_id, timeout=remaining,
                      credentials=self._admin_creds())

    def _change(self, op: str, node_id: int, address: str | None,
                deadline: float) -> list[dict[str, Any]]:
        with self._client(deadline) as client:
            return list(client.change_membership(op, node_id, address))

    def _promote(self, node_id: int, deadline: float) -> list[dict[str, Any]]:
        with self._client(deadline) as client:
            return list(promote_when_caught_up(
                lambda: client.change_membership("promote", node_id), deadline,
                give_up=lambda: self._stopping))

    def _ensure_port_free(self, node: _Node) -> None:
        port = node.config.port
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                s.bind((HOST, port))
            except OSError as exc:
                raise LaunchError(f"address {node.config.address} for node {node.node_id} is "
                                  f"in use ({exc.strerror}); choose another id") from None

    def _create_node_files(self, node: _Node) -> None:
        """The new node's directory, key pair and node.toml; its entry in cluster.toml; and
        the node in this launcher's table (not started yet)."""
        from josefine.security import set_cluster_node
        Path(node.config.data_dir).mkdir(parents=True, exist_ok=True)
        public = None
        if not self.insecure:
            assert node.config.secret_key_file is not None
            public = self._keypair(Path(node.config.secret_key_file),
                                   f"node {node.node_id}").public.decode()
        _write_atomic(node.config_path, node.config.to_toml())
        set_cluster_node(self.cluster_path, node.node_id, ClusterNode(
            address=node.config.address, data_dir=node.config.data_dir,
            config_path=str(node.config_path), public_key=public,
            metrics_address=node.config.metrics_address))
        with self._cond:
            self._nodes = {**self._nodes, node.node_id: node}   # copy: readers iterate freely
            self._cond.notify_all()

    def _forget_node(self, node_id: int, *, wipe: bool) -> None:
        """Stop a node that is no longer a member and drop it from the files."""
        from josefine.security import set_cluster_node
        self.stop_node(node_id)
        with self._cond:
            self._nodes = {i: n for i, n in self._nodes.items() if i != node_id}
            self._cond.notify_all()
        set_cluster_node(self.cluster_path, node_id, None)
        self._write_pids()
        self._write_node_configs()
        self._reload_keys()
        if wipe:
            import shutil
            shutil.rmtree(self.data_dir / f"node-{node_id}", ignore_errors=True)

    def _undo_add(self, node_id: int) -> None:
        """Take back a node that never became a member: nothing of it is left."""
        if node_id not in self._nodes:
            return
        try:
            self._forget_node(node_id, wipe=True)
        except Exception as exc:  # noqa: BLE001 - the original error matters more
            self._say(f"josefine: undoing node {node_id}: {exc}")

    def _remember_removed(self, node_id: int) -> None:
        ids = sorted(self.removed_ids() | {node_id})
        _write_atomic(self.data_dir / REMOVED_FILE, json.dumps({"removed": ids}) + "\n")

    def _write_node_configs(self) -> None:
        """Every member's node.toml names the current members as its peers (a restart by
        the supervisor or a relaunch reads them); a joined node stays ``join = true``."""
        ids = list(self._nodes)
        for i, node in list(self._nodes.items()):
            fresh = self._make_node(i, ids, join=node.config.join)
            node.config = fresh.config
            _write_atomic(node.config_path, node.config.to_toml())

    def _reload_keys(self, exclude: int | None = None) -> None:
        """Ask every running member to re-read cluster.toml's keys. One that is down reads
        them when it starts, so a failure is only reported."""
        if self.insecure:
            return
        from josefine.client import admin_request
        creds = self._admin_creds()
        for i, node in list(self._nodes.items()):
            if i == exclude or self.pid(i) is None:
                continue
            try:
                admin_request(node.config.address, self.cluster_id, "reload_keys",
                              timeout=2.0, credentials=creds)
            except Exception as exc:  # noqa: BLE001 - see above
                self._say(f"josefine: node {i} did not reload its keys: {_why(exc)}")

    # -- requests from `josefine member` (files in DIR/control) -------------

    def _serve_control(self) -> None:
        """Pick up request files and answer each in a thread of its own (a second change
        is answered at once with "in progress", not queued)."""
        while not self._closing:
            try:
                names = sorted(p.name for p in self.control_dir.glob("*.req"))
            except OSError:
                names = []
            for name in names:
                req_path = self.control_dir / name
                taken = req_path.with_suffix(".taken")
                try:
                    os.replace(req_path, taken)   # only one taker, even across launchers
                except OSError:
                    continue
                threading.Thread(target=self._answer_file, args=(taken,), daemon=True,
                                 name=f"josefine-control-{taken.stem}").start()
            self._stopped.wait(0.05)

    def _answer_file(self, taken: Path) -> None:
        try:
            request = json.loads(taken.read_text(encoding="utf-8"))
            if not isinstance(request, dict):
                raise ValueError("not a JSON object")
        except (OSError, ValueError) as exc:
            answer: dict[str, Any] = {"ok": False, "error": f"unreadable request: {exc}"}
        else:
            answer = self.serve_request(request)
        try:
            _write_atomic(taken.with_suffix(".resp"), json.dumps(answer, default=str))
            taken.unlink(missing_ok=True)
        except OSError as exc:
            self._say(f"josefine: cannot answer {taken.name}: {exc}")

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

    def _existing_members(self, nodes: int | None) -> tuple[list[int], str | None]:
        """(member ids, cluster id) of an existing cluster.toml, or ([], None) for a fresh DIR.
        `nodes`, when given, must match the number of members: membership changes only
        through `josefine member`, never by relaunching with another count."""
        if not self.cluster_path.exists():
            return [], None
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
        ids = sorted(existing.nodes)
        if nodes is not None and len(ids) != nodes:
            raise LaunchError(
                f"{self.cluster_path} describes nodes {ids}, not {nodes} node(s): "
                "changing membership by relaunching is unsafe; relaunch without --nodes "
                "(or with --nodes " + str(len(ids)) + ") and use `josefine member add/remove`, "
                "or use a fresh --data-dir"
            )
        return ids, existing.cluster_id

    def _upgrade_legacy(self, nodes: int | None) -> tuple[list[int], str]:
        """A cluster.toml from before Curve keys: keep its cluster id; a secure relaunch
        makes the keys (every node restarts with them, so no node is left plaintext)."""
        import tomllib
        data = tomllib.loads(self.cluster_path.read_text(encoding="utf-8"))
        ids = sorted(int(k) for k in data.get("nodes", {}))
        want = list(range(1, (nodes or len(ids)) + 1))
        if ids != want:
            raise LaunchError(f"{self.cluster_path} describes nodes {ids}, not "
                              f"{want}: use a fresh --data-dir")
        self._say(f"josefine: {self.cluster_path} predates Curve keys; "
                  + ("relaunching insecure" if self.insecure else "making keys for it"))
        return ids, str(data["cluster_id"])

    def _host(self, node_id: int) -> str:
        return HOST if self.netns_plan is None else self.netns_plan.node_ip(node_id)

    def _joined(self, node_id: int) -> bool:
        """Whether node `node_id` joined a running cluster (`member add`): its node.toml says
        ``join = true``. Kept on relaunch: such a node is never a bootstrap voter."""
        import tomllib
        try:
            data = tomllib.loads((self.data_dir / f"node-{node_id}" / "node.toml")
                                 .read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError):
            return False
        return data.get("join") is True

    def _make_node(self, i: int, ids: Sequence[int], *, join: bool) -> _Node:
        """Node i's NodeConfig: it listens on base_port + i - 1, and its peers are the other
        members `ids` (for a joining node: the members it asks to join)."""
        node_dir = self.data_dir / f"node-{i}"
        address = f"tcp://{self._host(i)}:{self.base_port + i - 1}"
        values = {
            "node_id": i,
            "cluster_id": self.cluster_id,
            "address": address,
            "peers": {j: f"tcp://{self._host(j)}:{self.base_port + j - 1}" for j in ids if j != i},
            "data_dir": str(node_dir / "data"),
            "insecure": self.insecure,
            **({} if self.insecure else {
                "secret_key_file": str(node_dir / "node.key_secret"),
                "cluster_file": str(self.cluster_path)}),
            **({} if self.metrics_base_port is None else {
                "metrics_address": f"{self._host(i)}:{self.metrics_base_port + i - 1}"}),
            **({"join": True} if join else {}),
            **self._common,
            **self._overrides.get(i, {}),
        }
        config = NodeConfig.from_dict(values, source=f"settings of node {i}")
        return _Node(i, config, node_dir / "node.toml", node_dir / "node.log")

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
