"""Settings of one chaos run, and a free-port helper.

Every random choice of a run (operations, fault schedule) derives from `ChaosConfig.seed`,
so a seed names a schedule. Real processes and real time are involved, so a seed replays
the *schedule*, not the exact interleaving.
"""
from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from josefine.launch.ports import free_port_block

__all__ = ["ChaosConfig", "DEFAULT_FAULTS", "FAULT_KINDS", "find_free_ports"]

FAULT_KINDS = ("kill", "pause", "partition", "powerloss", "membership")
"""Fault families: SIGKILL + restart, SIGSTOP/SIGCONT, network partitions (fault rules),
power loss (SIGKILL, then the node's disk drops every write it was not told to sync;
docs/powerloss.md), and membership changes (a node added, a voter removed, or a voter
replaced by a fresh node, through the launcher; `josefine.chaos.members`)."""
DEFAULT_FAULTS = ("kill", "pause", "partition")
"""What a run uses unless told otherwise: power loss needs FUSE (root, /dev/fuse)."""


@dataclass
class ChaosConfig:
    """One chaos run. Times are seconds.

    `node_cmd` and `env` are handed to the `Launcher` (tests inject deliberately broken
    nodes through them); `node_settings` are extra NodeConfig keys for every node.
    """

    out: str | Path
    nodes: int = 5
    duration: float = 60.0
    seed: int = 0
    clients: int = 8
    keys: int = 8
    faults: Sequence[str] = DEFAULT_FAULTS
    base_port: int | None = None
    op_timeout: float = 2.0
    request_timeout: float = 0.5
    read_ratio: float = 0.5
    cas_ratio: float = 0.25
    any_node_reads: float = 0.2
    """Share of reads sent to a random node, which serves them itself if it is a follower
    (through the leader's read index)."""
    any_node_writes: float = 0.2
    """Share of writes sent through a client whose writes a follower forwards to the
    leader."""
    fault_gap: tuple[float, float] = (1.0, 3.0)
    """Quiet time before each fault (uniform)."""
    fault_hold: tuple[float, float] = (1.0, 5.0)
    """How long each fault lasts before it is healed (uniform)."""
    sample_interval: float = 0.2
    converge_timeout: float = 60.0
    startup_timeout: float = 60.0
    check_time_limit: float | None = 300.0
    fsync: bool = True
    node_cmd: Callable[[Path], Sequence[str]] | None = None
    env: Mapping[str, str] | None = None
    node_settings: Mapping[str, Any] = field(default_factory=dict)
    verbose: bool = False
    netns: bool = False
    """Each node in its own network namespace (root only); partitions made by the kernel."""
    netns_subnet: str | None = None
    min_voters: int = 3
    """Membership changes never leave fewer voters than this (at least 3: with two, any
    later kill or pause of one node costs the quorum)."""
    max_voters: int = 5
    """Membership changes never make more voters than this."""
    member_timeout: float = 30.0
    """Deadline of one membership change, retries included (a change refused while the
    cluster has no leader is retried until then)."""
    membership_ops: Sequence[str] | None = None
    """Force the order of the membership changes (cycled, e.g. ("add", "replace",
    "remove")); an op the voter bounds forbid at its turn is replaced by a seeded choice
    among those they allow. None: every change is a seeded choice."""

    def __post_init__(self) -> None:
        self.out = Path(self.out)
        self.faults = tuple(f.strip() for f in self.faults if f.strip())
        bad = sorted(set(self.faults) - set(FAULT_KINDS))
        if bad:
            raise ValueError(f"unknown fault kind(s) {bad}; choose from {', '.join(FAULT_KINDS)}")
        for name in ("nodes", "clients", "keys", "min_voters", "max_voters"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {v!r}")
        if not self.duration > 0:
            raise ValueError(f"duration must be > 0, got {self.duration!r}")
        if not 0 <= self.read_ratio + self.cas_ratio <= 1:
            raise ValueError("read_ratio + cas_ratio must lie in [0, 1]")
        for name in ("fault_gap", "fault_hold"):
            lo, hi = getattr(self, name)
            if not 0 <= lo <= hi:
                raise ValueError(f"{name} must be (lo, hi) with 0 <= lo <= hi")
        if self.membership_ops is not None:
            from josefine.chaos.members import MEMBERSHIP_OPS
            self.membership_ops = tuple(self.membership_ops)
            wrong = sorted(set(self.membership_ops) - set(MEMBERSHIP_OPS))
            if wrong or not self.membership_ops:
                raise ValueError(f"membership_ops must be a non-empty sequence of "
                                 f"{', '.join(MEMBERSHIP_OPS)}; got {list(self.membership_ops)}")
        if "membership" in self.faults:
            self._check_membership()
        if "powerloss" in self.faults:
            from josefine.chaos.powerfs import unavailable
            why = unavailable()
            if why:
                raise ValueError(f"fault 'powerloss' needs the power-loss filesystem: {why}")

    def _check_membership(self) -> None:
        """Raise ValueError when this run cannot have membership faults."""
        if not 3 <= self.min_voters < self.max_voters:
            raise ValueError(f"membership faults need 3 <= min_voters < max_voters, got "
                             f"min_voters={self.min_voters}, max_voters={self.max_voters}")
        if not self.min_voters <= self.nodes <= self.max_voters:
            raise ValueError(f"membership faults keep {self.min_voters}..{self.max_voters} "
                             f"voters, so nodes must lie in that range, got {self.nodes}")
        if "powerloss" in self.faults:
            # A node added during the run would need its own power-loss mount before its
            # first write, and the launcher creates and starts it in one step.
            raise ValueError("fault kinds 'membership' and 'powerloss' cannot be combined: "
                             "a node added during the run would have no power-loss disk")
        if self.netns:
            raise ValueError("fault kind 'membership' is not supported with netns (the "
                             "launcher makes no namespace for a node added at run time)")
        if not self.member_timeout > 0:
            raise ValueError(f"member_timeout must be > 0, got {self.member_timeout!r}")

    def describe(self) -> dict[str, Any]:
        """The plain-data part of the config, for the report."""
        return {"nodes": self.nodes, "duration": self.duration, "seed": self.seed,
                "clients": self.clients, "keys": self.keys, "faults": list(self.faults),
                "op_timeout": self.op_timeout, "request_timeout": self.request_timeout,
                "read_ratio": self.read_ratio, "cas_ratio": self.cas_ratio,
                "any_node_reads": self.any_node_reads, "any_node_writes": self.any_node_writes,
                "fault_gap": list(self.fault_gap), "fault_hold": list(self.fault_hold),
                "fsync": self.fsync, "custom_node_cmd": self.node_cmd is not None,
                "netns": self.netns,
                **({"voters": [self.min_voters, self.max_voters],
                    "member_timeout": self.member_timeout,
                    "membership_ops": None if self.membership_ops is None
                    else list(self.membership_ops)}
                   if "membership" in self.faults else {}),
                "out": str(self.out)}


def find_free_ports(count: int) -> int:
    """A base port p such that p .. p+count-1 can all be bound on 127.0.0.1 right now, below
    the ephemeral port range (`josefine.launch.ports`)."""
    return free_port_block(count)
