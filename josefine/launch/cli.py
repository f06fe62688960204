"""The ``josefine`` command line.

Subcommands::

    josefine node --config node.toml            run one node in this process
    josefine launch [--nodes 3] [--data-dir DIR] [--base-port 7001] ...
                                                run and supervise a local cluster
    josefine put KEY VALUE | get KEY | delete KEY | cas KEY EXPECTED NEW
                                                use the built-in key-value store
    josefine status [--json]                    every node's role, term, head, commit
    josefine member list | add [ID] | promote ID | remove ID [--wipe]
                                                the cluster's members; grow and shrink it
    josefine chain [--cluster F | --data-dir D] [--node ID] [--last N] [--out F.png|F.svg]
                                                a node's chain of blocks as a picture
    josefine check HISTORY ...                  check a recorded history (josefine.check)
    josefine chaos ... | bench ...              chaos runs and benchmarks, when built in

The client commands and ``status`` find the cluster through ``--cluster FILE``
or the ``JOSEFINE_CLUSTER`` environment variable (``launch`` writes
``DATA_DIR/cluster.toml``; a directory stands for the cluster.toml inside it).

Exit status: 0 success; 1 error (one line on stderr); 2 usage error or a
subcommand not available in this build; 3 a negative answer: ``get`` of a
missing key, ``delete`` of a missing key, ``cas`` whose expected value did not
match (message on stderr). ``status`` exits 1 when some node is unreachable.

Modules written elsewhere (``josefine.launch.node``, ``josefine.client``,
``josefine.check.cli``, ...) are imported lazily, only by the subcommand that
needs them, so ``josefine --help`` works in any build.
"""
from __future__ import annotations

import argparse
import concurrent.futures
import importlib
import json
import os
import sys
import time
import tomllib
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

from josefine.config import CLUSTER_ENV_VAR, ClusterConfig, ConfigError, load_cluster_config, resolve_cluster_path
from josefine.errors import JosefineError, NotLeaderError, UnknownOutcomeError

__all__ = ["main", "build_parser", "STATUS_FIELDS"]

EXIT_OK, EXIT_ERROR, EXIT_USAGE, EXIT_NEGATIVE = 0, 1, 2, 3

_DELEGATED = {
    "check": "josefine.check.cli",
    "chaos": "josefine.chaos.cli",
    "bench": "josefine.bench.cli",
    "demo": "josefine.launch.demo",
}

STATUS_FIELDS = ("id", "address", "reachable", "pid", "role", "term", "leader",
                 "head", "commit", "applied", "dropped_frames", "rss_bytes",
                 "leveldb_memory_bytes", "members", "error", "metrics_address")
"""Keys of each node object in ``josefine status --json`` (see `_status`)."""


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``josefine`` command; returns the exit status."""
    args_list = list(sys.argv[1:] if argv is None else argv)
    if args_list and args_list[0] in _DELEGATED:
        # Handed over untouched: those commands own their options and --help.
        return _delegate(args_list[0], args_list[1:])
    parser = build_parser()
    try:
        args = parser.parse_args(args_list)
    except SystemExit as exc:  # --help (0) or a usage error (2)
        return _exit_code(exc.code)
    if args.command is None:
        parser.print_usage(sys.stderr)
        print("josefine: error: a command is required", file=sys.stderr)
        return EXIT_USAGE
    try:
        return int(args.func(args))
    except BrokenPipeError:
        # Output piped into e.g. `head`, which exited: not an error worth a traceback.
        try:
            sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - silences the flush at exit
        except OSError:
            pass
        return EXIT_ERROR


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="josefine",
        description="Chained Raft: run nodes and local clusters, use the key-value store.",
        epilog="exit status: 0 ok, 1 error, 2 usage, 3 negative answer (not found / cas mismatch)",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("node", help="run one node in this process")
    p.add_argument("--config", required=True, metavar="FILE", help="the node's node.toml")
    p.set_defaults(func=_node)

    p = sub.add_parser(
        "launch", help="start and supervise a local cluster",
        description="Start N node processes on 127.0.0.1 (or each in its own network "
                    "namespace with --netns), restart them when they crash, and stop them "
                    "all on Ctrl-C or SIGTERM.",
    )
    p.add_argument("--nodes", type=_positive_int, default=None, metavar="N",
                   help="number of nodes (default 3; a relaunch starts the members of "
                        "DIR/cluster.toml, which `josefine member` keeps current)")
    p.add_argument("--data-dir", type=Path, default=Path("josefine-data"), metavar="DIR",
                   help="directory for configs, logs and data (default ./josefine-data)")
    p.add_argument("--base-port", type=_port, default=7001, metavar="PORT",
                   help="node i listens on PORT+i-1 (default 7001)")
    p.add_argument("--no-restart", action="store_true", help="do not restart nodes that exit")
    p.add_argument("--fault-injection", action="store_true", help="let nodes accept fault rules")
    p.add_argument("--no-fsync", action="store_true", help="do not fsync writes (benchmarks only)")
    p.add_argument("--metrics-base-port", type=_port, default=None, metavar="PORT",
                   help="serve Prometheus metrics: node i on http://127.0.0.1:PORT+i-1/metrics "
                        "(written into cluster.toml; default: no metrics)")
    p.add_argument("--set", dest="settings", action="append", default=[], type=_setting, metavar="KEY=VALUE",
                   help="any other node.toml key for every node, VALUE in TOML syntax (repeatable)")
    p.add_argument("--quiet", action="store_true", help="print nothing but errors")
    p.add_argument("--insecure", action="store_true",
                   help="plaintext, no keys: anyone who reaches a port can forge messages")
    p.add_argument("--netns", action="store_true",
                   help="root only: run each node in its own network namespace, node i at "
                        "10.213.47.(10+i) behind a bridge at 10.213.47.1; all of it is "
                        "deleted on exit, even if the launcher is killed")
    p.add_argument("--netns-subnet", default=None, metavar="CIDR",
                   help="the IPv4 subnet for --netns (default 10.213.47.0/24)")
    p.set_defaults(func=_launch)

    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--cluster", metavar="FILE",
                        help=f"cluster.toml written by `josefine launch` (default: ${CLUSTER_ENV_VAR})")
    common.add_argument("--timeout", type=_positive_float, default=5.0, metavar="SECONDS",
                        help="give up after this long (default 5)")
    common.add_argument("--key-file", metavar="FILE",
                        help="this client's Curve key pair (default: the cluster file's client key)")

    p = sub.add_parser("put", parents=[common], help="set KEY to VALUE")
    p.add_argument("key", help="the key (a string)")
    p.add_argument("value", help="its new value (a string)")
    p.set_defaults(func=_kv)
    p = sub.add_parser("get", parents=[common], help="print the value of KEY (exit 3 if absent)")
    p.add_argument("key", help="the key to read (linearizable)")
    p.add_argument("--any", action="store_true",
                   help="let any node serve the read (a follower asks the leader for a read "
                        "index, then answers from its own state: still linearizable)")
    p.set_defaults(func=_kv)
    p = sub.add_parser("delete", parents=[common], help="remove KEY (exit 3 if absent)")
    p.add_argument("key", help="the key to remove")
    p.set_defaults(func=_kv)
    p = sub.add_parser("cas", parents=[common], help="set KEY to NEW if it is EXPECTED (exit 3 if not)")
    p.add_argument("key", help="the key to compare and set")
    p.add_argument("expected", help="the value KEY must hold for the swap")
    p.add_argument("new", help="the value KEY gets if it held EXPECTED")
    p.set_defaults(func=_kv)

    status_common = argparse.ArgumentParser(add_help=False)
    status_common.add_argument("--cluster", metavar="FILE",
                               help=f"cluster.toml written by `josefine launch` (default: ${CLUSTER_ENV_VAR})")
    status_common.add_argument("--timeout", type=_positive_float, default=1.0, metavar="SECONDS",
                               help="per-node timeout (default 1)")
    status_common.add_argument("--key-file", metavar="FILE",
                               help="Curve key pair to use (default: the cluster file's)")
    p = sub.add_parser("status", parents=[status_common], help="show every node's role, term, head and commit")
    p.add_argument("--json", action="store_true", help="print JSON (format: see josefine.launch.cli._status)")
    p.set_defaults(func=_status)

    p = sub.add_parser("keys", help="manage the cluster's Curve keys",
                       description="reload: every node re-reads the public keys of its cluster "
                                   "file (after adding, rotating or removing a key); needs the "
                                   "admin key. rotate NODE: give NODE a new key pair (its old "
                                   "key stays trusted until `keys forget NODE`); restart NODE "
                                   "afterwards. forget NODE: stop trusting NODE's previous keys.")
    p.add_argument("action", choices=["reload", "rotate", "forget"],
                   help="reload, rotate or forget (see above)")
    p.add_argument("node", nargs="?", type=_positive_int, help="node id (rotate, forget)")
    _cluster_options(p, 2.0, "per-node timeout", "admin key pair")
    p.set_defaults(func=_keys)

    p = sub.add_parser("member", help="the cluster's members (list, add, promote, remove)",
                       description="Membership of the cluster. `member list`: every member "
                                   "with its address, role (voter or learner), the leader's "
                                   "view of its match height and how far it lags the "
                                   "leader's head.")
    msub = p.add_subparsers(dest="member_command", metavar="VERB", required=True)
    mp = msub.add_parser("list", help="every member: id, address, role, match height, lag")
    mp.add_argument("--json", action="store_true",
                    help='print {"members": [{"id", "address", "role", "match_height", '
                         '"lag", "leader"}]}')
    _cluster_options(mp, 2.0, "per-node timeout", "Curve key pair to use")
    mp.set_defaults(func=_member_list)
    mp = msub.add_parser(
        "add", help="add a node: it joins as a learner and is promoted once caught up",
        description="On a cluster run by `josefine launch` (its launcher running), the "
                    "launcher makes the node's directory, key pair and node.toml, puts its "
                    "key into cluster.toml, starts and supervises it; it listens on "
                    "base port + ID - 1. With --address the cluster is not launched and you "
                    "run the node yourself (`josefine node --config FILE`, with join = true "
                    "and the current members as peers): this command puts its public key "
                    "(--node-key) into the cluster file, reloads every member's keys and "
                    "asks the leader. Returns once the node is a voter (a learner with "
                    "--learner). Needs the admin key.")
    mp.add_argument("node", nargs="?", type=_positive_int, metavar="ID",
                    help="the new node's id (default: the next free id; ids are never reused)")
    mp.add_argument("--address", metavar="ADDR",
                    help="tcp://HOST:PORT of a node you run yourself (cluster not launched)")
    mp.add_argument("--node-key", metavar="FILE",
                    help="with --address on a secure cluster: the new node's key pair (its "
                         "secret_key_file); made if FILE does not exist")
    mp.add_argument("--learner", action="store_true", help="leave it a learner (no promotion)")
    _cluster_options(mp, 120.0, "give up after this long", "admin key pair")
    mp.set_defaults(func=_member_add)
    mp = msub.add_parser("promote", help="make learner ID a voter (once it is caught up)",
                         description="Ask the leader to make learner ID a voter; while the "
                                     "leader says it lags, retry until --timeout. Needs the "
                                     "admin key.")
    mp.add_argument("node", type=_positive_int, metavar="ID", help="the learner to promote")
    _cluster_options(mp, 30.0, "give up after this long", "admin key pair")
    mp.set_defaults(func=_member_promote)
    mp = msub.add_parser("remove", help="remove member ID (the launcher then stops it)",
                         description="Ask the leader to remove member ID; returns once that "
                                     "is committed. On a launched cluster the launcher then "
                                     "stops the node, drops it from cluster.toml (every "
                                     "member reloads its keys) and, with --wipe, deletes its "
                                     "directory. Otherwise its entry leaves the cluster "
                                     "file and you stop its process. Needs the admin key.")
    mp.add_argument("node", type=_positive_int, metavar="ID", help="the member to remove")
    mp.add_argument("--wipe", action="store_true",
                    help="launched cluster: also delete the node's directory (data, key, log)")
    _cluster_options(mp, 30.0, "give up after this long", "admin key pair")
    mp.set_defaults(func=_member_remove)

    p = sub.add_parser("transfer", help="move leadership to node ID (default: the most "
                                        "caught-up follower)",
                       description="Ask the leader to hand leadership to node ID, or, without "
                                   "an id, to its most caught-up follower (highest match "
                                   "height); waits until that node leads. Needs the admin key.")
    p.add_argument("node", nargs="?", type=_positive_int, metavar="ID",
                   help="the node that should lead (default: the most caught-up follower)")
    _cluster_options(p, 10.0, "give up after this long", "admin key pair")
    p.set_defaults(func=_transfer)

    p = sub.add_parser("snapshot", help="snapshot nodes' state now (default: every node)",
                       description="Ask node ID (or every node) to snapshot its state machine "
                                   "now, as it does on its own every snapshot_blocks blocks; "
                                   "returns once each snapshot file is durable and prints "
                                   "its base. The node then compacts its chain. Needs the "
                                   "admin key.")
    p.add_argument("--node", type=_positive_int, metavar="ID",
                   help="the node to snapshot (default: every node)")
    _cluster_options(p, 60.0, "per-node timeout", "admin key pair")
    p.set_defaults(func=_snapshot)

    p = sub.add_parser(
        "chain", help="draw a node's chain of blocks (text, or --out FILE.png|FILE.svg)",
        description="Per node: the committed path (its last N heights), the commit frontier, "
                    "the head, and the branches off the path (dead ones fork below the "
                    "commit and can never commit) with the height they fork at and their "
                    "terms; every block with its height, term and payload bytes. A running "
                    "cluster is asked through an admin request (admin key); a stopped "
                    "node's store is read from disk.")
    where = p.add_mutually_exclusive_group()
    where.add_argument("--cluster", metavar="FILE",
                       help=f"ask the running cluster of this cluster.toml (default: "
                            f"${CLUSTER_ENV_VAR})")
    where.add_argument("--data-dir", type=Path, metavar="DIR",
                       help="read stopped nodes from disk: a node's data dir, its chain "
                            "store, or a `josefine launch` DIR (every node, or --node)")
    p.add_argument("--node", type=_positive_int, metavar="ID", help="only node ID (default: every node)")
    p.add_argument("--last", type=_positive_int, default=20, metavar="N",
                   help="show the last N heights of each path (default 20; the commit "
                        "and every block above it are always shown)")
    p.add_argument("--out", metavar="FILE",
                   help="write an image, FILE.png or FILE.svg (needs matplotlib), instead "
                        "of printing text")
    p.add_argument("--timeout", type=_positive_float, default=5.0, metavar="SECONDS",
                   help="per-node timeout with --cluster (default 5)")
    p.add_argument("--key-file", metavar="FILE", help="admin key pair (default: the cluster file's)")
    p.set_defaults(func=_chain)

    # Listed for --help only; main() hands these to their own modules first.
    sub.add_parser("check", help="check a recorded history for linearizability", add_help=False)
    sub.add_parser("chaos", help="run a chaos schedule against a local cluster", add_help=False)
    sub.add_parser("bench", help="run the benchmarks", add_help=False)
    sub.add_parser("demo", help="launch a local 3-node cluster and show it working", add_help=False)
    return parser


# -- argument types ------------------------------------------------------------


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def _port(text: str) -> int:
    value = _positive_int(text)
    if value > 65535:
        raise argparse.ArgumentTypeError(f"must be a port in 1..65535, got {value}")
    return value


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
    return value


def _setting(text: str) -> tuple[str, Any]:
    key, sep, raw = text.partition("=")
    key = key.strip()
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    try:
        value = tomllib.loads(f"v = {raw.strip()}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw  # a bare word: take it as a string
    return key, value


# -- helpers -------------------------------------------------------------------


def _exit_code(code: object) -> int:
    if code is None:
        return EXIT_OK
    if isinstance(code, int):
        return code
    print(code, file=sys.stderr)
    return EXIT_ERROR


def _cluster_options(p: argparse.ArgumentParser, timeout: float, timeout_help: str,
                     key_help: str) -> None:
    """--cluster, --timeout and --key-file, as every verb that talks to a cluster has them."""
    p.add_argument("--cluster", metavar="FILE",
                   help=f"cluster.toml written by `josefine launch` (default: ${CLUSTER_ENV_VAR})")
    p.add_argument("--timeout", type=_positive_float, default=timeout, metavar="SECONDS",
                   help=f"{timeout_help} (default {timeout:g})")
    p.add_argument("--key-file", metavar="FILE", help=f"{key_help} (default: the cluster file's)")


def _error(command: str, message: str) -> int:
    print(f"josefine {command}: error: {message}", file=sys.stderr)
    return EXIT_ERROR


def _not_available(command: str) -> int:
    print(f"josefine {command}: not available in this build", file=sys.stderr)
    return EXIT_USAGE


def _import_optional(modname: str) -> ModuleType | None:
    """Import `modname`, or None if it (or a package above it) does not exist.

    A ModuleNotFoundError for anything else (a missing dependency *inside* the
    module) is a real error and propagates.
    """
    try:
        return importlib.import_module(modname)
    except ModuleNotFoundError as exc:
        if exc.name and (exc.name == modname or modname.startswith(exc.name + ".")):
            return None
        raise


def _delegate(command: str, rest: list[str]) -> int:
    module = _import_optional(_DELEGATED[command])
    if module is None:
        return _not_available(command)
    try:
        return _exit_code(module.main(rest))
    except SystemExit as exc:
        return _exit_code(exc.code)


def _describe_error(exc: BaseException) -> str:
    if isinstance(exc, UnknownOutcomeError):
        return f"unknown outcome (the command may or may not have been applied): {exc}"
    if isinstance(exc, NotLeaderError):
        return f"not leader: {exc}"
    if isinstance(exc, JosefineError):
        return f"{type(exc).__name__}: {exc}"
    if isinstance(exc, OSError) and exc.strerror:
        return f"{type(exc).__name__}: {exc.strerror}"
    return f"{type(exc).__name__}: {exc}"


def _credentials(cluster: ClusterConfig, args: argparse.Namespace,
                 admin: bool = False) -> dict[str, Any]:
    """Keyword arguments carrying a secure cluster's client key (none when insecure)."""
    from josefine.security import client_credentials
    creds = client_credentials(cluster, admin=admin, key_file=getattr(args, "key_file", None))
    return {} if creds is None else {"credentials": creds}


def _load_cluster(command: str, arg: str | None) -> ClusterConfig | int:
    try:
        return load_cluster_config(resolve_cluster_path(arg))
    except ConfigError as exc:
        return _error(command, str(exc))


def _print_value(value: Any) -> None:
    if isinstance(value, bytes):
        sys.stdout.flush()
        sys.stdout.buffer.write(value + b"\n")
        sys.stdout.buffer.flush()
    elif isinstance(value, str):
        print(value)
    else:
        print(json.dumps(value, default=str))


# -- subcommands ---------------------------------------------------------------


def _node(args: argparse.Namespace) -> int:
    module = _import_optional("josefine.launch.node")
    if module is None:
        return _not_available("node")
    try:
        return _exit_code(module.main(["--config", args.config]))
    except SystemExit as exc:
        return _exit_code(exc.code)


def _launch(args: argparse.Namespace) -> int:
    from josefine.launch.cluster import LaunchError, Launcher

    settings = dict(args.settings)
    # --set fsync=... / fault_injection=... are the same as the flags.
    fsync = settings.pop("fsync", not args.no_fsync)
    fault_injection = settings.pop("fault_injection", args.fault_injection)
    try:
        if args.netns:  # say "root only" before anything else can go wrong
            from josefine.launch.netns import NetnsError, check_privileges
            try:
                check_privileges()
            except NetnsError as exc:
                raise LaunchError(str(exc)) from None
        if not args.netns and isinstance(args.base_port, int) and isinstance(args.nodes, int):
            from josefine.launch.ports import ephemeral_range, in_ephemeral_range
            top = args.base_port + args.nodes - 1
            if in_ephemeral_range(args.base_port) or in_ephemeral_range(top):
                lo, hi = ephemeral_range()
                print(f"josefine launch: warning: ports {args.base_port}..{top} lie in the "
                      f"kernel's ephemeral range {lo}..{hi}: while a node is down, an "
                      "outgoing connection may take its port and keep it from restarting; "
                      "pick a --base-port below it", file=sys.stderr)
        launcher = Launcher(
            nodes=args.nodes,
            data_dir=args.data_dir,
            base_port=args.base_port,
            restart=not args.no_restart,
            fault_injection=fault_injection,
            fsync=fsync,
            out=None if args.quiet else sys.stdout,
            config=settings,
            insecure=args.insecure,
            metrics_base_port=args.metrics_base_port,
            netns=args.netns,
            netns_subnet=args.netns_subnet,
        )
        return launcher.run_forever()
    except (ConfigError, LaunchError) as exc:
        return _error("launch", str(exc))


def _kv(args: argparse.Namespace) -> int:
    command = args.command
    cluster = _load_cluster(command, args.cluster)
    if isinstance(cluster, int):
        return cluster
    client_module = _import_optional("josefine.client")
    if client_module is None:
        return _not_available(command)
    client = None
    try:
        # A {node id: address} map lets the client follow leader hints directly.
        addresses = {node_id: node.address for node_id, node in cluster.nodes.items()}
        read_from = "any" if getattr(args, "any", False) else "leader"
        client = client_module.Client(addresses, cluster.cluster_id, timeout=args.timeout,
                                      read_from=read_from, **_credentials(cluster, args))
        if command == "put":
            client.put(args.key, args.value)
            print("OK")
            return EXIT_OK
        if command == "get":
            value = client.get(args.key)
            if value is None:
                print(f"josefine get: {args.key!r} not found", file=sys.stderr)
                return EXIT_NEGATIVE
            _print_value(value)
            return EXIT_OK
        if command == "delete":
            if client.delete(args.key):
                print("deleted")
                return EXIT_OK
            print(f"josefine delete: {args.key!r} not found", file=sys.stderr)
            return EXIT_NEGATIVE
        if command == "cas":
            if client.cas(args.key, args.expected, args.new):
                print("OK")
                return EXIT_OK
            print(f"josefine cas: {args.key!r} is not {args.expected!r}; unchanged", file=sys.stderr)
            return EXIT_NEGATIVE
        raise AssertionError(command)
    except Exception as exc:  # noqa: BLE001 - a CLI reports every failure as one line
        return _error(command, _describe_error(exc))
    finally:
        if client is not None:
            try:
                client.close()
            except Exception:  # noqa: BLE001 - nothing useful to add
                pass


def _field(status: dict[str, Any], *names: str) -> Any:
    for name in names:
        if name in status:
            return status[name]
    return None


def _block_ref(value: Any) -> Any:
    """A block id as [term, height]; ints and None pass through."""
    if value is None or (isinstance(value, int) and not isinstance(value, bool)):
        return value
    if isinstance(value, dict) and "term" in value and "height" in value:
        return [value["term"], value["height"]]
    if isinstance(value, (tuple, list)) and len(value) == 2:
        return [value[0], value[1]]
    term, height = getattr(value, "term", None), getattr(value, "height", None)
    if term is not None and height is not None:
        return [term, height]
    return str(value)


def _node_row(node_id: int, address: str, status: dict[str, Any] | None, error: str | None) -> dict[str, Any]:
    if status is None:
        return {"id": node_id, "address": address, "reachable": False, "pid": None, "role": "unreachable",
                "term": None, "leader": None, "head": None, "commit": None, "applied": None,
                "dropped_frames": None, "rss_bytes": None, "leveldb_memory_bytes": None,
                "members": None, "error": error}
    role = _field(status, "role")
    if role is not None and not isinstance(role, str):
        role = getattr(role, "name", str(role)).lower()
    return {
        "id": node_id,
        "address": address,
        "reachable": True,
        "pid": _field(status, "pid"),
        "role": role,
        "term": _field(status, "term"),
        "leader": _field(status, "leader", "leader_id"),
        "head": _block_ref(_field(status, "head")),
        "commit": _block_ref(_field(status, "commit")),
        "applied": _block_ref(_field(status, "applied")),
        "dropped_frames": _field(status, "dropped_frames", "dropped"),
        "rss_bytes": _field(status, "rss_bytes"),
        "leveldb_memory_bytes": _field(status, "leveldb_memory_bytes"),
        "members": _field(status, "members"),
        "error": None,
    }


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, list) and len(value) == 2:
        return f"({value[0]},{value[1]})"
    return str(value)


def _status(args: argparse.Namespace) -> int:
    """``josefine status``: query every node of the cluster file.

    JSON form (``--json``), stable::

        {"cluster_id": "3f9c1a2b7d4e",
         "nodes": [{"id": 1, "address": "tcp://127.0.0.1:7001", "reachable": true,
                    "pid": 4242, "role": "leader", "term": 3, "leader": 1,
                    "head": [3, 17], "commit": [3, 16], "applied": [3, 16],
                    "dropped_frames": 0, "rss_bytes": 41943040,
                    "leveldb_memory_bytes": 2097152,
                    "members": [{"id": 1, "address": "tcp://127.0.0.1:7001",
                                 "role": "voter"}, ...],
                    "error": null,
                    "metrics_address": "127.0.0.1:9101"}, ...]}

    `nodes` is in id order. Block references (`head`, `commit`, `applied`) are
    ``[term, height]`` arrays, or whatever integer height the node reports, or
    null. `rss_bytes` (the node process's resident memory) and `leveldb_memory_bytes`
    (LevelDB's own estimate of its memtables and caches) are null where the node cannot
    tell. `members` is the configuration in force on that node's path (its view: a
    lagging node may show an older one). For an unreachable node `reachable` is false, `role` is
    ``"unreachable"``, `error` says why and every other status field is null.
    `metrics_address` comes from the cluster file (null when the node serves no metrics).
    Exit status 0 when every node answered, 1 otherwise.
    """
    cluster = _load_cluster("status", args.cluster)
    if isinstance(cluster, int):
        return cluster
    client_module = _import_optional("josefine.client")
    if client_module is None:
        return _not_available("status")
    query_status = client_module.query_status
    try:
        creds = _credentials(cluster, args)
    except JosefineError as exc:
        return _error("status", str(exc))

    def ask(node_id: int, address: str) -> dict[str, Any]:
        try:
            status = query_status(address, cluster.cluster_id, args.timeout, **creds)
            if not isinstance(status, dict):
                raise TypeError(f"status is a {type(status).__name__}, not a dict")
        except Exception as exc:  # noqa: BLE001 - shown as an unreachable node
            return _node_row(node_id, address, None, _describe_error(exc))
        return _node_row(node_id, address, status, None)

    nodes = list(cluster.nodes.items())
    with concurrent.futures.ThreadPoolExecutor(max_workers=max(1, len(nodes))) as pool:
        rows = list(pool.map(lambda item: ask(item[0], item[1].address), nodes))
    for row in rows:   # from the cluster file: known for unreachable nodes too
        row["metrics_address"] = cluster.nodes[row["id"]].metrics_address

    if args.json:
        print(json.dumps({"cluster_id": cluster.cluster_id, "nodes": rows}, indent=2, default=str))
    else:
        columns = [("id", "id"), ("address", "address"), ("pid", "pid"), ("role", "role"), ("term", "term"),
                   ("leader", "leader"), ("head", "head"), ("commit", "commit"), ("applied", "applied"),
                   ("dropped", "dropped_frames")]
        table = [[title for title, _ in columns]] + [[_cell(row[key]) for _, key in columns] for row in rows]
        widths = [max(len(r[i]) for r in table) for i in range(len(columns))]
        print(f"cluster {cluster.cluster_id}")
        for r in table:
            print("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip())
        for row in rows:
            if not row["reachable"]:
                print(f"josefine status: node {row['id']} ({row['address']}): {row['error']}", file=sys.stderr)
    return EXIT_OK if all(row["reachable"] for row in rows) else EXIT_ERROR


def _reload_one(node: Any, cluster_id: str, timeout: float, creds: dict[str, Any]) -> Any:
    """Ask one node to reload its keys. A node whose key was just rotated still serves its
    previous key until it restarts, so that key is tried too."""
    import dataclasses

    from josefine.client import admin_request
    attempts = [creds]
    c = creds.get("credentials")
    if c is not None:
        for old in node.previous_keys:
            servers = {**c.server_keys, node.address: old.encode()}
            attempts.append({"credentials": dataclasses.replace(c, server_keys=servers)})
    for k, kw in enumerate(attempts):
        try:
            return admin_request(node.address, cluster_id, "reload_keys", timeout=timeout, **kw)
        except TimeoutError:
            if k == len(attempts) - 1:
                raise
    raise AssertionError("unreachable")


def _keys(args: argparse.Namespace) -> int:
    """``josefine keys reload | rotate NODE | forget NODE`` (see docs/security.md)."""
    from josefine import security

    try:
        path = resolve_cluster_path(args.cluster)
        if args.action in ("rotate", "forget"):
            if args.node is None:
                return _error("keys", f"{args.action} needs a node id")
            if args.action == "rotate":
                key_file = security.rotate_node_key(path, args.node)
                print(f"node {args.node}: new key pair in {key_file}; old key still trusted. "
                      f"Next: josefine keys reload, restart node {args.node}, then "
                      f"josefine keys forget {args.node} and josefine keys reload")
            else:
                n = security.forget_previous_keys(path, args.node)
                print(f"node {args.node}: {n} previous key(s) no longer listed. "
                      "Next: josefine keys reload")
            return EXIT_OK
        cluster = load_cluster_config(path)
        creds = _credentials(cluster, args, admin=True)
    except JosefineError as exc:
        return _error("keys", str(exc))
    failed = 0
    for node_id, node in cluster.nodes.items():
        try:
            result = _reload_one(node, cluster.cluster_id, args.timeout, creds)
            print(f"node {node_id}: reloaded ({result['nodes']} nodes, "
                  f"{result['client_keys']} client keys, {result['admin_keys']} admin keys)")
        except Exception as exc:  # noqa: BLE001 - reported per node
            failed += 1
            print(f"josefine keys: node {node_id} ({node.address}): {_describe_error(exc)}",
                  file=sys.stderr)
    return EXIT_OK if not failed else EXIT_ERROR


MEMBER_FIELDS = ("id", "address", "role", "match_height", "lag", "leader")
"""Keys of each member object in ``josefine member list --json``."""


def _find_leader(cluster: ClusterConfig, timeout: float,
                 creds: dict[str, Any]) -> tuple[int, dict[str, Any]] | None:
    """(id, status) of the node that says it leads, the newest term winning (two leaders of
    different terms can coexist for a moment); None when no node answers as leader."""
    from josefine.client import query_status
    found = []
    for node_id, node in cluster.nodes.items():
        try:
            st = query_status(node.address, cluster.cluster_id, timeout, **creds)
        except Exception:  # noqa: BLE001 - an unreachable node is simply not the leader
            continue
        if st.get("role") == "leader":
            found.append((st.get("term") or 0, node_id, st))
    if not found:
        return None
    _, node_id, st = max(found, key=lambda x: (x[0], x[1]))
    return node_id, st


def _member_list(args: argparse.Namespace) -> int:
    """``josefine member list [--json]``.

    JSON form, stable::

        {"members": [{"id": 1, "address": "tcp://127.0.0.1:7001", "role": "voter",
                      "match_height": 120, "lag": 0, "leader": true}, ...]}

    `role` is ``voter`` or ``learner``: the members are the leader's configuration (the
    cluster file's nodes, as voters, when no leader answered). `match_height` is the leader's view of the member (the leader's own head for the
    leader) and `lag` the leader's head height minus it; both are null when no leader
    answered. Exit status 0 when a leader answered, 1 otherwise.
    """
    cluster = _load_cluster("member", args.cluster)
    if isinstance(cluster, int):
        return cluster
    try:
        creds = _credentials(cluster, args)
    except JosefineError as exc:
        return _error("member", str(exc))
    leader = _find_leader(cluster, args.timeout, creds)
    rows = []
    head = None
    matches: dict[int, int] = {}
    if leader is not None:
        lst = leader[1]
        head = (lst.get("head") or [0, 0])[1]
        matches = {int(k): int(v) for k, v in (lst.get("followers") or {}).items()}
        matches[leader[0]] = head
    # The leader's configuration when one answered (learners, members the cluster file
    # does not list yet); else the cluster file's nodes, as voters.
    known = {int(m["id"]): (str(m["address"]), str(m["role"]))
             for m in (leader[1].get("members") or [] if leader is not None else [])}
    if not known:
        known = {i: (n.address, "voter") for i, n in cluster.nodes.items()}
    for node_id, (address, role) in sorted(known.items()):
        m = matches.get(node_id)
        rows.append({"id": node_id, "address": address, "role": role,
                     "match_height": m, "lag": None if m is None or head is None else head - m,
                     "leader": leader is not None and leader[0] == node_id})
    if args.json:
        print(json.dumps({"members": rows}, indent=2))
    else:
        table: list[list[str]] = [["id", "address", "role", "match", "lag", "leader"]] + [
            [str(r["id"]), str(r["address"]), str(r["role"]), _cell(r["match_height"]),
             _cell(r["lag"]), "*" if r["leader"] else ""] for r in rows]
        widths = [max(len(row[i]) for row in table) for i in range(len(table[0]))]
        for row in table:
            print("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())
    if leader is None:
        print("josefine member: no leader answered: match heights unknown", file=sys.stderr)
        return EXIT_ERROR
    return EXIT_OK


def _roles(members: Any) -> str:
    return ", ".join(f"{m['id']} {m['role']}" for m in sorted(members or [], key=lambda m: m["id"]))


def _member_add(args: argparse.Namespace) -> int:
    """``josefine member add [ID] [--address ADDR] [--learner]`` (see its --help)."""
    from josefine.launch.cluster import LaunchError, launcher_running, request_launcher
    try:
        path = resolve_cluster_path(args.cluster)
        load_cluster_config(path)
    except ConfigError as exc:
        return _error("member", str(exc))
    launched = launcher_running(path.parent)
    if args.address is None:
        if args.node_key is not None:
            return _error("member", "--node-key is only for --address (the launcher makes "
                                    "the keys of the nodes it runs)")
        if not launched:
            return _error("member", f"no launcher is running on {path.parent}: without "
                                    "--address, `member add` needs the cluster's `josefine "
                                    "launch` (or give --address and run the node yourself)")
        try:
            r = request_launcher(path.parent, {"op": "add", "node": args.node,
                                               "learner": args.learner}, args.timeout)
        except LaunchError as exc:
            return _error("member", str(exc))
        when = f"learner after {r['learner_s']:.2f} s" + (
            "" if r["voter_s"] is None else f", voter after {r['voter_s']:.2f} s")
        print(f"node {r['id']} ({r['address']}) is a {r['role']} ({when}); members: "
              f"{_roles(r['members'])}")
        return EXIT_OK
    if launched:
        return _error("member", f"the launcher on {path.parent} runs this cluster's nodes: "
                                "omit --address and it starts the new node itself")
    return _member_add_external(args, path)


def _member_add_external(args: argparse.Namespace, path: Path) -> int:
    """`member add --address`: the operator runs the node; its key goes into the cluster
    file, every member reloads, the leader adds (and promotes) it. A refused addition takes
    the key back out."""
    from josefine.client import Client
    from josefine.config import ClusterNode, parse_address
    from josefine.launch.cluster import LaunchError, promote_when_caught_up
    from josefine.security import (generate_keypair, load_keypair, set_cluster_node,
                                   write_keypair)
    cluster = load_cluster_config(path)
    try:
        parse_address(args.address)
    except ConfigError as exc:
        return _error("member", str(exc))
    try:
        creds = _credentials(cluster, args, admin=True)
    except JosefineError as exc:
        return _error("member", str(exc))
    leader = _find_leader(cluster, min(2.0, args.timeout), creds)
    if leader is None:
        return _error("member", "no node of the cluster is leading right now; retry in a moment")
    members = {int(m["id"]): str(m["address"]) for m in leader[1].get("members") or []}
    node_id = args.node or max([*members, *cluster.nodes]) + 1
    if node_id in members or node_id in cluster.nodes:
        return _error("member", f"node {node_id} is already a member")
    taken = [i for i, a in {**{i: n.address for i, n in cluster.nodes.items()}, **members}.items()
             if a == args.address]
    if taken:
        return _error("member", f"address {args.address} is already node {taken[0]}'s")
    public = None
    if not cluster.insecure:
        if args.node_key is None:
            return _error("member", "a secure cluster needs the new node's key: --node-key FILE "
                                    "(its secret_key_file; made if it does not exist)")
        key_path = Path(args.node_key)
        try:
            if key_path.exists():
                pair = load_keypair(key_path)
            else:
                pair = generate_keypair()
                write_keypair(key_path, pair, comment=f"node {node_id} of cluster "
                                                      f"{cluster.cluster_id}")
                print(f"new key pair for node {node_id} in {key_path}: set secret_key_file "
                      "to it in the node's node.toml")
        except JosefineError as exc:
            return _error("member", str(exc))
        public = pair.public.decode()

    def reload_all(cc: ClusterConfig) -> None:
        for i, n in cc.nodes.items():
            if i == node_id:
                continue
            try:
                _reload_one(n, cc.cluster_id, 2.0, _credentials(cc, args, admin=True))
            except Exception as exc:  # noqa: BLE001 - reported; it reloads when it restarts
                print(f"josefine member: node {i} did not reload its keys: "
                      f"{_describe_error(exc)}", file=sys.stderr)

    deadline = time.monotonic() + args.timeout
    if public is not None:
        reload_all(set_cluster_node(path, node_id, ClusterNode(address=args.address,
                                                               public_key=public)))
    added = False
    try:
        with Client.from_cluster_file(str(path), admin=True, key_file=args.key_file,
                                      timeout=args.timeout) as client:
            got = client.change_membership("add_learner", node_id, args.address)
            added = True
            if not public:   # insecure: the file lists it once it is a member
                set_cluster_node(path, node_id, ClusterNode(address=args.address))
            if not args.learner:
                got = promote_when_caught_up(
                    lambda: client.change_membership("promote", node_id), deadline)
    except (JosefineError, LaunchError) as exc:
        if not added:
            if public is not None:
                reload_all(set_cluster_node(path, node_id, None))
            return _error("member", f"node {node_id} not added: {_describe_error(exc)}")
        return _error("member", f"node {node_id} is a learner but not a voter: "
                                f"{_describe_error(exc)}; is it running (`josefine node "
                                f"--config ...`, join = true)? Then `josefine member "
                                f"promote {node_id}`")
    role = next((m["role"] for m in got if int(m["id"]) == node_id), "?")
    print(f"node {node_id} ({args.address}) is a {role}; members: {_roles(got)}")
    return EXIT_OK


def _member_promote(args: argparse.Namespace) -> int:
    """``josefine member promote ID``: retried while the leader says the learner lags."""
    from josefine.client import Client
    from josefine.launch.cluster import LaunchError, promote_when_caught_up
    try:
        path = resolve_cluster_path(args.cluster)
        deadline = time.monotonic() + args.timeout
        with Client.from_cluster_file(str(path), admin=True, key_file=args.key_file,
                                      timeout=args.timeout) as client:
            got = promote_when_caught_up(
                lambda: client.change_membership("promote", args.node), deadline)
    except (JosefineError, LaunchError) as exc:
        return _error("member", f"node {args.node} not promoted: {_describe_error(exc)}")
    print(f"node {args.node} is a voter; members: {_roles(got)}")
    return EXIT_OK


def _member_remove(args: argparse.Namespace) -> int:
    """``josefine member remove ID [--wipe]``."""
    from josefine.client import Client
    from josefine.launch.cluster import LaunchError, launcher_running, request_launcher
    from josefine.security import set_cluster_node
    try:
        path = resolve_cluster_path(args.cluster)
        cluster = load_cluster_config(path)
    except ConfigError as exc:
        return _error("member", str(exc))
    if launcher_running(path.parent):
        try:
            r = request_launcher(path.parent, {"op": "remove", "node": args.node,
                                               "wipe": args.wipe}, args.timeout)
        except LaunchError as exc:
            return _error("member", str(exc))
        print(f"node {args.node} removed and stopped{' and wiped' if args.wipe else ''}; "
              f"members: {_roles(r['members'])}")
        return EXIT_OK
    if args.wipe:
        return _error("member", f"--wipe needs the cluster's launcher running on {path.parent} "
                                "(it owns the node's directory)")
    try:
        with Client.from_cluster_file(str(path), admin=True, key_file=args.key_file,
                                      timeout=args.timeout) as client:
            got = client.change_membership("remove", args.node)
    except JosefineError as exc:
        return _error("member", f"node {args.node} not removed: {_describe_error(exc)}")
    if args.node in cluster.nodes:
        cc = set_cluster_node(path, args.node, None)
        for i, n in cc.nodes.items():
            try:
                _reload_one(n, cc.cluster_id, 2.0, _credentials(cc, args, admin=True))
            except Exception as exc:  # noqa: BLE001 - reported per node
                print(f"josefine member: node {i} did not reload its keys: "
                      f"{_describe_error(exc)}", file=sys.stderr)
    print(f"node {args.node} removed; stop its process now. Members: {_roles(got)}")
    return EXIT_OK


def _admin_cluster(command: str, args: argparse.Namespace
                   ) -> tuple[ClusterConfig, dict[str, Any]] | int:
    """The cluster file and admin credentials of a verb that names an optional member
    (`args.node`); an exit code when either is wrong."""
    cluster = _load_cluster(command, args.cluster)
    if isinstance(cluster, int):
        return cluster
    if args.node is not None and args.node not in cluster.nodes:
        print(f"josefine {command}: error: node {args.node} is not a member of cluster "
              f"{cluster.cluster_id} (members: {sorted(cluster.nodes)})", file=sys.stderr)
        return EXIT_USAGE
    try:
        return cluster, _credentials(cluster, args, admin=True)
    except JosefineError as exc:
        return _error(command, str(exc))


def _transfer(args: argparse.Namespace) -> int:
    """``josefine transfer [ID]``: leadership to ID, or to the most caught-up follower."""
    from josefine.client import Client
    got = _admin_cluster("transfer", args)
    if isinstance(got, int):
        return got
    cluster, creds = got

    def current_leader() -> tuple[int, dict[str, Any]] | None:
        return _find_leader(cluster, min(2.0, args.timeout), creds)

    deadline = time.monotonic() + args.timeout
    now = current_leader()
    if now is None:
        return _error("transfer", "no node of the cluster is leading right now")
    leader, st = now
    target = args.node
    if target is None:
        followers = {int(k): v for k, v in (st.get("followers") or {}).items()}
        if not followers:
            return _error("transfer", f"node {leader} leads alone: no follower to take over")
        from josefine.runtime.status import most_caught_up
        target = most_caught_up(followers)
    if target == leader:
        print(f"node {leader} already leads (term {st.get('term')})")
        return EXIT_OK
    addresses = {i: n.address for i, n in cluster.nodes.items()}
    t0 = time.monotonic()
    try:
        with Client(addresses, cluster.cluster_id, timeout=args.timeout, **creds) as client:
            client.transfer_leadership(target)
    except JosefineError as exc:
        return _error("transfer", f"to node {target}: {_describe_error(exc)}")
    while time.monotonic() < deadline:
        now = current_leader()
        if now is not None and now[0] == target:
            print(f"node {target} leads (term {now[1].get('term')}), taken over from node "
                  f"{leader} in {(time.monotonic() - t0) * 1000:.0f} ms")
            return EXIT_OK
        time.sleep(0.02)
    return _error("transfer", f"node {target} did not take over within {args.timeout} s")


def _snapshot(args: argparse.Namespace) -> int:
    """``josefine snapshot [--node ID]``: snapshot now, on one node or every node."""
    from josefine.client import admin_request
    got = _admin_cluster("snapshot", args)
    if isinstance(got, int):
        return got
    cluster, creds = got
    ids = [args.node] if args.node is not None else sorted(cluster.nodes)
    failed = 0
    for i in ids:
        try:
            base = admin_request(cluster.nodes[i].address, cluster.cluster_id, "snapshot",
                                 timeout=args.timeout, **creds)
        except JosefineError as exc:
            print(f"josefine snapshot: error: node {i}: {_describe_error(exc)}",
                  file=sys.stderr)
            failed += 1
            continue
        print(f"node {i}: snapshot at height {base[1]} (term {base[0]})")
    return EXIT_ERROR if failed else EXIT_OK


def _chain_stores(data_dir: Path, node: int | None) -> list[tuple[int | None, Path]]:
    """(node id, chain store directory) for what `--data-dir` names: a chain store itself,
    a node's data dir (holding `chain/`), a launched node's directory (`data/chain/`), or a
    `josefine launch` directory (`node-<i>/data/chain/` for each node)."""
    def node_id(p: Path) -> int | None:
        if node is not None:
            return node
        for q in (p, *list(p.parents)[:2]):   # .../node-<i>/data/chain
            if q.name.startswith("node-") and q.name[5:].isdigit():
                return int(q.name[5:])
        return None

    for sub in (data_dir, data_dir / "chain", data_dir / "data" / "chain"):
        if (sub / "CURRENT").is_file():
            return [(node_id(sub.resolve()), sub)]
    found: list[tuple[int | None, Path]] = []
    for d in sorted(data_dir.glob("node-*"), key=lambda p: (len(p.name), p.name)):
        i = int(d.name[5:]) if d.name[5:].isdigit() else None
        if i is not None and (d / "data" / "chain" / "CURRENT").is_file() \
                and (node is None or i == node):
            found.append((i, d / "data" / "chain"))
    if not found:
        which = f"node {node}'s " if node is not None else ""
        raise ConfigError(f"no {which}chain store under {data_dir} (a node's data dir holds "
                          "chain/; a launch directory holds node-<i>/data/chain/)")
    return found


def _chain(args: argparse.Namespace) -> int:
    """``josefine chain``: see `josefine.chainview`."""
    from josefine import chainview

    views = []
    failed = 0
    try:
        if args.data_dir is not None:
            for node_id, path in _chain_stores(args.data_dir, args.node):
                try:
                    views.append(chainview.load_store_view(path, args.last, node_id))
                except (chainview.ChainViewError, ValueError) as exc:
                    failed += 1
                    print(f"josefine chain: {exc}", file=sys.stderr)
        else:
            cluster = _load_cluster("chain", args.cluster)
            if isinstance(cluster, int):
                return cluster
            if args.node is not None and args.node not in cluster.nodes:
                return _error("chain", f"no node {args.node} in the cluster file")
            creds = _credentials(cluster, args, admin=True)
            from josefine.client import admin_request
            for node_id, node in cluster.nodes.items():
                if args.node is not None and node_id != args.node:
                    continue
                try:
                    desc = admin_request(node.address, cluster.cluster_id, "chain",
                                         {"last": min(args.last, chainview.MAX_LAST)},
                                         timeout=args.timeout, **creds)
                    views.append(chainview.view_from_description(desc, args.last,
                                                                 source=node.address))
                except Exception as exc:  # noqa: BLE001 - reported per node
                    failed += 1
                    print(f"josefine chain: node {node_id} ({node.address}): "
                          f"{_describe_error(exc)}", file=sys.stderr)
        if views:
            if args.out:
                out = chainview.render_image(views, args.out)
                print(f"wrote {out}")
            else:
                sys.stdout.write(chainview.render_text(views))
    except (JosefineError, chainview.ChainViewError) as exc:
        return _error("chain", str(exc))
    return EXIT_OK if views and not failed else EXIT_ERROR


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
