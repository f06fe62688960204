"""Run each launched node in its own Linux network namespace (``josefine launch --netns``).

Loopback clusters share one network stack, so nothing outside Josefine can cut them
apart and every node's address is 127.0.0.1. Here every node gets a stack of its own,
joined to the root namespace through a bridge, so the kernel carries the traffic
between "hosts" and can be told to drop it.

Address plan (the subnet is a parameter; `DEFAULT_SUBNET` is a private /24 chosen to be
unlikely to clash with anything on the machine)::

    root namespace    bridge  jf-<tag>-br   10.213.47.1/24
    node i            netns   jf-<tag>-n<i> eth0 = 10.213.47.(10+i)/24, lo up
                      veth    jf-<tag>-v<i> (root end, a port of the bridge) <-> eth0

``<tag>`` is six hex digits drawn per launch, so two launches, or a launch and the
remains of one that could not clean up, never share a name. Nothing but names carrying
this launch's tag is created, changed or deleted.

Teardown has one implementation, `teardown`, run by a *reaper*: a small process the
launcher starts before it creates anything, in its own session and without a
parent-death signal, that blocks reading a pipe whose only writer is the launcher. The
pipe reaches end-of-file when the launcher closes it (a normal stop) or when the kernel
closes it because the launcher died, SIGKILL included; either way the reaper kills every
process still inside the launch's namespaces, deletes the namespaces, the veth pairs and
the bridge, and exits. A normal stop closes the pipe and waits for the reaper, so the
same code runs whether the launcher exits cleanly or not. If the reaper itself is gone,
the launcher runs `teardown` in-process.

Named namespaces (``ip netns add``) are bind mounts under /run/netns and outlive every
process, which is why the reaper is needed at all; it also means an operator can look
inside one with ``ip netns exec jf-<tag>-n1 ...`` while the launch runs.
"""
from __future__ import annotations

import argparse
import dataclasses
import ipaddress
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from josefine.errors import JosefineError

__all__ = [
    "DEFAULT_SUBNET",
    "Network",
    "NetnsError",
    "NetnsPlan",
    "check_privileges",
    "leftovers",
    "missing_capabilities",
    "teardown",
]

DEFAULT_SUBNET = "10.213.47.0/24"
BRIDGE_HOST = 1
"""The bridge's host number in the subnet (its address in the root namespace)."""
FIRST_NODE_HOST = 11
"""Node i gets host number FIRST_NODE_HOST + i - 1."""
PREFIX = "jf-"
_TAG_RE = re.compile(r"[0-9a-f]{6}")
_IFNAMSIZ = 15  # longest interface name Linux accepts

CAP_NET_ADMIN = 12
CAP_SYS_ADMIN = 21
_NEEDED_CAPS = {CAP_NET_ADMIN: "CAP_NET_ADMIN", CAP_SYS_ADMIN: "CAP_SYS_ADMIN"}


class NetnsError(JosefineError):
    """Namespaces or links for a launch cannot be made (the message says why)."""


def new_tag() -> str:
    return secrets.token_hex(3)


@dataclass(frozen=True)
class NetnsPlan:
    """Every name and address of one launch's network, derived from a tag, a node
    count and a subnet; no side effects, so the plan can be checked without root."""

    nodes: int
    subnet: str = DEFAULT_SUBNET
    tag: str = dataclasses.field(default_factory=new_tag)

    def __post_init__(self) -> None:
        if isinstance(self.nodes, bool) or not isinstance(self.nodes, int) or self.nodes < 1:
            raise NetnsError(f"nodes must be an integer >= 1, got {self.nodes!r}")
        if not isinstance(self.tag, str) or not _TAG_RE.fullmatch(self.tag):
            raise NetnsError(f"tag must be six lowercase hex digits, got {self.tag!r}")
        try:
            net = ipaddress.ip_network(self.subnet)
        except (TypeError, ValueError) as exc:
            raise NetnsError(f"netns subnet {self.subnet!r} is not an IPv4 network: {exc}") from None
        if not isinstance(net, ipaddress.IPv4Network):
            raise NetnsError(f"netns subnet {self.subnet} must be IPv4")
        last = FIRST_NODE_HOST + self.nodes - 1
        if last >= net.num_addresses - 1:  # the top address is the broadcast address
            raise NetnsError(f"netns subnet {self.subnet} has no room for {self.nodes} node(s) "
                             f"at host numbers {FIRST_NODE_HOST}..{last}; use a larger one")
        longest = max(self.bridge, self.host_veth(self.nodes), key=len)
        if len(longest) > _IFNAMSIZ:
            raise NetnsError(f"interface name {longest} is longer than {_IFNAMSIZ} characters")

    @property
    def network(self) -> ipaddress.IPv4Network:
        net = ipaddress.ip_network(self.subnet)
        assert isinstance(net, ipaddress.IPv4Network)
        return net

    @property
    def prefix(self) -> str:
        """Start of every name this launch owns."""
        return f"{PREFIX}{self.tag}-"

    @property
    def bridge(self) -> str:
        return f"{self.prefix}br"

    @property
    def bridge_ip(self) -> str:
        return str(self.network[BRIDGE_HOST])

    def namespace(self, node_id: int) -> str:
        return f"{self.prefix}n{self._check(node_id)}"

    def host_veth(self, node_id: int) -> str:
        """The root namespace's end of node `node_id`'s veth pair (a bridge port)."""
        return f"{self.prefix}v{self._check(node_id)}"

    def node_ip(self, node_id: int) -> str:
        return str(self.network[FIRST_NODE_HOST + self._check(node_id) - 1])

    def node_address(self, node_id: int, port: int) -> str:
        return f"tcp://{self.node_ip(node_id)}:{port}"

    @property
    def node_ids(self) -> range:
        return range(1, self.nodes + 1)

    @property
    def namespaces(self) -> list[str]:
        return [self.namespace(i) for i in self.node_ids]

    @property
    def links(self) -> list[str]:
        """Every link this launch makes in the root namespace."""
        return [self.bridge, *(self.host_veth(i) for i in self.node_ids)]

    def exec_prefix(self, node_id: int, ip: str = "ip") -> list[str]:
        """Prepended to a node's command so that it runs inside its namespace.

        ``ip netns exec`` enters the namespace and then execs the command, so the pid
        the launcher holds is the node's own and signals reach it directly."""
        return [ip, "netns", "exec", self.namespace(node_id)]

    def setup_commands(self, ip: str = "ip") -> list[list[str]]:
        """The ``ip`` invocations that build the network, in order."""
        plen = self.network.prefixlen
        cmds = [
            [ip, "link", "add", self.bridge, "type", "bridge"],
            [ip, "addr", "add", f"{self.bridge_ip}/{plen}", "dev", self.bridge],
            [ip, "link", "set", self.bridge, "up"],
        ]
        for i in self.node_ids:
            ns, veth = self.namespace(i), self.host_veth(i)
            cmds += [
                [ip, "netns", "add", ns],
                # Made with its peer already inside the namespace: nothing named eth0
                # ever appears in the root namespace.
                [ip, "link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", ns],
                [ip, "link", "set", veth, "master", self.bridge, "up"],
                [ip, "-n", ns, "link", "set", "lo", "up"],
                [ip, "-n", ns, "addr", "add", f"{self.node_ip(i)}/{plen}", "dev", "eth0"],
                [ip, "-n", ns, "link", "set", "eth0", "up"],
            ]
        return cmds

    def reaper_args(self) -> list[str]:
        return ["--tag", self.tag, "--nodes", str(self.nodes), "--subnet", self.subnet]

    def describe(self) -> dict[str, object]:
        """What pids.json records about the network (for operators and tests)."""
        return {"tag": self.tag, "subnet": self.subnet, "bridge": self.bridge,
                "bridge_ip": self.bridge_ip,
                "namespaces": {str(i): self.namespace(i) for i in self.node_ids},
                "links": self.links}

    def _check(self, node_id: int) -> int:
        if isinstance(node_id, bool) or not isinstance(node_id, int) or not 1 <= node_id <= self.nodes:
            raise NetnsError(f"no node {node_id!r}; nodes are 1..{self.nodes}")
        return node_id


# -- privileges ---------------------------------------------------------------


def missing_capabilities(cap_eff: int) -> list[str]:
    """The capabilities `--netns` needs that the effective set `cap_eff` lacks:
    CAP_SYS_ADMIN to make and enter namespaces, CAP_NET_ADMIN to make links."""
    return [name for bit, name in _NEEDED_CAPS.items() if not cap_eff >> bit & 1]


def _effective_caps(status_text: str) -> int:
    for line in status_text.splitlines():
        if line.startswith("CapEff:"):
            return int(line.split()[1], 16)
    return 0


def check_privileges(status_path: str = "/proc/self/status") -> None:
    """Raise NetnsError, saying what is missing, unless this process may create network
    namespaces and links and ``ip`` is installed.

    Capabilities rather than uid 0: a root without them (some containers) fails the same
    way, and a non-root holding them is fine."""
    try:
        caps = _effective_caps(Path(status_path).read_text())
    except OSError as exc:
        raise NetnsError(f"--netns runs on Linux only (cannot read {status_path}: {exc.strerror})") from None
    missing = missing_capabilities(caps)
    if missing:
        raise NetnsError(
            f"--netns needs root: creating network namespaces and links takes "
            f"{' and '.join(missing)}, which this process (uid {os.geteuid()}) does not have; "
            "run it as root (e.g. with sudo), or launch without --netns")
    if _ip_binary() is None:
        raise NetnsError("--netns needs the `ip` command (iproute2), which is not on PATH")


def _ip_binary() -> str | None:
    return shutil.which("ip") or next(
        (p for p in ("/usr/sbin/ip", "/sbin/ip", "/usr/bin/ip", "/bin/ip") if os.access(p, os.X_OK)), None)


# -- what exists --------------------------------------------------------------


def _run(cmd: Sequence[str], check: bool = True) -> subprocess.CompletedProcess[str]:
    res = subprocess.run(list(cmd), capture_output=True, text=True, timeout=30)
    if check and res.returncode != 0:
        raise NetnsError(f"`{' '.join(cmd)}` failed: {res.stderr.strip() or res.returncode}")
    return res


def _namespace_names(ip: str) -> list[str]:
    out = _run([ip, "netns", "list"], check=False).stdout
    return [line.split()[0] for line in out.splitlines() if line.strip()]


def _link_names(ip: str) -> list[str]:
    out = _run([ip, "-o", "link", "show"], check=False).stdout
    names = []
    for line in out.splitlines():
        # "7: jf-1a2b3c-v1@if2: <BROADCAST,..." -> jf-1a2b3c-v1
        parts = line.split(":", 2)
        if len(parts) >= 2:
            names.append(parts[1].strip().split("@", 1)[0])
    return names


def leftovers(plan: NetnsPlan, ip: str | None = None) -> list[str]:
    """The namespaces and root-namespace links of `plan` that exist right now."""
    ip = ip or _ip_binary() or "ip"
    mine = set(plan.namespaces) | set(plan.links)
    return sorted(n for n in [*_namespace_names(ip), *_link_names(ip)] if n in mine)


def _subnet_users(plan: NetnsPlan, ip: str) -> list[str]:
    """Root-namespace links holding an address inside the plan's subnet."""
    out = _run([ip, "-o", "-4", "addr", "show"], check=False).stdout
    users = []
    for line in out.splitlines():
        fields = line.split()
        if "inet" in fields:
            addr = fields[fields.index("inet") + 1]
            if ipaddress.ip_interface(addr).ip in plan.network:
                users.append(f"{fields[1]} ({addr})")
    return users


def _pids_in(namespace: str, ip: str) -> list[int]:
    out = _run([ip, "netns", "pids", namespace], check=False).stdout
    return [int(p) for p in out.split() if p.isdigit()]


# -- teardown -----------------------------------------------------------------


def teardown(plan: NetnsPlan, ip: str | None = None, timeout_s: float = 10.0) -> list[str]:
    """Kill every process inside the plan's namespaces, then delete the namespaces, the
    veth pairs and the bridge. Idempotent: what does not exist is skipped.

    Returns:
        Names still present after `timeout_s` (empty on success).
    """
    ip = ip or _ip_binary() or "ip"
    deadline = time.monotonic() + timeout_s
    present = set(_namespace_names(ip))
    for ns in plan.namespaces:
        if ns not in present:
            continue
        # SIGKILL, not SIGTERM: a graceful stop is the launcher's business; when the
        # reaper gets here with nodes still running, their launcher is already gone.
        while (pids := _pids_in(ns, ip)) and time.monotonic() < deadline:
            for pid in pids:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            time.sleep(0.02)
        _run([ip, "netns", "del", ns], check=False)
    links = set(_link_names(ip))
    # Deleting a veth end deletes its peer; the namespace's own end is usually gone
    # already, but the kernel destroys a namespace asynchronously, so be explicit.
    for link in [*(plan.host_veth(i) for i in plan.node_ids), plan.bridge]:
        if link in links:
            _run([ip, "link", "del", link], check=False)
    while (left := leftovers(plan, ip)) and time.monotonic() < deadline:
        time.sleep(0.02)
    return left


# -- the network of one launch -------------------------------------------------


class Network:
    """The namespaces, links and reaper of one launch.

    `create` starts the reaper, then builds the network; `close` tears it down. The
    reaper tears it down as well if this process dies without calling `close`.
    """

    READY = b"ready\n"
    REAPER_TIMEOUT_S = 15.0

    def __init__(self, plan: NetnsPlan, *, python: str = sys.executable,
                 env: Mapping[str, str] | None = None,
                 log_path: str | os.PathLike[str] | None = None) -> None:
        self.plan = plan
        self._python = python
        self._env = dict(env) if env is not None else None
        self._log_path = Path(log_path) if log_path is not None else None
        self._ip = "ip"
        self._reaper: subprocess.Popen[bytes] | None = None
        self._created = False

    @property
    def reaper_pid(self) -> int | None:
        return self._reaper.pid if self._reaper is not None else None

    def exec_prefix(self, node_id: int) -> list[str]:
        return self.plan.exec_prefix(node_id, self._ip)

    def create(self) -> None:
        """Check, start the reaper, build the network.

        Raises:
            NetnsError: no privileges, the subnet is in use, or a step failed (then
                whatever was made is deleted again before this returns).
        """
        if self._created:
            raise NetnsError("this Network was already created")
        check_privileges()
        self._ip = _ip_binary() or "ip"
        users = _subnet_users(self.plan, self._ip)
        if users:
            raise NetnsError(
                f"netns subnet {self.plan.subnet} is already in use in the root namespace by "
                f"{', '.join(users)}: another --netns launch is running, or one was killed "
                "together with its reaper (delete its jf-* bridge with `ip link del`); "
                "or pick another subnet")
        taken = set(_namespace_names(self._ip)) | set(_link_names(self._ip))
        while any(n.startswith(self.plan.prefix) for n in taken):
            self.plan = dataclasses.replace(self.plan, tag=new_tag())
        self._created = True
        self._start_reaper()
        try:
            for cmd in self.plan.setup_commands(self._ip):
                _run(cmd)
        except BaseException:
            self.close()
            raise

    def close(self, timeout_s: float = REAPER_TIMEOUT_S) -> list[str]:
        """Tear everything down (idempotent).

        Returns:
            Names that could not be deleted (empty on success).
        """
        if not self._created:
            return []
        reaper, self._reaper = self._reaper, None
        if reaper is not None:
            alive = reaper.poll() is None
            if reaper.stdin is not None:
                reaper.stdin.close()   # end-of-file: the reaper tears down and exits
            if alive:
                try:
                    reaper.wait(timeout_s)
                except subprocess.TimeoutExpired:
                    reaper.kill()
                    reaper.wait()
        # Covers a reaper that died early or hung; a no-op after a reaper that did its job.
        return teardown(self.plan, self._ip)

    def _start_reaper(self) -> None:
        log = open(self._log_path, "ab") if self._log_path is not None else subprocess.DEVNULL
        try:
            self._reaper = subprocess.Popen(
                [self._python, "-m", "josefine.launch.netns", "reap", *self.plan.reaper_args()],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log,
                env=self._env, close_fds=True,
                start_new_session=True,  # no Ctrl-C from the launcher's terminal
            )
        finally:
            if log is not subprocess.DEVNULL:
                log.close()  # type: ignore[union-attr]
        assert self._reaper.stdout is not None
        line = self._reaper.stdout.readline()
        self._reaper.stdout.close()
        if line != self.READY:
            code = self._reaper.wait()
            self._reaper = None
            where = f"; see {self._log_path}" if self._log_path is not None else ""
            raise NetnsError(f"the netns reaper did not start (exit code {code}){where}")


# -- the reaper process ---------------------------------------------------------


def _reap(argv: Sequence[str]) -> int:
    ap = argparse.ArgumentParser(prog="python -m josefine.launch.netns reap")
    ap.add_argument("--tag", required=True)
    ap.add_argument("--nodes", type=int, required=True)
    ap.add_argument("--subnet", default=DEFAULT_SUBNET)
    args = ap.parse_args(argv)
    plan = NetnsPlan(args.nodes, args.subnet, args.tag)
    # Only the end of the pipe, or SIGTERM, may end this process before teardown.
    for sig in (signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, signal.SIG_IGN)

    def on_term(signum: int, frame: object) -> None:
        raise SystemExit(0)

    signal.signal(signal.SIGTERM, on_term)
    stamp = time.strftime("%Y-%m-%d %H:%M:%S")
    print(f"--- {stamp} netns reaper {os.getpid()} watches {plan.prefix}*", file=sys.stderr, flush=True)
    try:
        os.write(1, Network.READY)
        os.close(1)
        while os.read(0, 4096):
            pass
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # a second one must not cut teardown short
        left = teardown(plan)
        print(f"--- {time.strftime('%Y-%m-%d %H:%M:%S')} netns reaper: "
              + (f"could not delete {', '.join(left)}" if left else f"{plan.prefix}* deleted"),
              file=sys.stderr, flush=True)
    return 1 if left else 0


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["reap"]:
        return _reap(argv[1:])
    print("usage: python -m josefine.launch.netns reap --tag TAG --nodes N [--subnet CIDR]\n"
          "  tears down launch TAG's namespaces and links once stdin reaches end-of-file "
          "(give it </dev/null to clean up after a launch whose reaper was killed)",
          file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
