"""Budgets: running out of time or states yields "unknown", never a guessed verdict."""
from __future__ import annotations

import json

import pytest

from josefine.check import check_history, format_result
from josefine.check.cli import main

pytestmark = pytest.mark.timeout(120)


def hard_history(writers: int = 14) -> list[dict]:
    """Many overlapping writes, reads of each, then a read of a value nobody wrote.

    Deciding it means exhausting the orders of the writes: thousands of states.
    """
    lines = []
    for p in range(writers):
        lines.append({"process": p, "type": "invoke", "f": "write", "key": "k", "value": p})
    for p in range(writers):
        q = 100 + p
        lines.append({"process": q, "type": "invoke", "f": "read", "key": "k", "value": None})
    for p in range(writers):
        lines.append({"process": 100 + p, "type": "ok", "f": "read", "key": "k", "value": p})
    for p in range(writers):
        lines.append({"process": p, "type": "ok", "f": "write", "key": "k", "value": p})
    lines.append({"process": 999, "type": "invoke", "f": "read", "key": "k", "value": None})
    lines.append({"process": 999, "type": "ok", "f": "read", "key": "k", "value": "nobody"})
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


def test_time_limit_gives_unknown():
    result = check_history(hard_history(), time_limit=0.0)
    assert result.verdict == "unknown"
    result = check_history(hard_history(18), time_limit=0.2)
    assert result.verdict == "unknown"


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
