"""Linearizability checking of read/write/cas register histories (Wing–Gong/Lowe search).

Typical use::

    from josefine.check import check_file, format_result
    result = check_file("history.jsonl")
    print(format_result(result))

Histories are JSON Lines written by `HistoryRecorder`; see `josefine.check.history`.
"""
from josefine.check.checker import CheckResult, KeyResult, check_file, check_history, format_result
from josefine.check.history import HistoryError, HistoryRecorder, HistoryWarning, load_history
from josefine.check.ops import Operation, extract_operations

__all__ = ["CheckResult", "KeyResult", "check_file", "check_history", "format_result",
           "HistoryError", "HistoryRecorder", "HistoryWarning", "load_history",
           "Operation", "extract_operations"]
