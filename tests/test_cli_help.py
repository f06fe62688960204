"""Every option of every command line carries help text (`--help` is the user's manual)."""
from __future__ import annotations

import argparse

import pytest

from josefine.bench import bare_loop, core_bench
from josefine.bench import cli as bench_cli
from josefine.chaos import cli as chaos_cli
from josefine.check import cli as check_cli
from josefine.launch import cli as launch_cli
from josefine.launch import demo

pytestmark = pytest.mark.timeout(60)

PARSERS = {
    "josefine": launch_cli.build_parser,
    "josefine bench": bench_cli.build_parser,
    "josefine chaos": chaos_cli.build_parser,
    "josefine check": check_cli._parser,
    "josefine demo": demo.build_parser,
    "bare_loop": bare_loop.build_parser,
    "core_bench": core_bench.build_parser,
}


def _walk(name: str, parser: argparse.ArgumentParser):  # noqa: ANN202
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub, subparser in action.choices.items():
                yield from _walk(f"{name} {sub}", subparser)
        elif not isinstance(action, argparse._HelpAction):
            yield name, action


@pytest.mark.parametrize("name", sorted(PARSERS))
def test_every_option_has_help(name):
    missing = [f"{cmd}: {'/'.join(a.option_strings) or a.dest}"
               for cmd, a in _walk(name, PARSERS[name]())
               if not a.help or a.help == argparse.SUPPRESS and a.option_strings]
    assert not missing, missing
