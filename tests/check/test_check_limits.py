"""Budgets: running out of time or states yields "unknown", never a guessed verdict."""
from __future__ import annotations

import json

import pytest

from josefine.check import check_history, format_result
from josefine.check.cli import main

pytestmark = pytest.mark.timeout(120)


def hard_history(writers: int = 14) -> list[dict]:
    """Many overlapping writes and reads of each value, then reads of 0 and 1 in turn.

    After everything overlapping is over the value cannot change, so the last two reads
    contradict each other; but every value is written by someone, and proving that no order
    of the overlapping ops works means exhausting them: thousands of states.
    """
    lines = []
    for p in range(writers):
        lines.append({"process": p, "type": "invoke", "f": "write", "key": "k", "value": p})
    for p in range(writers):
        lines.append({"process": 100 + p, "type": "invoke", "f": "read", "key": "k", "value": None})
    for p in range(writers):
        lines.append({"process": 100 + p, "type": "ok", "f": "read", "key": "k", "value": p})
    for p in range(writers):
        lines.append({"process": p, "type": "ok", "f": "write", "key": "k", "value": p})
    for v in (0, 1):
        lines.append({"process": 999, "type": "invoke", "f": "read", "key": "k", "value": None})
        lines.append({"process": 999, "type": "ok", "f": "read", "key": "k", "value": v})
    for i, rec in enumerate(lines):
        rec["time"] = i
    return lines


def test_hard_history_is_a_violation_given_budget():
    result = check_history(hard_history(8), shrink=False)
    assert result.verdict == "violation"
    assert result.per_key["k"].states > 1000


def test_state_limit_gives_unknown():
    result = check_history(hard_history(), max_states=200)
    assert result.verdict == "unknown"
    assert result.per_key["k"].verdict == "unknown"
    assert "Gave up" in format_result(result)


def long_history(n: int) -> list[dict]:
    """n rounds of a write overlapping a read of its value: linearizable, just long."""
    lines = []
    for i in range(n):
        lines += [{"process": 0, "type": "invoke", "f": "write", "key": "k", "value": i},
                  {"process": 1, "type": "invoke", "f": "read", "key": "k", "value": None},
                  {"process": 0, "type": "ok", "f": "write", "key": "k", "value": i},
                  {"process": 1, "type": "ok", "f": "read", "key": "k", "value": i}]
    return lines


def test_time_limit_gives_unknown():
    assert check_history(hard_history(), time_limit=0.0).verdict == "unknown"
    lines = long_history(40_000)
    result = check_history(lines, time_limit=0.05)
    assert result.verdict == "unknown"
    assert "Gave up" in format_result(result)
    assert check_history(lines, time_limit=60).verdict == "ok"


def test_state_limit_on_a_healthy_history_gives_unknown():
    lines = long_history(5_000)
    assert check_history(lines, max_states=1_000).verdict == "unknown"
    assert check_history(lines).verdict == "ok"


def test_known_violation_on_another_key_beats_unknown():
    lines = hard_history()
    lines += [{"process": 500, "type": "invoke", "f": "write", "key": "z", "value": 1},
              {"process": 500, "type": "ok", "f": "write", "key": "z", "value": 1},
              {"process": 501, "type": "invoke", "f": "read", "key": "z", "value": None},
              {"process": 501, "type": "ok", "f": "read", "key": "z", "value": 2}]
    result = check_history(lines, max_states=200)
    assert result.verdict == "violation" and result.key == "z"
    assert result.per_key["k"].verdict == "unknown"


def test_cli_unknown_exit_code(tmp_path):
    path = tmp_path / "hard.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in hard_history()))
    assert main([str(path), "--max-states", "100"]) == 2
    assert main([str(path), "--time-limit", "0"]) == 2
