"""Long simulated histories: speed, and finding a single bad read among thousands of ops."""
from __future__ import annotations

import random
import time

import pytest

import josefine.check.checker as checker
from josefine.check import check_history
from josefine.check.ops import extract_operations
from josefine.check.shrink import Windows, window_fails

pytestmark = pytest.mark.timeout(120)


def simulate(nops: int, *, clients: int = 8, keys: int = 8, domain: int | None = None,
             unknown: float = 0.02, seed: int = 1) -> list[dict]:
    """Clients run read/write/cas against a real register map, with random interleaving.

    Each op takes effect at a random moment between its invoke and completion lines; some
    time out (type "info", whether or not they took effect) and their client moves on under
    a new process id, as Jepsen does. `domain` limits written values (None: unique values).
    """
    rng = random.Random(seed)
    store: dict[str, object] = {}
    lines: list[dict] = []
    pending: dict[int, dict] = {}
    proc = list(range(clients))
    started, counter = 0, 0
    while started < nops or pending:
        c = rng.randrange(clients)
        op = pending.get(c)
        if op is None:
            if started >= nops:
                continue
            key = f"k{rng.randrange(keys)}"
            f = rng.choice(["read", "read", "write", "cas"])
            counter += 1
            new = counter if domain is None else rng.randrange(domain)
            old = store.get(key) if rng.random() < 0.6 else (
                rng.randrange(domain) if domain else counter - rng.randrange(1, 40))
            value = None if f == "read" else new if f == "write" else [old, new]
            pending[c] = op = {"f": f, "key": key, "value": value, "done": False, "res": None}
            lines.append({"process": proc[c], "type": "invoke", "f": f, "key": key,
                          "value": value})
            started += 1
            continue
        if not op["done"] and rng.random() < 0.7:
            op["done"] = True
            key = op["key"]
            if op["f"] == "read":
                op["res"] = store.get(key)
            elif op["f"] == "write":
                store[key] = op["value"]
            else:
                op["res"] = store.get(key) == op["value"][0]
                if op["res"]:
                    store[key] = op["value"][1]
            continue
        if not op["done"] and rng.random() > unknown:
            continue
        del pending[c]
        if rng.random() < unknown or not op["done"]:
            typ = "info"
        elif op["f"] == "cas" and not op["res"]:
            typ = "fail"
        else:
            typ = "ok"
        lines.append({"process": proc[c], "type": typ, "f": op["f"], "key": op["key"],
                      "value": op["res"] if op["f"] == "read" else op["value"]})
        if typ == "info":
            proc[c] += clients
    for i, line in enumerate(lines):
        line["time"] = i * 1000
    return lines


def corrupt_read(lines: list[dict], key: str, where: float, value: object) -> int:
    reads = [i for i, x in enumerate(lines)
             if x["key"] == key and x["f"] == "read" and x["type"] == "ok"]
    i = reads[int(len(reads) * where)]
    lines[i]["value"] = value
    return i


def stale_value(lines: list[dict], i: int, back: int = 10) -> object:
    key = lines[i]["key"]
    writes = [x["value"] for x in lines[:i]
              if x["key"] == key and x["f"] == "write" and x["type"] == "invoke"]
    return writes[-back]


@pytest.mark.parametrize("compare", [False, True])
def test_long_linearizable_history_is_fast(compare):
    lines = simulate(20_000, unknown=0.03)
    started = time.monotonic()
    result = check_history(lines, cas_fail_is_compare_failure=compare)
    elapsed = time.monotonic() - started
    assert result.verdict == "ok"
    assert len(result.per_key) == 8
    assert elapsed < 30, elapsed


@pytest.mark.parametrize("where", [0.1, 0.6, 0.97])
def test_stale_read_in_long_history_is_pinpointed(where):
    lines = simulate(16_000, unknown=0.03, seed=2)
    i = corrupt_read(lines, "k3", where, None)
    lines[i]["value"] = stale_value(lines, i)
    result = check_history(lines, time_limit=60)
    assert result.verdict == "violation"
    assert result.key == "k3"
    assert 1 <= len(result.window) <= 4
    assert any(op.ret == i for op in result.window)  # the bad read itself is blamed


def test_violation_found_by_window_when_search_gives_up(monkeypatch):
    """Force the first search to give up early: a window probe must still prove it."""
    monkeypatch.setattr(checker, "_QUICK_STATES", 500)
    monkeypatch.setattr(checker, "_QUICK_PER_OP", 0)
    lines = simulate(8_000, keys=2, unknown=0.05, seed=3)
    i = corrupt_read(lines, "k1", 0.5, None)
    lines[i]["value"] = stale_value(lines, i)
    ops = extract_operations(lines)["k1"]
    assert len(ops) > 2000
    result = check_history(lines, time_limit=60)
    assert result.verdict == "violation" and result.key == "k1"
    assert i in [op.ret for op in result.window] and len(result.window) <= 3
    assert result.per_key["k0"].verdict == "ok"
    assert result.per_key["k1"].states <= 500  # no second, full search was needed


def test_locate_and_scan_find_the_bad_window():
    lines = simulate(4_000, keys=1, domain=5, unknown=0.05, seed=4)
    i = corrupt_read(lines, "k0", 0.7, "garbage")
    ops = extract_operations(lines, cas_fail_is_compare_failure=True)["k0"]
    bad = next(op for op in ops if op.ret == i)
    found = Windows(ops).locate(bad)
    assert found is not None
    lo, hi = found
    assert ops[lo].inv <= i and any(op.ret == i for op in ops[lo:hi])
    found = Windows(ops).scan()
    assert found is not None and window_fails(ops, *found)
    lo, hi = found
    assert ops[lo].inv <= i and any(op.ret == i for op in ops[lo:hi])


def test_no_window_of_a_linearizable_history_fails():
    lines = simulate(3_000, keys=1, domain=3, unknown=0.1, seed=5)
    for compare in (False, True):
        ops = extract_operations(lines, cas_fail_is_compare_failure=compare)["k0"]
        assert Windows(ops).scan(width=64) is None
        assert check_history(lines, cas_fail_is_compare_failure=compare).verdict == "ok"
