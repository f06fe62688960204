"""Command line: ``josefine check HISTORY`` (also ``python -m josefine.check HISTORY``).

Exit status is the verdict, so scripts and CI can act on it: 0 linearizable, 1 violation,
2 unknown (a limit was hit), 3 unreadable input or bad usage.
"""
from __future__ import annotations

import argparse
import json
import sys
import warnings
from typing import NoReturn

from josefine.check.checker import DEFAULT_MAX_STATES, check_history, format_result
from josefine.check.history import HistoryError, load_history

__all__ = ["main", "EXIT_OK", "EXIT_VIOLATION", "EXIT_UNKNOWN", "EXIT_BAD_INPUT"]

EXIT_OK, EXIT_VIOLATION, EXIT_UNKNOWN, EXIT_BAD_INPUT = 0, 1, 2, 3
_EXIT = {"ok": EXIT_OK, "violation": EXIT_VIOLATION, "unknown": EXIT_UNKNOWN}


class _UsageError(Exception):
    pass


class _Parser(argparse.ArgumentParser):
    # argparse exits with 2 on bad usage, which would read as "unknown"; raise instead.
    def error(self, message: str) -> NoReturn:
        raise _UsageError(f"{self.prog}: error: {message}")


def _parser() -> argparse.ArgumentParser:
    p = _Parser(prog="josefine check",
                description="Check a JSON Lines history of read/write/cas operations for "
                            "linearizability (each key is an independent register).")
    p.add_argument("history", metavar="HISTORY", help="JSON Lines history file")
    p.add_argument("--cas-fail-is-compare-failure", action="store_true",
                   help="a cas 'fail' happened but found a different value (Jepsen etcd "
                        "semantics); default: a failed cas never happened")
    p.add_argument("--time-limit", type=float, default=None, metavar="SECONDS",
                   help="give up with verdict 'unknown' after this long")
    p.add_argument("--max-states", type=int, default=DEFAULT_MAX_STATES, metavar="N",
                   help=f"per-key search state limit (default {DEFAULT_MAX_STATES})")
    p.add_argument("--no-shrink", action="store_true",
                   help="report all operations of a bad key instead of a minimized window")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    return p


def main(argv: list[str] | None = None) -> int:
    """Run the checker on ``argv`` (default: ``sys.argv[1:]``); returns the exit status."""
    try:
        args = _parser().parse_args(argv)
    except _UsageError as exc:
        print(exc, file=sys.stderr)
        return EXIT_BAD_INPUT
    except SystemExit as exc:  # --help
        return exc.code if isinstance(exc.code, int) else EXIT_OK
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            history = load_history(args.history)
            result = check_history(history,
                                   cas_fail_is_compare_failure=args.cas_fail_is_compare_failure,
                                   time_limit=args.time_limit, max_states=args.max_states,
                                   shrink=not args.no_shrink)
    except (OSError, HistoryError) as exc:
        print(f"josefine check: cannot read {args.history}: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    for w in caught:
        print(f"warning: {w.message}", file=sys.stderr)
    if args.json:
        print(json.dumps(result.to_dict(), indent=2, default=repr))
    else:
        print(format_result(result))
    return _EXIT[result.verdict]
