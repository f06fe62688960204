"""Hand-made histories with known verdicts, plus the CLI and report format."""
from __future__ import annotations

import json

import pytest

from josefine.check import check_history, format_result
from josefine.check.cli import main

pytestmark = pytest.mark.timeout(120)


class H:
    """Tiny history builder: records get `time` = their position, like the Jepsen corpus."""

    def __init__(self) -> None:
        self.lines: list[dict] = []

    def _add(self, process, type_, f, value, key="x", **extra):
        self.lines.append({"process": process, "type": type_, "f": f, "key": key,
                           "value": value, "time": len(self.lines), **extra})
        return self

    def inv(self, p, f, value=None, key="x"):
        return self._add(p, "invoke", f, value, key)

    def ok(self, p, f, value=None, key="x"):
        return self._add(p, "ok", f, value, key)

    def fail(self, p, f, value=None, key="x"):
        return self._add(p, "fail", f, value, key)

    def info(self, p, f, value=None, key="x"):
        return self._add(p, "info", f, value, key)

    def write(self, p, v, key="x"):
        return self.inv(p, "write", v, key).ok(p, "write", v, key)

    def read(self, p, v, key="x"):
        return self.inv(p, "read", None, key).ok(p, "read", v, key)

    def cas(self, p, old, new, outcome="ok", key="x"):
        self.inv(p, "cas", [old, new], key)
        return self._add(p, outcome, "cas", [old, new], key)

    def nemesis(self, f="partition", value=None):
        return self._add("nemesis", "info", f, value, key=None)


def verdict(h: H, **kw) -> str:
    return check_history(h.lines, **kw).verdict


def test_empty_history_is_ok():
    assert verdict(H()) == "ok"


def test_sequential_write_read():
    assert verdict(H().read(0, None).write(0, 1).read(1, 1).write(1, 2).read(0, 2)) == "ok"


def test_stale_read_is_violation_and_window_names_ops():
    h = H().write(0, 1).write(0, 2).read(1, 1)
    result = check_history(h.lines)
    assert result.verdict == "violation"
    assert result.key == "x"
    assert [op.f for op in result.window] == ["write", "read"]
    assert result.window[-1].value == 1
    text = format_result(result)
    assert "VIOLATION" in text and "'x'" in text and "read x -> 1" in text


def test_read_of_missing_key_after_write_is_violation():
    assert verdict(H().write(0, 1).read(1, None)) == "violation"


def test_read_of_never_written_value_is_violation():
    assert verdict(H().write(0, 1).read(1, 7)) == "violation"


def test_concurrent_read_may_see_old_or_new():
    for seen in (None, 1):
        h = H().inv(0, "write", 1).inv(1, "read").ok(1, "read", seen).ok(0, "write", 1)
        assert verdict(h) == "ok"


def test_reads_must_agree_on_order_of_concurrent_writes():
    # Two concurrent writes; later reads see 1 then 2 then 1: impossible.
    h = H().inv(0, "write", 1).inv(1, "write", 2).ok(0, "write", 1).ok(1, "write", 2)
    assert verdict(h.read(2, 1)) == "ok"
    assert verdict(h.read(2, 2).read(2, 1)) == "violation"


def test_cas_ok_requires_expected_value():
    assert verdict(H().write(0, 1).cas(1, 1, 2).read(0, 2)) == "ok"
    assert verdict(H().write(0, 1).cas(1, 3, 2)) == "violation"


@pytest.mark.parametrize("compare", [False, True])
def test_cas_fail_modes(compare):
    # The value is 1 throughout, yet a cas expecting 1 "failed".
    h = H().write(0, 1).cas(1, 1, 2, outcome="fail").read(0, 1)
    assert verdict(h, cas_fail_is_compare_failure=compare) == ("violation" if compare else "ok")
    # A cas that failed while the value was something else is fine in both modes.
    h = H().write(0, 3).cas(1, 1, 2, outcome="fail").read(0, 3)
    assert verdict(h, cas_fail_is_compare_failure=compare) == "ok"


def test_default_mode_failed_cas_never_happened():
    h = H().write(0, 1).cas(1, 1, 2, outcome="fail").read(0, 1)
    assert verdict(h) == "ok"
    assert verdict(h.read(0, 2)) == "violation"


def test_info_write_may_take_effect_later_or_never():
    h = H().write(0, 1).inv(1, "write", 2).info(1, "write", 2)
    assert verdict(H().write(0, 1).inv(1, "write", 2).info(1, "write", 2).read(0, 1)) == "ok"
    assert verdict(h.read(0, 1).read(0, 2)) == "ok"  # took effect long after its info


def test_info_write_takes_effect_at_most_once():
    h = H().write(0, 1).inv(1, "write", 2).info(1, "write", 2)
    assert verdict(h.read(0, 2).read(0, 1).read(0, 2)) == "violation"


def test_info_write_cannot_take_effect_before_invoke():
    h = H().write(0, 1).read(0, 2).inv(1, "write", 2).info(1, "write", 2)
    assert verdict(h) == "violation"


def test_info_cas_semantics():
    h = H().write(0, 1).inv(1, "cas", [1, 5]).info(1, "cas", [1, 5])
    assert verdict(h.read(0, 5)) == "ok"
    h = H().write(0, 1).inv(1, "cas", [3, 5]).info(1, "cas", [3, 5])
    assert verdict(h.read(0, 5)) == "violation"  # its comparison could never succeed


def test_missing_completion_counts_as_info():
    h = H().write(0, 1).inv(1, "write", 2).read(0, 1).read(0, 2)
    assert verdict(h) == "ok"
    assert verdict(H().inv(1, "write", 2).write(0, 1).read(0, 2).read(0, 1)) == "violation"


def test_reinvoke_turns_pending_op_into_info():
    h = H().write(0, 1).inv(1, "write", 2).inv(1, "write", 3).ok(1, "write", 3)
    assert verdict(h.read(0, 3)) == "ok"
    assert verdict(h.read(0, 2)) == "ok"  # the abandoned write of 2 may land late


def test_failed_and_info_reads_are_dropped():
    h = H().write(0, 1).inv(1, "read").fail(1, "read", 99).inv(2, "read").info(2, "read", 98)
    assert verdict(h.read(0, 1)) == "ok"


def test_failed_write_never_happened():
    h = H().write(0, 1).inv(1, "write", 2).fail(1, "write", 2)
    assert verdict(h.read(0, 1)) == "ok"
    assert verdict(h.read(0, 2)) == "violation"


def test_nemesis_lines_and_unknown_fields_are_ignored():
    h = H().nemesis("start-partition", ["n1"]).write(0, 1).nemesis("heal")
    h.lines[1]["extra"] = {"whatever": True}
    h.read(1, 1)
    assert verdict(h) == "ok"


def test_only_the_broken_key_is_reported():
    h = H()
    for k in ("a", "b", "c"):
        h.write(0, 1, key=k)
    h.read(1, 1, key="a").read(1, 0, key="b").read(1, 1, key="c")
    result = check_history(h.lines)
    assert result.verdict == "violation"
    assert result.key == "b"
    assert {r.key: r.verdict for r in result.per_key.values()} == {
        "a": "ok", "b": "violation", "c": "ok"}
    assert all(op.key == "b" for op in result.window)
    assert "'b'" in format_result(result)


def test_window_is_shrunk_to_the_conflict():
    h = H()
    for i in range(30):
        h.write(i % 3, i).read((i + 1) % 3, i)
    h.read(0, 5)  # stale
    for i in range(30, 40):
        h.write(i % 3, i)
    result = check_history(h.lines)
    assert result.verdict == "violation"
    assert 2 <= len(result.window) <= 3
    assert result.window[-1].value == 5 and result.window[-1].f == "read"


def test_line_order_not_time_field_decides_precedence():
    # Identical time fields: precedence comes from line order (write completes first).
    h = H().write(0, 1).read(1, None)
    for line in h.lines:
        line["time"] = 0
    assert verdict(h) == "violation"


def _write_history(tmp_path, h: H, name="h.jsonl"):
    path = tmp_path / name
    path.write_text("".join(json.dumps(line) + "\n" for line in h.lines))
    return path


def test_cli_exit_codes(tmp_path, capsys):
    good = _write_history(tmp_path, H().write(0, 1).read(1, 1), "good.jsonl")
    bad = _write_history(tmp_path, H().write(0, 1).read(1, 2), "bad.jsonl")
    assert main([str(good)]) == 0
    assert "OK" in capsys.readouterr().out
    assert main([str(bad)]) == 1
    assert "VIOLATION" in capsys.readouterr().out
    assert main([str(bad), "--json"]) == 1
    doc = json.loads(capsys.readouterr().out)
    assert doc["verdict"] == "violation" and doc["key"] == "x" and doc["window"]
    assert main([str(tmp_path / "missing.jsonl")]) == 3
    garbage = tmp_path / "garbage.jsonl"
    garbage.write_text('{"process": 0\nnot json\n{"process": 1}\n')
    assert main([str(garbage)]) == 3
    assert main([]) == 3
    capsys.readouterr()


def test_cli_compare_failure_flag(tmp_path):
    path = _write_history(tmp_path, H().write(0, 1).cas(1, 1, 2, outcome="fail").read(0, 1))
    assert main([str(path)]) == 0
    assert main([str(path), "--cas-fail-is-compare-failure"]) == 1


def test_cli_truncated_final_line_is_tolerated(tmp_path, capsys):
    path = _write_history(tmp_path, H().write(0, 1).read(1, 1))
    with open(path, "a") as fh:
        fh.write('{"process": 2, "type": "inv')
    assert main([str(path)]) == 0
    assert "truncated" in capsys.readouterr().err
