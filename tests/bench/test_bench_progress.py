"""The bench's progress bars (tqdm): drawn on a terminal, silent elsewhere."""
from __future__ import annotations

import io

import pytest

from josefine.bench import cli

pytestmark = pytest.mark.timeout(30)


class _Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_a_bar_is_drawn_to_a_terminal_and_finishes_at_100(monkeypatch):
    err = _Tty()
    monkeypatch.setattr(cli.sys, "stderr", err)
    p = cli._Progress("josefine durable", True)
    for frac in (0.0, 0.3, 0.3, 0.8, 1.0, 1.0):
        p(frac)
    out = err.getvalue()
    assert "josefine durable" in out and out.rstrip().endswith("100%")
    assert "#" * 30 in out


@pytest.mark.parametrize("enabled,stream", [(False, _Tty), (True, io.StringIO)])
def test_no_bar_when_disabled_or_not_a_terminal(monkeypatch, enabled, stream):
    err = stream()
    monkeypatch.setattr(cli.sys, "stderr", err)
    p = cli._Progress("x", enabled)
    p(0.5)
    p(1.0)
    assert err.getvalue() == ""
