"""Finding free loopback ports for local clusters (launcher users, demo, bench, tests)."""
from __future__ import annotations

import random
import socket


def free_port_block(n: int, lo: int = 20000, hi: int = 60000) -> int:
    """A base port such that base..base+n-1 are all free on 127.0.0.1 right now.

    Only a snapshot: another process may take a port before it is bound, so callers that
    can retry should (the launcher refuses taken ports with a clear error)."""
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
