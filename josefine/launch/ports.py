"""Finding free loopback ports for local clusters (launcher users, demo, bench, tests).

Blocks are taken below the kernel's ephemeral port range: a port in that range that is
free now can be handed to any outgoing connection (a client's, or a node's own dial) while
the node that owns it is down, and the node then cannot restart ("Address already in use")
until that connection closes. A follower stopped for minutes under load hit exactly that.
"""
from __future__ import annotations

import random
import socket
from pathlib import Path

EPHEMERAL_RANGE_FILE = Path("/proc/sys/net/ipv4/ip_local_port_range")
_DEFAULT_EPHEMERAL = (32768, 60999)   # Linux's default, when the file cannot be read
HEADROOM = 32
"""Ports kept free above a block, for nodes added later (`member add` takes the next ids,
which listen on base + id - 1)."""


def ephemeral_range() -> tuple[int, int]:
    """The kernel's ephemeral (outgoing connection) port range, inclusive."""
    try:
        lo, hi = (int(x) for x in EPHEMERAL_RANGE_FILE.read_text().split())
        return lo, hi
    except (OSError, ValueError):
        return _DEFAULT_EPHEMERAL


def in_ephemeral_range(port: int) -> bool:
    lo, hi = ephemeral_range()
    return lo <= port <= hi


def free_port_block(n: int, lo: int = 20000, hi: int | None = None) -> int:
    """A base port such that base..base+n-1 are all free on 127.0.0.1 right now, all below
    the ephemeral range (with `HEADROOM` ports to spare above the block) unless `hi` says
    otherwise.

    Only a snapshot: another process may take a port before it is bound, so callers that
    can retry should (the launcher refuses taken ports with a clear error)."""
    if hi is None:
        eph_lo, _ = ephemeral_range()
        hi = eph_lo - HEADROOM if eph_lo - HEADROOM - n > lo else 60000
    rng = random.Random()
    for _ in range(200):
        base = rng.randrange(lo, hi - n)
        socks = []
        try:
            for p in range(base, base + n):
                s = socket.socket()
                socks.append(s)
                s.bind(("127.0.0.1", p))
            return base
        except OSError:
            continue
        finally:
            for s in socks:
                s.close()
    raise RuntimeError(f"no block of {n} free ports in {lo}..{hi}")
