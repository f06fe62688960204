"""The search against an independent brute-force oracle on many small random histories.

The oracle enumerates every subset of unknown-outcome operations and every permutation of
the chosen operations that respects real-time order, and runs the register on each. It
re-implements the history semantics from the spec on its own, so it also cross-checks the
parsing of invokes/completions.
"""
from __future__ import annotations

import itertools
import random

import pytest

from josefine.check import check_history
from josefine.check.ops import CAS, READ, WRITE, Operation, extract_operations
from josefine.check.search import ANY, search

pytestmark = pytest.mark.timeout(120)

INF = float("inf")
VALUES = [0, 1, 2]


def oracle_ops(lines, compare):
    """[(inv, ret, required, f, a, b)] from records, by the spec's rules (own implementation)."""
    pending, done = {}, []
    for idx, rec in enumerate(lines):
        if rec["process"] == "nemesis":
            continue
        p = rec["process"]
        if rec["type"] == "invoke":
            if p in pending:
                done.append((pending.pop(p), None))
            pending[p] = (idx, rec)
        else:
            done.append((pending.pop(p), (idx, rec)))
    done.extend((inv, None) for inv in pending.values())
    ops = []
    for (inv, irec), comp in done:
        typ = comp[1]["type"] if comp else "info"
        ret = comp[0] if comp and typ != "info" else INF
        f, v = irec["f"], irec["value"]
        if f == "read":
            if typ == "ok":
                ops.append((inv, ret, True, "read", comp[1]["value"], None))
        elif f == "write":
            if typ != "fail":
                ops.append((inv, ret, typ == "ok", "write", v, None))
        elif typ == "fail":
            if compare:
                ops.append((inv, ret, True, "cas-fail", v[0], None))
        else:
            ops.append((inv, ret, typ == "ok", "cas", v[0], v[1]))
    return ops


def oracle_linearizable(ops, initial_values=(None,)):
    required = [o for o in ops if o[2]]
    optional = [o for o in ops if not o[2]]
    for r in range(len(optional) + 1):
        for chosen in itertools.combinations(optional, r):
            group = required + list(chosen)
            for perm in itertools.permutations(group):
                # real time: no later op in perm may have completed before an earlier one began
                if any(perm[j][1] < perm[i][0] for i in range(len(perm))
                       for j in range(i + 1, len(perm))):
                    continue
                for init in initial_values:
                    state, good = init, True
                    for _, _, _, f, a, b in perm:
                        if f == "read":
                            good = state == a
                        elif f == "write":
                            state = a
                        elif f == "cas":
                            good = state == a
                            state = b
                        else:
                            good = state != a
                        if not good:
                            break
                    if good:
                        return True
    return False


def random_history(rng: random.Random, max_ops: int, unknown: float = 0.15):
    """Simulate clients on a real register with random overlaps, then maybe corrupt it."""
    nproc = rng.randint(1, 5)
    nops = rng.randint(1, max_ops)
    lines, state, started = [], None, 0
    pend: dict[int, dict] = {}  # process -> {"f", "value", "applied", "result"}
    idle = list(range(nproc))
    while started < nops or pend:
        choices = []
        if started < nops and idle:
            choices.append("invoke")
        if pend:
            choices += ["apply", "complete"]
        act = rng.choice(choices)
        if act == "invoke":
            p = idle.pop(rng.randrange(len(idle)))
            f = rng.choice(["read", "write", "cas"])
            v = None if f == "read" else rng.choice(VALUES) if f == "write" \
                else [rng.choice(VALUES), rng.choice(VALUES)]
            pend[p] = {"f": f, "value": v, "applied": False, "result": None}
            lines.append({"process": p, "type": "invoke", "f": f, "key": "x", "value": v})
            started += 1
            continue
        p = rng.choice(list(pend))
        op = pend[p]
        if act == "apply":
            if not op["applied"]:
                op["applied"] = True
                if op["f"] == "read":
                    op["result"] = state
                elif op["f"] == "write":
                    state = op["value"]
                else:
                    op["result"] = state == op["value"][0]
                    if op["result"]:
                        state = op["value"][1]
            continue
        del pend[p]
        vanish = rng.random() < unknown * 0.7  # the client dies: no completion line at all
        if not op["applied"]:
            if rng.random() < 0.3:
                typ = "fail" if op["f"] != "cas" or rng.random() < 0.5 else "info"
            elif not vanish:
                pend[p] = op  # not yet applied: put it back
                continue
        elif op["f"] == "cas" and not op["result"]:
            typ = "fail"
        else:
            typ = "info" if op["f"] != "read" and rng.random() < unknown else "ok"
        if not vanish:
            value = op["result"] if op["f"] == "read" else op["value"]
            lines.append({"process": p, "type": typ, "f": op["f"], "key": "x", "value": value})
        # after an unknown outcome the process id is retired, as in Jepsen
        idle.append(p if not vanish and typ != "info" else p + 100)
    targets = [rec for rec in lines if (rec["f"], rec["type"]) in (
        ("read", "ok"), ("write", "invoke"), ("cas", "ok"), ("cas", "fail"))]
    if targets and rng.random() < 0.6:
        for _ in range(rng.randint(1, 3)):
            rec = rng.choice(targets)
            if rec["f"] == "read":
                rec["value"] = rng.choice(VALUES + [None])
            elif rec["f"] == "write":
                rec["value"] = rng.choice(VALUES)
            else:
                rec["type"] = "fail" if rec["type"] == "ok" else "ok"
    if rng.random() < 0.2 and lines:
        lines.insert(rng.randrange(len(lines)), {"process": "nemesis", "type": "info",
                                                 "f": "kill", "value": None})
    for i, rec in enumerate(lines):
        rec["time"] = i
    return lines


@pytest.mark.parametrize("unknown", [0.15, 0.5])
@pytest.mark.parametrize("compare", [False, True])
def test_checker_agrees_with_brute_force(compare, unknown):
    """Few or many unknown outcomes (the latter exercises chains of optional ops)."""
    rng = random.Random(20240611 + compare + int(unknown * 100))
    verdicts = {"ok": 0, "violation": 0}
    for n in range(600):
        lines = random_history(rng, 7, unknown)
        want = oracle_linearizable(oracle_ops(lines, compare))
        result = check_history(lines, cas_fail_is_compare_failure=compare)
        assert result.verdict == ("ok" if want else "violation"), (n, lines)
        verdicts[result.verdict] += 1
        if result.verdict == "violation":
            assert result.window and all(op.key == "x" for op in result.window)
    # the generator must exercise both outcomes substantially
    assert verdicts["ok"] >= 150 and verdicts["violation"] >= 100, verdicts


_ORACLE_NAMES = {READ: "read", WRITE: "write", CAS: "cas", 3: "cas-fail"}


def plain_search(ops, initial=None) -> bool:
    """Textbook just-in-time search with a (linearized set, value) memo and no reductions.

    Exponential, but fine for a few dozen ops; checks the real search's reductions on
    histories too long for `oracle_linearizable`.
    """
    required = [i for i, op in enumerate(ops) if op[2]]
    seen = set()

    def step(op, value):
        f, a, b = op[3], op[4], op[5]
        if f == "read":
            return value == a, value
        if f == "write":
            return True, a
        if f == "cas":
            return value == a, b
        return value != a, value

    def rec(done, value) -> bool:
        if all(i in done for i in required):
            return True
        if (done, value) in seen:
            return False
        seen.add((done, value))
        deadline = min(ops[i][1] for i in required if i not in done)
        for i, op in enumerate(ops):
            if i not in done and op[0] < deadline:
                ok, new = step(op, value)
                if ok and rec(done | {i}, new):
                    return True
        return False

    return rec(frozenset(), initial)


@pytest.mark.parametrize("compare", [False, True])
def test_checker_agrees_with_plain_search_on_longer_histories(compare):
    rng = random.Random(4242 + compare)
    verdicts = {"ok": 0, "violation": 0}
    for n in range(300):
        lines = random_history(rng, 25, rng.choice([0.1, 0.4]))
        ops = oracle_ops(lines, compare)
        if n < 100:  # the plain search itself against the brute force, where feasible
            small = random_history(rng, 6, 0.3)
            assert plain_search(oracle_ops(small, compare)) == \
                oracle_linearizable(oracle_ops(small, compare))
        want = plain_search(ops)
        result = check_history(lines, cas_fail_is_compare_failure=compare)
        assert result.verdict == ("ok" if want else "violation"), lines
        verdicts[result.verdict] += 1
    assert min(verdicts.values()) >= 60, verdicts


def _op(kind, a, b, inv, ret):
    f = {READ: "read", WRITE: "write", CAS: "cas"}.get(kind, "cas")
    return Operation(kind, a, b, inv, ret, process=0, key="x", f=f, outcome="ok", value=a)


@pytest.mark.parametrize("reuse", [False, True])
@pytest.mark.parametrize("start", ["any", "none"])
def test_search_agrees_with_brute_force(start, reuse):
    """The search alone on random op sets, many of them optional (chains of unknown-outcome
    cas ops), with written values some of which nobody reads. With start "any",
    search(initial=ANY) must equal "fails for every concrete start" (incl. a fresh value).
    With `reuse`, optional ops may take effect repeatedly: the oracle gets one copy of each
    per required op, enough since every use must lead to a different required op.
    """
    rng = random.Random(7 + (start == "any") + 2 * reuse)
    written = VALUES + [3, 4, 5]
    counts = {"ok": 0, "violation": 0}
    for _ in range(800):
        ops, orc = [], []
        nreq, nopt = rng.randint(1, 3 if reuse else 4), rng.randint(0, 1 if reuse else 3)
        for q in range(nreq + nopt):
            required = q < nreq
            kind = rng.choice([READ, WRITE, CAS, 3] if required else [WRITE, CAS, CAS])
            a = rng.choice(written) if kind == WRITE else rng.choice(VALUES + [None])
            b = rng.choice(written) if kind == CAS else None
            inv = rng.randrange(12) * 2
            ret = inv + 1 + 2 * rng.randrange(6) if required else None
            ops.append(_op(kind, a, b, inv, ret))
            copies = nreq if reuse and not required else 1
            oracle_op = (inv, INF if ret is None else ret, required, _ORACLE_NAMES[kind], a, b)
            orc += [oracle_op] * copies
        required = [o for o in ops if o.required]
        optional = [o for o in ops if not o.required]
        got = search(required, optional, initial=ANY if start == "any" else None,
                     reuse_optional=reuse).verdict
        starts = written + [None, "fresh"] if start == "any" else [None]
        want = oracle_linearizable(orc, initial_values=starts)
        assert got == ("ok" if want else "violation"), orc
        counts[got] += 1
    assert min(counts.values()) >= 150, counts


def _as_oracle(op: Operation, optional: bool = False):
    required = op.required and not optional
    return (op.inv, op.ret if required else INF, required, _ORACLE_NAMES[op.kind], op.a, op.b)


@pytest.mark.parametrize("compare", [False, True])
def test_reported_windows_really_fail(compare):
    """A reported window must fail even if every other write/cas of the key is optional
    (may happen any time after its invoke, or never) and, if it does not start the
    history, whatever the starting value: the report never blames innocent operations."""
    rng = random.Random(99 + compare)
    checked = 0
    while checked < 150:
        lines = random_history(rng, 7, 0.3)
        result = check_history(lines, cas_fail_is_compare_failure=compare)
        if result.verdict != "violation":
            continue
        checked += 1
        assert 1 <= len(result.window) <= 7
        ops = extract_operations(lines, cas_fail_is_compare_failure=compare)["x"]
        inside = {op.inv for op in result.window}  # invoke lines identify ops
        assert inside <= {op.inv for op in ops}
        # Writes that finished before the window began only matter through the start
        # value, which is free unless the window starts the history.
        first = min(inside)
        relaxed = [_as_oracle(op) for op in result.window] + [
            _as_oracle(op, optional=True) for op in ops
            if op.inv not in inside and op.kind in (WRITE, CAS)
            and (result.window_from_start or op.ret is None or op.ret > first)]
        starts = (None,) if result.window_from_start else tuple(VALUES) + (None, "fresh")
        assert not oracle_linearizable(relaxed, starts), (lines, result.window)
