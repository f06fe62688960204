"""Membership changes in a chaos run: which change the nemesis makes next, and who the
members are now.

With the fault kind ``membership`` the node set of a run changes while it runs: the
nemesis adds a fresh node (a learner, promoted once caught up), removes a voter (the leader
on purpose half of the time) or replaces one (removed with its directory wiped, then a
fresh node under a new id). Every part of the run that talks to the nodes (status sampler,
clients, the nemesis's own admin requests, the end-of-run convergence) must follow, so they
all read the members from one `MemberView`, which the nemesis refreshes after each change.

Bounds. A change never leaves fewer than ``min_voters`` voters (3 by default) nor more
than ``max_voters`` (5), counting the state in the middle of a replace (one voter fewer):
so a membership change alone never costs the quorum, and a kill or pause of a minority
after it still leaves one. The choice is a pure function (`choose_change`) so the bounds
can be tested without processes.
"""
from __future__ import annotations

import random
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from josefine.config import load_cluster_config
from josefine.launch.cluster import Launcher
from josefine.security import ClientCredentials, client_credentials

__all__ = ["MEMBERSHIP_OPS", "MemberChange", "MemberView", "allowed_ops", "choose_change"]

MEMBERSHIP_OPS = ("add", "remove", "replace")
"""The changes the nemesis makes (plus "promote", for a learner a failed add left behind)."""


@dataclass(frozen=True)
class MemberChange:
    """One membership change the nemesis is about to make."""

    op: str
    """"add", "remove", "replace" or "promote"."""
    target: int | None
    """The voter removed (remove, replace) or the learner promoted; None for add."""
    mode: str
    """How the target was picked: "leader" (on purpose), "random", "learner" or "fresh"."""


def allowed_ops(voters: int, min_voters: int, max_voters: int) -> list[str]:
    """The changes that keep the voter count within [min_voters, max_voters] at every step
    (a replace passes through voters - 1)."""
    ops = []
    if voters < max_voters:
        ops.append("add")
    if voters > min_voters:
        ops += ["remove", "replace"]
    return ops


def choose_change(rng: random.Random, voters: Sequence[int], learners: Sequence[int],
                  leader: int | None, min_voters: int, max_voters: int,
                  wanted: str | None = None) -> MemberChange:
    """The next membership change.

    A learner left over (a promotion that failed) is promoted first: a change never starts
    while another is unfinished. Otherwise `wanted` if the bounds allow it, else a seeded
    choice among the allowed ops. A remove or replace targets the leader half of the time
    (when it is a voter), else a random voter; only `voters` are ever targeted, so a node
    that already left cannot be.

    Raises:
        ValueError: the bounds allow no change (min_voters == max_voters == len(voters)).
    """
    if learners:
        return MemberChange("promote", min(learners), "learner")
    ops = allowed_ops(len(voters), min_voters, max_voters)
    if not ops:
        raise ValueError(f"no membership change keeps {len(voters)} voter(s) within "
                         f"{min_voters}..{max_voters}")
    op = wanted if wanted in ops else rng.choice(ops)
    if op == "add":
        return MemberChange("add", None, "fresh")
    pool = sorted(voters)
    if rng.random() < 0.5 and leader is not None and leader in pool:
        return MemberChange(op, leader, "leader")
    return MemberChange(op, rng.choice(pool), "random")


class MemberView:
    """The members of a launched cluster as the run's parts see them: {id: address} and the
    credentials that reach them (read from cluster.toml, which the launcher keeps true, so
    a node added at run time has its server key in them).

    `version` grows with every change of the address set: a client thread that remembers
    the version it built its clients for knows when to rebuild them. Thread-safe.
    """

    def __init__(self, launcher: Launcher) -> None:
        self.launcher = launcher
        self._lock = threading.Lock()
        self.version = 0
        self._addresses: dict[int, str] = {}
        self._creds: dict[bool, ClientCredentials | None] = {}
        self.refresh()

    def refresh(self) -> tuple[list[int], list[int]]:
        """Re-read the launcher's members; returns (added ids, removed ids) since the last
        refresh."""
        addresses = {i: self.launcher.address(i) for i in self.launcher.node_ids}
        creds = {admin: self._load_credentials(admin) for admin in (False, True)}
        with self._lock:
            added = sorted(set(addresses) - set(self._addresses))
            removed = sorted(set(self._addresses) - set(addresses))
            if addresses != self._addresses:
                self.version += 1
            self._addresses = addresses
            self._creds = creds
        return added, removed

    def _load_credentials(self, admin: bool) -> ClientCredentials | None:
        if self.launcher.insecure:
            return None
        path = self.launcher.cluster_path
        return client_credentials(load_cluster_config(path), admin=admin, source=str(path))

    def addresses(self) -> dict[int, str]:
        """{id: address} of the current members."""
        with self._lock:
            return dict(self._addresses)

    def ids(self) -> list[int]:
        with self._lock:
            return sorted(self._addresses)

    def credentials(self, admin: bool = False) -> ClientCredentials | None:
        """Client (or admin) credentials knowing every current member's server key."""
        with self._lock:
            return self._creds[admin]

    def snapshot(self) -> tuple[int, dict[int, str], ClientCredentials | None]:
        """(version, addresses, client credentials), consistent with each other."""
        with self._lock:
            return self.version, dict(self._addresses), self._creds[False]

    def describe(self) -> dict[str, Any]:
        return {"version": self.version, "members": self.ids()}
