"""Shared pytest options.

Simulation: `--sim-seeds N` runs N seeds per configuration instead of the default,
`--sim-seed S` replays exactly one seed (printing its trace on failure), `--sim-steps N`
changes the steps per seed.
"""
from __future__ import annotations


def pytest_addoption(parser):
    g = parser.getgroup("josefine simulation")
    g.addoption("--sim-seeds", type=int, default=None, help="seeds per simulation config")
    g.addoption("--sim-seed", type=int, default=None, help="replay a single seed")
    g.addoption("--sim-steps", type=int, default=None, help="steps per seed")
