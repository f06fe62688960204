"""Partitions made by the kernel, for a cluster launched with ``netns=True``.

The transport's fault rules drop messages inside Josefine; a real partition drops packets
in the network, and the nodes only notice by silence. With each node in its own network
namespace (`josefine.launch.netns`), the kernel can do the dropping.

Mechanism: a policy-routing rule with the ``blackhole`` action in the *receiver's*
namespace. Every node sends its messages to a peer over a connection it opens itself to
that peer's listening port, so the directed link src -> dst is exactly "TCP packets from
src's address to dst's port", and ::

    ip -n <dst's netns> rule add pref 100 from <src ip>/32 ipproto tcp dport <dst port> blackhole

drops them on arrival, silently: src's SYNs and data vanish as they would on a cut cable,
while dst's own connection to src (the link dst -> src) is untouched. That makes every
variant of the nemesis possible, one-way included: a cut is a set of directed links, as
with the transport's rules. Clients in the root namespace come from the bridge's address,
which no rule names, so they still reach every node (as with the transport's rules).

Routing rules are consulted in order of preference and the kernel's ``lookup local`` rule
sits at preference 0, before anything a rule could add; `KernelPartitioner` therefore
moves it to `LOCAL_PREF` (behind the cut rules, ahead of ``main``) in each of the launch's
namespaces before the first cut. Nothing outside those namespaces is touched, and the
namespaces' teardown removes every rule.

Needs only iproute2 (no nftables or iptables) and root, which ``--netns`` needs anyway.
"""
from __future__ import annotations

import subprocess
import threading
from collections.abc import Iterable, Mapping, Sequence

from josefine.launch.netns import NetnsError, NetnsPlan

__all__ = ["CUT_PREF", "KernelPartitioner", "LOCAL_PREF", "MECHANISM", "cut_commands"]

CUT_PREF = 100
"""Preference of every cut rule (ahead of the moved local rule)."""
LOCAL_PREF = 1000
"""Where the ``lookup local`` rule goes (it was at 0)."""
MECHANISM = "kernel: ip rule blackhole in the receiver's netns"
"""What the chaos report says partitions used."""


def cut_commands(plan: NetnsPlan, ports: Mapping[int, int], cut: Iterable[tuple[int, int]],
                 ip: str = "ip") -> list[list[str]]:
    """The ``ip`` invocations that drop every directed link (src, dst) in `cut`."""
    cmds = []
    for src, dst in sorted(set(cut)):
        if src == dst:
            raise NetnsError(f"cannot cut node {src} from itself")
        cmds.append([ip, "-n", plan.namespace(dst), "rule", "add", "pref", str(CUT_PREF),
                     "from", f"{plan.node_ip(src)}/32", "ipproto", "tcp",
                     "dport", str(ports[dst]), "blackhole"])
    return cmds


def prepare_commands(plan: NetnsPlan, ip: str = "ip") -> list[list[str]]:
    """Move ``lookup local`` from preference 0 to LOCAL_PREF in every namespace (added at
    the new place before it is removed from the old one, so local delivery never stops)."""
    cmds = []
    for ns in plan.namespaces:
        cmds += [[ip, "-n", ns, "rule", "add", "pref", str(LOCAL_PREF), "lookup", "local"],
                 [ip, "-n", ns, "rule", "del", "pref", "0", "lookup", "local"]]
    return cmds


class KernelPartitioner:
    """Applies and heals cuts between the nodes of one netns launch.

    Args:
        plan: the launch's network (`Launcher.netns_plan`).
        ports: every node's listening port by node id.

    Thread safety: `cut` and `heal` may be called from any thread.
    """

    mechanism = MECHANISM

    def __init__(self, plan: NetnsPlan, ports: Mapping[int, int], ip: str = "ip") -> None:
        missing = sorted(set(plan.node_ids) - set(ports))
        if missing:
            raise NetnsError(f"no port for node(s) {missing}")
        self.plan = plan
        self.ports = dict(ports)
        self._ip = ip
        self._prepared = False
        self._lock = threading.Lock()

    def cut(self, cut: Iterable[tuple[int, int]]) -> None:
        """Drop every directed link in `cut`, in addition to what is already cut.

        Raises:
            NetnsError: an ``ip`` command failed (what was applied stays until `heal`).
        """
        with self._lock:
            if not self._prepared:
                self._run_all(prepare_commands(self.plan, self._ip))
                self._prepared = True
            self._run_all(cut_commands(self.plan, self.ports, cut, self._ip))

    def heal(self) -> None:
        """Remove every cut rule from every namespace of the launch (idempotent).

        Raises:
            NetnsError: a namespace still holds cut rules afterwards.
        """
        with self._lock:
            left = []
            for ns in self.plan.namespaces:
                # `rule del pref N` removes one rule per call; a cut can put several there.
                for _ in range(len(self.plan.namespaces) + 1):
                    if not self._cut_rules(ns):
                        break
                    self._run([self._ip, "-n", ns, "rule", "del", "pref", str(CUT_PREF)],
                              check=False)
                if self._cut_rules(ns):
                    left.append(ns)
            if left:
                raise NetnsError(f"cut rules left in {', '.join(left)}")

    def rules(self) -> dict[int, list[str]]:
        """The cut rules now in force, by receiving node (for tests and debugging)."""
        return {i: self._cut_rules(self.plan.namespace(i)) for i in self.plan.node_ids}

    def _cut_rules(self, ns: str) -> list[str]:
        out = self._run([self._ip, "-n", ns, "rule", "show", "pref", str(CUT_PREF)],
                        check=False).stdout
        return [line.strip() for line in out.splitlines() if line.strip()]

    def _run_all(self, cmds: Sequence[Sequence[str]]) -> None:
        for cmd in cmds:
            self._run(cmd)

    @staticmethod
    def _run(cmd: Sequence[str], check: bool = True) -> subprocess.CompletedProcess[str]:
        res = subprocess.run(list(cmd), capture_output=True, text=True, timeout=30)
        if check and res.returncode != 0:
            raise NetnsError(f"`{' '.join(cmd)}` failed: {res.stderr.strip() or res.returncode}")
        return res
