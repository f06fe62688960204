"""The user's state machine: what a Josefine cluster replicates (docs/protocol.md A.8).

Who calls what, and when:

* `apply(command)` is called by the FSM driver (through `josefine.fsm.applier.Applier`)
  once for every committed client command, in chain order: blocks in height order along the
  committed path, commands in the order they sit in their block. Duplicate client retries
  are filtered out by the client session table *before* they reach `apply`, so the state
  machine sees every (client_id, seq) at most once. NOOP and CONFIG blocks never reach it.
* `query(query)` is called by the FSM driver for a linearizable read, after the node has
  applied at least up to the read's ReadIndex point. It must not change the state.
* Both run on the FSM driver's thread only (one thread; never concurrently with each other),
  so a state machine needs no locking of its own.

Rules a state machine must follow:

* `apply` is deterministic: its effect and result depend only on the current state and the
  command bytes — no clock, randomness, environment, I/O or iteration over unordered sets.
  Every replica must reach the same state and the same results.
* `apply` should not raise on bad input: a committed command is applied on every replica,
  so an exception there would hit them all. Return an error value instead (the Applier
  turns an exception into an `{"error": ...}` result, but the state may be half-changed).
* Results are sent back to clients, so they should be msgpack-encodable (None, bool, int,
  float, str, bytes, lists and dicts of those).
* `apply` should be short: it runs in a process whose other actors must keep heartbeating.

Optional (used later for snapshots, A.14; the Applier uses them when present):

* `snapshot() -> bytes` — the whole state, deterministic for equal states.
* `restore(data)` — replace the state with one produced by `snapshot()`.
* `digest() -> bytes` — a stable hash of the state, for cross-replica comparison in tests.
"""
from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

__all__ = ["StateMachine", "SnapshotStateMachine", "DigestStateMachine"]


@runtime_checkable
class StateMachine(Protocol):
    """The replicated application. See the module docstring for the full contract."""

    def apply(self, command: bytes) -> Any:
        """Apply one committed command and return its result (deterministic; exactly once)."""
        ...

    def query(self, query: bytes) -> Any:
        """Answer a read-only query against the current state."""
        ...


@runtime_checkable
class SnapshotStateMachine(StateMachine, Protocol):
    """A state machine that can be snapshotted and restored (used later, A.14)."""

    def snapshot(self) -> bytes:
        ...

    def restore(self, data: bytes) -> None:
        ...


@runtime_checkable
class DigestStateMachine(StateMachine, Protocol):
    """A state machine that can hash its state for cross-replica comparison."""

    def digest(self) -> bytes:
        ...
