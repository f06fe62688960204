"""Free port blocks for local clusters stay below the kernel's ephemeral port range: a
port there can be taken by any outgoing connection while its node is down."""
from __future__ import annotations

import socket

import pytest

from josefine.launch import ports

pytestmark = pytest.mark.timeout(30)


def test_blocks_are_below_the_ephemeral_range(tmp_path, monkeypatch):
    f = tmp_path / "range"
    f.write_text("30000\t60999\n")
    monkeypatch.setattr(ports, "EPHEMERAL_RANGE_FILE", f)
    assert ports.ephemeral_range() == (30000, 60999)
    for _ in range(50):
        base = ports.free_port_block(5)
        assert 20000 <= base and base + 5 + ports.HEADROOM <= 30000, base
    assert ports.in_ephemeral_range(30000) and not ports.in_ephemeral_range(29999)


def test_the_block_is_bindable_and_the_real_range_is_read():
    lo, hi = ports.ephemeral_range()
    assert 0 < lo <= hi <= 65535
    base = ports.free_port_block(3)
    for p in range(base, base + 3):
        with socket.socket() as s:
            s.bind(("127.0.0.1", p))
        assert not ports.in_ephemeral_range(p)


def test_an_unreadable_range_file_falls_back_to_linux_default(tmp_path, monkeypatch):
    monkeypatch.setattr(ports, "EPHEMERAL_RANGE_FILE", tmp_path / "missing")
    assert ports.ephemeral_range() == (32768, 60999)
