"""Codec timings (not a test): python tests/transport/bench_codec.py [blocks] [payload bytes].

Timing goals are measured, never asserted in tests (see the README: speed is measured by the benchmark commands).
"""
from __future__ import annotations

import sys
import timeit

from transport_helpers import CLUSTER, chain_of

from josefine import codec  # the vocabulary codec (owns the block row cache)
from josefine.messages import AppendBlocks, ClientPropose, Heartbeat, Status
from josefine.transport.codec import (
    decode_frame,
    decode_message,
    encode_frame,
    encode_message,
    encode_propose_reply,
)


def best_us(fn, number: int = 20000, repeat: int = 7) -> float:
    return min(timeit.repeat(fn, number=number, repeat=repeat)) / number * 1e6


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 16
    size = int(sys.argv[2]) if len(sys.argv) > 2 else 10
    g, blocks = chain_of(n, payload=b"x" * size)
    msg = AppendBlocks(src=1, dst=2, term=3, prev=g.id, blocks=blocks, commit=g.id, seq=7)
    data = encode_message(msg)
    frame = encode_frame(CLUSTER, 1, [msg])

    def cold():
        codec._ROW_CACHE.clear()
        return encode_message(msg)

    hb = Heartbeat(src=1, dst=2, term=3, commit=g.id, seq=1)
    propose = encode_message(ClientPropose(client_id="c-1", seq=9, command=b"x" * size))
    rows = [
        (f"encode AppendBlocks x{n} (block rows cached)", lambda: encode_message(msg)),
        (f"encode AppendBlocks x{n} (cold cache)", cold),
        (f"decode AppendBlocks x{n}", lambda: decode_message(data)),
        (f"encode_frame [AppendBlocks x{n}]", lambda: encode_frame(CLUSTER, 1, [msg])),
        (f"decode_frame [AppendBlocks x{n}]", lambda: decode_frame(frame, CLUSTER)),
        ("encode Heartbeat", lambda: encode_message(hb)),
        ("decode Heartbeat", lambda: decode_message(encode_message(hb))),
        ("build Heartbeat", lambda: Heartbeat(src=1, dst=2, term=3, commit=g.id, seq=1)),
        ("decode ClientPropose", lambda: decode_message(propose)),
        ("encode_propose_reply", lambda: encode_propose_reply("c-1", 9, Status.OK, None, None)),
    ]
    print(f"AppendBlocks with {n} blocks of {size}-byte payload: {len(data)} bytes encoded")
    for name, fn in rows:
        print(f"{name:45s} {best_us(fn):8.2f} us")


if __name__ == "__main__":
    main()
