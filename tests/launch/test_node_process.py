"""Interpreter settings of the `josefine node` process (launch/node.py)."""
from __future__ import annotations

import gc

import pytest

from josefine.launch import node as node_entry

pytestmark = pytest.mark.timeout(30)


def test_tune_gc_sets_the_documented_thresholds():
    old = gc.get_threshold()
    try:
        node_entry.tune_gc()
        assert gc.get_threshold() == node_entry.GC_THRESHOLDS
    finally:
        gc.set_threshold(*old)


def test_malloc_trim_is_found_and_callable_on_glibc():
    trim = node_entry._malloc_trim()
    assert trim is not None, "this Linux machine has glibc"
    junk = [bytes(8192) for _ in range(2000)]   # something freed to give back
    del junk
    assert trim() in (0, 1)
