"""A deliberately BROKEN node, for proving that the chaos harness can fail.

Importing this module (in a node process, before the node starts) replaces the core's
ReadIndex handling: every node — followers, candidates, a deposed leader — answers a read at
once from whatever it has applied locally, with no leadership check and no quorum round.
Such reads are stale whenever the node lags or is cut off, which is not linearizable.
"""
from __future__ import annotations

from josefine.raft import core


def _read_locally(self, read_id, at_follower=True):  # noqa: ANN001 - replaces RaftCore._read_index
    self._r.reads.append((read_id, self.applied))


core.RaftCore._read_index = _read_locally
