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

Optional: snapshots (`SnapshotStateMachine`, docs/protocol.md A.14). A node that has a
snapshot can forget the blocks below it and restart without replaying them, and a follower
that is too far behind is sent the snapshot instead. A state machine without these methods
still works everywhere else; asking the Applier to snapshot it raises TypeError.

* `snapshot(out)` writes the whole state to the binary stream `out`. Stream it (many small
  writes, e.g. `josefine.codec.write_record` per item) rather than building the state as
  one object: a large state must not need twice its memory to be saved. It must be
  deterministic, equal states giving equal bytes whatever history led to them (so that
  replicas' snapshots can be compared byte for byte), and must not change the state.
  Josefine never runs it concurrently with `apply` on the same object, so it sees a state
  nothing is changing. It must not close `out`.
* `restore(inp)` replaces the whole state (nothing of the old one survives) by what one
  `snapshot(out)` wrote, reading no further than its end (a caller may put more after it)
  and without closing `inp`. The bytes come from disk or from another node, so on invalid
  or truncated input it raises ValueError and leaves the state unchanged: build the new
  state aside and swap it in at the end, never half-loaded.

* `freeze()` (optional, `FreezableStateMachine`) returns an object whose `snapshot(out)`
  writes the state as it was when `freeze()` was called, and which later `apply` calls do
  not change: a cheap copy, or a copy-on-write view. With it a node writes snapshots on a
  background thread while it goes on applying; without it the snapshot is written on the
  FSM driver's thread and applying waits for it (replication and heartbeats do not).

Also optional: `digest() -> bytes`, a stable hash of the state, to compare replicas in
tests.
"""
from __future__ import annotations

from typing import Any, BinaryIO, Protocol, runtime_checkable

__all__ = ["StateMachine", "SnapshotStateMachine", "FreezableStateMachine",
           "DigestStateMachine"]


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
    """A state machine that can stream its state out and back (module docstring)."""

    def snapshot(self, out: BinaryIO) -> None:
        """Write the whole state to `out`; deterministic for equal states."""
        ...

    def restore(self, inp: BinaryIO) -> None:
        """Replace the whole state by one snapshot read from `inp`; ValueError (state
        unchanged) if the input is not a valid one."""
        ...


@runtime_checkable
class FreezableStateMachine(SnapshotStateMachine, Protocol):
    """A snapshotting state machine that can hand out a frozen copy of its state."""

    def freeze(self) -> SnapshotStateMachine:
        """The state as of now, unaffected by later applies (module docstring)."""
        ...


@runtime_checkable
class DigestStateMachine(StateMachine, Protocol):
    """A state machine that can hash its state for cross-replica comparison."""

    def digest(self) -> bytes:
        ...
