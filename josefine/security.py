"""CurveZMQ keys: generation, files, the set of keys a node trusts, and its ZAP handler.

Why Curve: every frame carries the cluster id in clear, so without authentication any
process that can reach a node's port can forge a leader's AppendBlocks (issue 13 did, and
rewrote committed history). CurveZMQ (RFC 26) gives each connection a long-term key pair
on both sides; the node's ZAP handler (RFC 27, pyzmq's `zmq.auth`) admits only keys the
cluster lists, and the ROUTER then tags every inbound message with the key that
authenticated its connection (the ZAP "User-Id"). The transport checks each frame against
that key: a peer frame must come from the key bound to the node id it claims, a client
key may send only client requests, and admin requests need an admin key.

Key files use ZeroMQ's certificate format (`zmq.auth.load_certificate` reads them), are
written with mode 0600, and a secret key file readable by group or others is refused, as
ssh refuses such identity files.

Trust is re-read at run time (`Node.reload_keys`, the admin op "reload_keys",
``josefine keys reload``), so keys can be added, rotated and removed without stopping the
cluster; a removed key's existing connection is cut off at its next frame, because the
check runs per frame against the current trust, not once at the handshake.
"""
from __future__ import annotations

import logging
import os
import stat
import tempfile
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Any

import zmq
import zmq.auth
from zmq.auth.thread import ThreadAuthenticator

from josefine.errors import JosefineError

if TYPE_CHECKING:
    from josefine.config import ClusterConfig, ClusterNode

__all__ = [
    "ClientCredentials",
    "KeyFileError",
    "KeyPair",
    "KeyRole",
    "NodeAuthenticator",
    "TrustedKeys",
    "generate_keypair",
    "load_keypair",
    "write_keypair",
]

_log = logging.getLogger(__name__)

ZAP_DOMAIN = "josefine"
"""The ZAP domain of every node's ROUTER (pyzmq's handler keys its policies by domain)."""

_Z85_KEY_LEN = 40


class KeyFileError(JosefineError, ValueError):
    """A key file or key is missing, malformed or too widely readable."""


class KeyRole(Enum):
    """What a trusted key may do."""

    PEER = "peer"
    """A cluster node: peer frames claiming that node's id only."""
    CLIENT = "client"
    """Client requests (propose, read, status), no admin requests."""
    ADMIN = "admin"
    """Client requests and admin requests (fault rules, key reload, leadership transfer)."""


@dataclass(frozen=True)
class KeyPair:
    """A Curve key pair, both halves Z85-encoded (40 ASCII bytes each)."""

    public: bytes
    secret: bytes = field(repr=False)


def check_public_key(key: Any, where: str) -> bytes:
    """Return `key` (str or bytes) as Z85 bytes; raise KeyFileError naming `where` if it is not
    one."""
    raw = key.encode("ascii", "replace") if isinstance(key, str) else key
    if not isinstance(raw, bytes) or len(raw) != _Z85_KEY_LEN:
        raise KeyFileError(f"{where}: expected a 40-character Z85 Curve public key, got {key!r}")
    try:
        zmq.utils.z85.decode(raw)
    except (ValueError, KeyError):
        raise KeyFileError(f"{where}: not a Z85-encoded key: {key!r}") from None
    return raw


def generate_keypair() -> KeyPair:
    """A fresh Curve key pair from libzmq's generator."""
    public, secret = zmq.curve_keypair()
    return KeyPair(public, secret)


def write_keypair(path: str | os.PathLike[str], pair: KeyPair, *, comment: str = "") -> Path:
    """Write `pair` as a ZeroMQ certificate with mode 0600, atomically (a reader never sees
    half a key, and the secret is never on disk with wider permissions)."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    text = (f"#   josefine Curve secret key{': ' + comment if comment else ''}\n"
            "#   keep private: anyone holding this file can act as its owner\n"
            "metadata\ncurve\n"
            f'    public-key = "{pair.public.decode("ascii")}"\n'
            f'    secret-key = "{pair.secret.decode("ascii")}"\n')
    fd, tmp = tempfile.mkstemp(dir=p.parent, prefix=f".{p.name}.")   # mkstemp: mode 0600
    try:
        with os.fdopen(fd, "w", encoding="ascii") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, p)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    return p


def load_keypair(path: str | os.PathLike[str]) -> KeyPair:
    """Read a secret key file written by `write_keypair` (or by `zmq.auth`).

    Raises:
        KeyFileError: missing, unreadable, readable by group/others, or without both keys.
    """
    p = Path(path)
    try:
        mode = p.stat().st_mode
    except OSError as exc:
        raise KeyFileError(f"{p}: cannot read secret key file: {exc.strerror or exc}") from None
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise KeyFileError(f"{p}: secret key file is accessible by group or others "
                        f"(mode {stat.S_IMODE(mode):04o}); run chmod 600 {p}")
    try:
        public, secret = zmq.auth.load_certificate(p)
    except (OSError, ValueError) as exc:
        raise KeyFileError(f"{p}: not a Curve key file: {exc}") from None
    if secret is None:
        raise KeyFileError(f"{p}: holds a public key only; a secret key is needed")
    check_public_key(public, f"{p}: public-key")
    check_public_key(secret, f"{p}: secret-key")
    return KeyPair(public, secret)


@dataclass(frozen=True)
class TrustedKeys:
    """The public keys one node admits, and what each may do.

    `peers` lists, per node id, the keys that may speak for that node; the first is the
    node's current key (its ROUTER's server key, used to connect to it), any others are
    previous keys still accepted during a rotation.
    """

    peers: Mapping[int, tuple[bytes, ...]]
    clients: tuple[bytes, ...] = ()
    admins: tuple[bytes, ...] = ()
    # Derived from the three lists above in __post_init__; not part of equality.
    _roles: dict[bytes, tuple[KeyRole, int | None]] = field(
        init=False, repr=False, compare=False, default_factory=dict)

    def __post_init__(self) -> None:
        roles: dict[bytes, tuple[KeyRole, int | None]] = {}
        for key in self.clients:
            roles[key] = (KeyRole.CLIENT, None)
        for key in self.admins:
            roles[key] = (KeyRole.ADMIN, None)
        for node_id, keys in self.peers.items():
            if not keys:
                raise KeyFileError(f"node {node_id}: no public key")
            for key in keys:
                if key in roles:
                    raise KeyFileError(f"node {node_id}: its key is also listed for "
                                    f"{roles[key][0].value} {roles[key][1] or ''}".rstrip())
                roles[key] = (KeyRole.PEER, node_id)
        object.__setattr__(self, "_roles", roles)

    def role_of(self, key: bytes) -> tuple[KeyRole, int | None] | None:
        """(role, node id for a peer key) of a Z85 key, or None if it is not trusted."""
        return self._roles.get(key)

    def server_key(self, node_id: int) -> bytes:
        """The key to expect from node `node_id`'s ROUTER."""
        return self.peers[node_id][0]


class NodeAuthenticator(ThreadAuthenticator):
    """pyzmq's threaded ZAP handler, admitting exactly the keys of the current `TrustedKeys`.

    It runs only at connection handshakes; the User-Id it assigns is the client's Z85 key
    (pyzmq's default), which the transport reads from every inbound message.
    """

    def __init__(self, context: zmq.Context, trust: TrustedKeys, node_id: int) -> None:
        super().__init__(context, log=logging.getLogger(f"{__name__}.zap"))
        self._trust = trust
        self._lock = threading.Lock()
        self._node_id = node_id
        self.refused = 0

    @property
    def trust(self) -> TrustedKeys:
        return self._trust

    @trust.setter
    def trust(self, trust: TrustedKeys) -> None:
        self._trust = trust   # one reference swap: atomic for the ZAP thread

    def start(self) -> None:
        super().start()
        self.configure_curve_callback(ZAP_DOMAIN, credentials_provider=self)

    def callback(self, domain: str, key: bytes) -> bool:
        """pyzmq's credentials-provider hook: is this Z85 client key admitted?"""
        ok = self._trust.role_of(key) is not None
        if not ok:
            with self._lock:
                self.refused += 1
            _log.warning("node %d: refused a Curve handshake from an unknown key %s",
                         self._node_id, key.decode("ascii", "replace"))
        return ok


@dataclass(frozen=True)
class ClientCredentials:
    """What a client needs to talk to a secure cluster: its own key pair and each node's
    server key, by node address."""

    pair: KeyPair
    server_keys: Mapping[str, bytes]

    def server_key(self, address: str) -> bytes:
        try:
            return self.server_keys[address]
        except KeyError:
            raise KeyFileError(f"no server key known for {address}: is it in the cluster "
                            "file?") from None


def apply_client_curve(sock: zmq.Socket, pair: KeyPair, server_key: bytes) -> None:
    """Make `sock` a Curve client of a server with `server_key` (before connect)."""
    sock.curve_secretkey = pair.secret
    sock.curve_publickey = pair.public
    sock.curve_serverkey = server_key


# ----------------------------------------------------------------------------- from files


def trusted_keys(cluster: ClusterConfig, source: str = "cluster file") -> TrustedKeys:
    """The keys a node of `cluster` admits: every node's current and previous keys, the
    client keys and the admin keys.

    Raises:
        KeyFileError: a node has no public key, or a key is malformed or listed twice.
    """
    peers: dict[int, tuple[bytes, ...]] = {}
    for node_id, node in cluster.nodes.items():
        if node.public_key is None:
            raise KeyFileError(f"{source}: node {node_id} has no public_key")
        keys = (node.public_key, *node.previous_keys)
        peers[node_id] = tuple(check_public_key(k, f"{source}: nodes.{node_id}") for k in keys)
    clients = tuple(check_public_key(k, f"{source}: client_keys") for k in cluster.client_keys)
    admins = tuple(check_public_key(k, f"{source}: admin_keys") for k in cluster.admin_keys)
    return TrustedKeys(peers, clients, admins)


def client_credentials(cluster: ClusterConfig, *, admin: bool = False,
                       key_file: str | os.PathLike[str] | None = None,
                       source: str = "cluster file") -> ClientCredentials | None:
    """Credentials for a client of `cluster`: None for an insecure cluster; else the key
    pair from `key_file`, or the cluster file's admin key (`admin`) or client key.

    Raises:
        KeyFileError: the cluster is secure but names no usable key file.
    """
    if cluster.insecure:
        return None
    if key_file is None:
        key_file = cluster.admin_key_file if admin else None
        key_file = key_file or cluster.client_key_file
        if admin and cluster.admin_key_file is None:
            _log.debug("no admin_key_file in %s: using the client key", source)
    if key_file is None:
        raise KeyFileError(f"{source}: the cluster is secure but names no client_key_file; "
                           "pass a key file explicitly")
    pair = load_keypair(key_file)
    servers = {n.address: check_public_key(n.public_key, f"{source}: nodes.{i}")
               for i, n in cluster.nodes.items() if n.public_key is not None}
    return ClientCredentials(pair, servers)



def _rewrite_cluster_file(path: Path, cluster: ClusterConfig) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(cluster.to_toml())
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _cluster_node(cluster_path: str | os.PathLike[str],
                  node_id: int) -> tuple[Path, "ClusterConfig", Any]:
    """The cluster file's path, its config and node `node_id`'s entry, for editing."""
    from josefine.config import ConfigError, load_cluster_config
    path = Path(cluster_path)
    try:
        cc = load_cluster_config(path)
    except ConfigError as exc:
        raise KeyFileError(str(exc)) from None
    node = cc.nodes.get(node_id)
    if node is None:
        raise KeyFileError(f"{path}: no node {node_id}")
    return path, cc, node


def rotate_node_key(cluster_path: str | os.PathLike[str], node_id: int) -> Path:
    """Give node `node_id` a new key pair: write it to the node's `secret_key_file` (the
    old one is kept beside it as ``.previous``) and list it in the cluster file as the
    node's key, the old one as a previous key. Then reload every node's keys, restart the
    node, and `forget_previous_keys` (see docs/security.md). Returns the key file's path.

    Raises:
        KeyFileError: the node is unknown, the cluster is insecure, or its node.toml cannot
            be found through the cluster file.
    """
    import dataclasses

    from josefine.config import ConfigError, load_node_config
    path, cc, node = _cluster_node(cluster_path, node_id)
    if cc.insecure:
        raise KeyFileError(f"{path}: the cluster is insecure: it has no keys")
    if node.config_path is None:
        raise KeyFileError(f"{path}: nodes.{node_id} has no config_path, so its key file "
                           "is unknown; rotate by hand (docs/security.md)")
    try:
        key_file = load_node_config(node.config_path).secret_key_file
    except ConfigError as exc:
        raise KeyFileError(str(exc)) from None
    if key_file is None:
        raise KeyFileError(f"{node.config_path}: no secret_key_file")
    old = load_keypair(key_file)
    new = generate_keypair()
    write_keypair(Path(key_file).with_name(Path(key_file).name + ".previous"), old,
                  comment=f"previous key of node {node_id}")
    write_keypair(key_file, new, comment=f"node {node_id} of cluster {cc.cluster_id}")
    previous = tuple(dict.fromkeys([old.public.decode(), *node.previous_keys]))
    nodes = dict(cc.nodes)
    nodes[node_id] = dataclasses.replace(node, public_key=new.public.decode(),
                                         previous_keys=previous)
    _rewrite_cluster_file(path, dataclasses.replace(cc, nodes=nodes))
    _log.info("node %d: rotated its key in %s", node_id, key_file)
    return Path(key_file)


def forget_previous_keys(cluster_path: str | os.PathLike[str], node_id: int) -> int:
    """Stop listing node `node_id`'s previous keys in the cluster file (the end of a
    rotation); returns how many were dropped. Takes effect at the next key reload."""
    import dataclasses

    path, cc, node = _cluster_node(cluster_path, node_id)
    nodes = dict(cc.nodes)
    nodes[node_id] = dataclasses.replace(node, previous_keys=())
    _rewrite_cluster_file(path, dataclasses.replace(cc, nodes=nodes))
    return len(node.previous_keys)


def make_cluster_keys(directory: str | os.PathLike[str], cluster_id: str,
                      addresses: Mapping[int, str]) -> Path:
    """For a cluster built in code (embedding, tests): make a key pair per node
    (``node-<id>.key_secret``), a client and an admin key pair, and a ``cluster.toml``
    listing their public keys, all in `directory`; existing key files are reused. Returns
    the cluster file; node i's `NodeConfig` takes ``secret_key_file=directory/node-i.key_secret``
    and ``cluster_file=`` the returned path."""
    from josefine.config import ClusterConfig, ClusterNode
    d = Path(directory)

    def pair(name: str) -> KeyPair:
        path = d / f"{name}.key_secret"
        if path.exists():
            return load_keypair(path)
        kp = generate_keypair()
        write_keypair(path, kp, comment=f"{name} of cluster {cluster_id}")
        return kp

    nodes = {i: ClusterNode(address=a, public_key=pair(f"node-{i}").public.decode())
             for i, a in sorted(addresses.items())}
    cc = ClusterConfig(cluster_id=cluster_id, nodes=nodes,
                       client_keys=(pair("client").public.decode(),),
                       admin_keys=(pair("admin").public.decode(),),
                       client_key_file=str(d / "client.key_secret"),
                       admin_key_file=str(d / "admin.key_secret"))
    path = d / "cluster.toml"
    _rewrite_cluster_file(path, cc)
    return path


def set_cluster_node(cluster_path: str | os.PathLike[str], node_id: int,
                     node: ClusterNode | None) -> ClusterConfig:
    """Add (or replace) node `node_id`'s entry in a cluster file, or drop it (`node` None),
    in one atomic, synced rewrite; the file's other nodes and keys are kept as they are on
    disk (a rotation made meanwhile survives). Returns the new cluster configuration. Every
    member must then reload its keys for the change to take effect on links."""
    import dataclasses

    from josefine.config import ConfigError, load_cluster_config
    path = Path(cluster_path)
    try:
        cc = load_cluster_config(path)
    except ConfigError as exc:
        raise KeyFileError(str(exc)) from None
    nodes = {i: n for i, n in cc.nodes.items() if i != node_id}
    if node is not None:
        nodes[node_id] = node
    cc = dataclasses.replace(cc, nodes=dict(sorted(nodes.items())))
    _rewrite_cluster_file(path, cc)
    return cc
