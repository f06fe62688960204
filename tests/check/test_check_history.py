"""HistoryRecorder / load_history round trip, including concurrent writers and torn lines."""
from __future__ import annotations

import json
import random
import threading

import pytest

from josefine.check import HistoryRecorder, HistoryWarning, check_history, load_history
from josefine.check.history import HistoryError

pytestmark = pytest.mark.timeout(120)


def test_round_trip(tmp_path):
    path = tmp_path / "h.jsonl"
    with HistoryRecorder(path) as rec:
        w = rec.invoke(1, "write", "k", "v1")
        rec.nemesis("partition", nodes=[1, 2])
        rec.complete(w, "ok", value="ignored: a write repeats its invoke value")
        r = rec.invoke(2, "read", "k")
        rec.complete(r, "ok", "v1")
        c = rec.invoke(3, "cas", "k", ("v1", "v2"))
        rec.complete(c, "fail")
        rec.invoke(4, "write", "k", "v3")  # never completed
    lines = load_history(path)
    assert [(x["process"], x["type"], x["f"]) for x in lines] == [
        (1, "invoke", "write"), ("nemesis", "info", "partition"), (1, "ok", "write"),
        (2, "invoke", "read"), (2, "ok", "read"), (3, "invoke", "cas"), (3, "fail", "cas"),
        (4, "invoke", "write")]
    assert lines[2]["value"] == "v1"
    assert lines[1]["value"] == {"nodes": [1, 2]}
    assert lines[3]["value"] is None and lines[4]["value"] == "v1"
    assert lines[5]["value"] == ["v1", "v2"] and lines[6]["value"] == ["v1", "v2"]
    times = [x["time"] for x in lines]
    assert times == sorted(times) and all(isinstance(t, int) for t in times)
    assert check_history(lines).verdict == "ok"


def test_completion_misuse_is_rejected(tmp_path):
    with HistoryRecorder(tmp_path / "h.jsonl") as rec:
        op = rec.invoke(1, "read", "k")
        with pytest.raises(ValueError):
            rec.complete(op, "done")
        rec.complete(op, "ok", None)
        with pytest.raises(ValueError):
            rec.complete(op, "ok", None)


def test_appends_and_flushes_each_line(tmp_path):
    path = tmp_path / "h.jsonl"
    rec = HistoryRecorder(path)
    rec.invoke(1, "read", "k")
    # Visible to another reader before close: a killed harness loses nothing written.
    assert len(path.read_text().splitlines()) == 1
    rec.close()
    with HistoryRecorder(path) as rec2:
        rec2.nemesis("heal")
    assert len(load_history(path)) == 2


def test_concurrent_recording_of_a_real_register_is_linearizable(tmp_path):
    path = tmp_path / "h.jsonl"
    store: dict[str, object] = {}
    lock = threading.Lock()

    def client(pid: int, rec: HistoryRecorder) -> None:
        rng = random.Random(pid)
        for i in range(300):
            key = f"k{rng.randrange(3)}"
            f = rng.choice(["read", "write", "cas"])
            if f == "read":
                op = rec.invoke(pid, f, key)
                with lock:
                    value = store.get(key)
                rec.complete(op, "ok", value)
            elif f == "write":
                op = rec.invoke(pid, f, key, f"{pid}-{i}")
                with lock:
                    store[key] = f"{pid}-{i}"
                rec.complete(op, "ok")
            else:
                with lock:
                    guess = store.get(key)
                op = rec.invoke(pid, f, key, [guess, f"{pid}-{i}"])
                with lock:
                    hit = store.get(key) == guess
                    if hit:
                        store[key] = f"{pid}-{i}"
                rec.complete(op, "ok" if hit else "fail")

    with HistoryRecorder(path) as rec:
        threads = [threading.Thread(target=client, args=(p, rec)) for p in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    lines = load_history(path)
    assert len(lines) == 6 * 300 * 2
    for compare in (False, True):
        assert check_history(lines, cas_fail_is_compare_failure=compare).verdict == "ok"
    # Tamper with one read: now it must be caught.
    reads = [x for x in lines if x["f"] == "read" and x["type"] == "ok" and x["value"]]
    reads[len(reads) // 2]["value"] = "bogus"
    assert check_history(lines).verdict == "violation"


def test_load_history_tolerates_only_a_torn_final_line(tmp_path):
    path = tmp_path / "h.jsonl"
    good = json.dumps({"process": 1, "type": "invoke", "f": "read", "key": "k", "value": None})
    path.write_text(good + "\n\n" + good[:-5])
    with pytest.warns(HistoryWarning):
        assert len(load_history(path)) == 1
    path.write_text(good[:-5] + "\n" + good + "\n")
    with pytest.raises(HistoryError):
        load_history(path)
    path.write_text("[1, 2]\n")
    with pytest.raises(HistoryError):
        load_history(path)
