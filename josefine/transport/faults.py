"""Fault injection for one node's transport: loss, delay, partitions, one-way links, and
lost answers to clients.

Rules are local: a node applies them to what it sends and receives, so a two-sided
partition between A and B needs only one of them to block the other in both directions
(blocking inbound from B and outbound to B). Setting the same rule on both sides is
harmless.

Thread-safety: rules may be changed from any thread (an admin request arrives on an actor
thread) while the transport's I/O thread consults them; a lock guards all state. Decisions
draw from one seeded `random.Random`, so a single-threaded caller (the I/O thread) gets a
reproducible sequence for a given seed and event order.
"""
from __future__ import annotations

import random
import threading
from dataclasses import dataclass
from typing import Any, Iterable, Mapping

__all__ = ["FaultRules", "LinkRule"]

_DEFAULT_KEY = "*"


@dataclass(frozen=True, slots=True)
class LinkRule:
    """Probabilistic faults on the link to one peer (or to every peer, as the default)."""

    drop_out: float = 0.0
    """Probability of dropping each outbound message."""
    drop_in: float = 0.0
    """Probability of dropping each inbound message."""
    delay_ms: float = 0.0
    """Added delay before each outbound message is sent."""

    def __post_init__(self) -> None:
        for name in ("drop_out", "drop_in"):
            p = getattr(self, name)
            if isinstance(p, bool) or not isinstance(p, (int, float)) or not 0.0 <= p <= 1.0:
                raise ValueError(f"{name} must be a probability in [0, 1], got {p!r}")
        d = self.delay_ms
        if isinstance(d, bool) or not isinstance(d, (int, float)) or not 0.0 <= d < 3_600_000:
            raise ValueError(f"delay_ms must be a number of ms in [0, 1h), got {d!r}")

    def is_noop(self) -> bool:
        return self.drop_out == 0 and self.drop_in == 0 and self.delay_ms == 0

    def to_dict(self) -> dict[str, float]:
        return {"drop_out": self.drop_out, "drop_in": self.drop_in, "delay_ms": self.delay_ms}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> LinkRule:
        unknown = set(d) - {"drop_out", "drop_in", "delay_ms"}
        if unknown:
            raise ValueError(f"unknown link rule fields: {sorted(unknown)}")
        return cls(**d)


def _peer_id(p: Any) -> int:
    """Accept 2 or "2" (admin requests may come through JSON, whose keys are strings)."""
    if isinstance(p, bool):
        raise ValueError(f"bad peer id {p!r}")
    try:
        n = int(p)
    except (TypeError, ValueError):
        raise ValueError(f"bad peer id {p!r}") from None
    if n < 0 or (isinstance(p, float) and p != n):
        raise ValueError(f"bad peer id {p!r}")
    return n


def _count(n: Any, name: str) -> int:
    if isinstance(n, bool) or not isinstance(n, int) or n < 0:
        raise ValueError(f"{name} must be a count >= 0, got {n!r}")
    return n


class FaultRules:
    """Per-peer fault rules, changeable at runtime.

    Args:
        seed: seed for the drop decisions; None draws one from the OS (and `seed` then
            reports the value drawn, so a run can be replayed).
    """

    def __init__(self, seed: int | None = None) -> None:
        self._lock = threading.Lock()
        self.seed = seed if seed is not None else random.SystemRandom().randrange(2**32)
        self._rng = random.Random(self.seed)
        self._blocked_out: set[int] = set()
        self._blocked_in: set[int] = set()
        self._links: dict[int, LinkRule] = {}
        self._default = LinkRule()
        self._drop_client_replies = 0
        self._active = False

    # ------------------------------------------------------------------- changing rules

    def partition(self, peers: Iterable[int]) -> None:
        """Cut this node off from `peers` in both directions."""
        ids = {_peer_id(p) for p in peers}
        with self._lock:
            self._blocked_out |= ids
            self._blocked_in |= ids
            self._refresh()

    def block_outbound(self, peers: Iterable[int]) -> None:
        """One-way loss: drop everything sent to `peers` (their messages still arrive)."""
        ids = {_peer_id(p) for p in peers}
        with self._lock:
            self._blocked_out |= ids
            self._refresh()

    def block_inbound(self, peers: Iterable[int]) -> None:
        """One-way loss: drop everything received from `peers` (ours still reach them)."""
        ids = {_peer_id(p) for p in peers}
        with self._lock:
            self._blocked_in |= ids
            self._refresh()

    def heal(self, peers: Iterable[int] | None = None) -> None:
        """Unblock `peers` in both directions (every peer if None); link rules stay."""
        with self._lock:
            if peers is None:
                self._blocked_out.clear()
                self._blocked_in.clear()
            else:
                ids = {_peer_id(p) for p in peers}
                self._blocked_out -= ids
                self._blocked_in -= ids
            self._refresh()

    def set_link(self, peer: int | None, *, drop_out: float = 0.0, drop_in: float = 0.0,
                 delay_ms: float = 0.0) -> None:
        """Replace the probabilistic rule for `peer`, or the default for all peers if None.

        A peer's own rule takes precedence over the default; it does not combine with it.
        """
        rule = LinkRule(drop_out=drop_out, drop_in=drop_in, delay_ms=delay_ms)
        with self._lock:
            if peer is None:
                self._default = rule
            else:
                self._links[_peer_id(peer)] = rule
            self._refresh()

    def drop_client_replies(self, n: int) -> None:
        """Drop the next `n` reply frames to clients: answers lost on their way back after
        the request took effect, which only a retry under the same key can recover."""
        n = _count(n, "drop_client_replies")
        with self._lock:
            self._drop_client_replies = n
            self._refresh()

    def clear_link(self, peer: int | None) -> None:
        """Remove the rule for `peer` (or reset the default if None)."""
        with self._lock:
            if peer is None:
                self._default = LinkRule()
            else:
                self._links.pop(_peer_id(peer), None)
            self._refresh()

    def clear(self) -> None:
        """Remove every rule: a healthy network. The random sequence continues."""
        with self._lock:
            self._blocked_out.clear()
            self._blocked_in.clear()
            self._links.clear()
            self._default = LinkRule()
            self._drop_client_replies = 0
            self._active = False

    def _refresh(self) -> None:
        self._active = bool(self._blocked_out or self._blocked_in or self._links
                            or not self._default.is_noop() or self._drop_client_replies)

    # ------------------------------------------------------------------------ decisions

    @property
    def active(self) -> bool:
        """False when no rule is set, so the transport can skip the decisions entirely."""
        return self._active

    @property
    def blocked_outbound(self) -> frozenset[int]:
        with self._lock:
            return frozenset(self._blocked_out)

    @property
    def blocked_inbound(self) -> frozenset[int]:
        with self._lock:
            return frozenset(self._blocked_in)

    def outbound(self, peer: int) -> float | None:
        """Decide one outbound message to `peer`: None to drop it, else a delay in seconds."""
        if not self._active:
            return 0.0
        with self._lock:
            if peer in self._blocked_out:
                return None
            rule = self._links.get(peer, self._default)
            if rule.drop_out and self._rng.random() < rule.drop_out:
                return None
            return rule.delay_ms / 1000.0

    def inbound(self, peer: int) -> bool:
        """Decide one inbound message from `peer`: True to deliver it."""
        if not self._active:
            return True
        with self._lock:
            if peer in self._blocked_in:
                return False
            rule = self._links.get(peer, self._default)
            return not (rule.drop_in and self._rng.random() < rule.drop_in)

    def client_reply(self) -> bool:
        """Decide one reply frame to a client: True to send it."""
        if not self._active:
            return True
        with self._lock:
            if self._drop_client_replies:
                self._drop_client_replies -= 1
                self._refresh()
                return False
            return True

    # -------------------------------------------------------------------- admin format

    def to_dict(self) -> dict[str, Any]:
        """Plain data (str keys, lists) for admin replies; `from_dict` reads it back."""
        with self._lock:
            links: dict[str, Any] = {str(p): r.to_dict() for p, r in sorted(self._links.items())}
            if not self._default.is_noop():
                links[_DEFAULT_KEY] = self._default.to_dict()
            d = {"seed": self.seed, "blocked_out": sorted(self._blocked_out),
                 "blocked_in": sorted(self._blocked_in), "links": links}
            if self._drop_client_replies:
                d["drop_client_replies"] = self._drop_client_replies
            return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> FaultRules:
        """Build rules from `to_dict` output (seed optional). Raises ValueError."""
        rules = cls(seed=d.get("seed"))
        rules.load(d)
        return rules

    def load(self, d: Mapping[str, Any]) -> None:
        """Replace every rule in place from `to_dict` output; reseed if d has a seed.

        Validates everything before changing anything. Raises ValueError.
        """
        if not isinstance(d, Mapping):
            raise ValueError("fault rules must be a map")
        unknown = set(d) - {"seed", "blocked_out", "blocked_in", "links", "drop_client_replies"}
        if unknown:
            raise ValueError(f"unknown fault rule fields: {sorted(unknown)}")
        seed = d.get("seed")
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
            raise ValueError(f"seed must be an int, got {seed!r}")
        blocked_out = {_peer_id(p) for p in d.get("blocked_out", ())}
        blocked_in = {_peer_id(p) for p in d.get("blocked_in", ())}
        client_drops = _count(d.get("drop_client_replies", 0), "drop_client_replies")
        links_in = d.get("links", {})
        if not isinstance(links_in, Mapping):
            raise ValueError("links must be a map")
        default = LinkRule()
        links: dict[int, LinkRule] = {}
        for key, rd in links_in.items():
            if not isinstance(rd, Mapping):
                raise ValueError(f"link rule for {key!r} must be a map")
            rule = LinkRule.from_dict(rd)
            if key == _DEFAULT_KEY or key is None:
                default = rule
            else:
                links[_peer_id(key)] = rule
        with self._lock:
            if seed is not None:
                self.seed = seed
                self._rng = random.Random(seed)
            self._blocked_out, self._blocked_in = blocked_out, blocked_in
            self._links, self._default = links, default
            self._drop_client_replies = client_drops
            self._refresh()

    def __repr__(self) -> str:
        return f"FaultRules({self.to_dict()!r})"
