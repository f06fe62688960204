"""The Jepsen etcd corpus (102 histories with known verdicts) in comparison-failed mode.

The corpus lives beside the clone in ../shared/data/jepsen-etcd (or $JOSEFINE_JEPSEN_DIR).
Its absence is a failure, not a skip: CI always provides it, and a silently skipped corpus
would hide a broken checker.
"""
from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

from josefine.check import check_file, format_result

pytestmark = pytest.mark.timeout(120)


def corpus_dir() -> Path:
    env = os.environ.get("JOSEFINE_JEPSEN_DIR")
    if env:
        return Path(env)
    return Path(__file__).resolve().parents[2].parent / "shared" / "data" / "jepsen-etcd"


@pytest.fixture(scope="module")
def corpus() -> tuple[Path, dict[str, str]]:
    d = corpus_dir()
    if not (d / "expected.json").is_file():
        pytest.fail(f"Jepsen etcd corpus not found at {d} (set JOSEFINE_JEPSEN_DIR)")
    return d, json.loads((d / "expected.json").read_text())


def test_corpus_is_complete(corpus):
    d, expected = corpus
    files = sorted(p.name for p in d.glob("*.jsonl"))
    assert files == sorted(expected)
    assert len(files) == 102
    assert set(expected.values()) == {"linearizable", "not linearizable"}


def test_corpus_verdicts_match(corpus):
    d, expected = corpus
    started = time.monotonic()
    wrong = []
    for name, want in sorted(expected.items()):
        result = check_file(d / name, cas_fail_is_compare_failure=True, time_limit=60)
        verdict = "linearizable" if result.verdict == "ok" else \
            "not linearizable" if result.verdict == "violation" else "unknown"
        if verdict != want:
            wrong.append((name, verdict, want))
        if result.verdict == "violation":
            assert result.key == "x" and result.window
            assert "VIOLATION" in format_result(result)
    assert not wrong
    # Everything including shrinking of 79 violations: seconds, not minutes.
    assert time.monotonic() - started < 60


def test_corpus_without_shrinking_is_fast(corpus):
    d, expected = corpus
    started = time.monotonic()
    for name in expected:
        check_file(d / name, cas_fail_is_compare_failure=True, shrink=False)
    assert time.monotonic() - started < 20


def test_loose_mode_never_reports_more_violations(corpus):
    """Reading cas fail as "never happened" only relaxes the history."""
    d, expected = corpus
    for name, want in expected.items():
        if want == "linearizable":
            assert check_file(d / name, shrink=False).verdict == "ok", name
