"""Exceptions that cross the library's public surface.

Every error a caller of Josefine is expected to handle derives from
`JosefineError`, so `except JosefineError` catches them all. The classes map
onto the client-visible statuses of docs/protocol.md A.4 (`ClientProposeResp.status`):

| status      | exception              | did the command apply?              |
| ----------- | ---------------------- | ----------------------------------- |
| NOT_LEADER  | `NotLeaderError`       | no; retry at the hinted leader      |
| UNKNOWN     | `UnknownOutcomeError`  | maybe; retry with the same seq      |
| ABORTED     | `AbortedError`         | no (its block lost the election)    |
| BUSY        | `BusyError`            | no; back off and retry              |
| (rejected)  | `RejectedError`        | no; the request itself is invalid   |
| (no quorum) | `UnavailableError`     | no answer from any usable node      |

This module imports nothing from the rest of the package, so every layer may
import it. `josefine.config.ConfigError` also derives from `JosefineError`.
"""
from __future__ import annotations

__all__ = [
    "AbortedError",
    "BusyError",
    "JosefineError",
    "NotLeaderError",
    "RejectedError",
    "UnavailableError",
    "UnknownOutcomeError",
]


class JosefineError(Exception):
    """Base class of every error Josefine raises on purpose."""


class NotLeaderError(JosefineError):
    """The contacted node is not the leader; nothing was applied.

    Attributes:
        leader_hint: id of the node believed to lead, or None if unknown.
        leader_address: that node's address (tcp://HOST:PORT), or None.
    """

    def __init__(
        self,
        message: str = "not the leader",
        *,
        leader_hint: int | None = None,
        leader_address: str | None = None,
    ) -> None:
        super().__init__(message)
        self.leader_hint = leader_hint
        self.leader_address = leader_address


class UnknownOutcomeError(JosefineError):
    """No answer arrived in time: the command may or may not have applied.

    Retrying with the same (client id, sequence number) is safe; the session
    table makes a retried write apply exactly once.
    """


class UnavailableError(JosefineError):
    """No node could serve the request (unreachable, or no leader/quorum)."""


class RejectedError(JosefineError):
    """The request is invalid and will fail however often it is retried."""


class BusyError(JosefineError):
    """The leader is over a flow-control limit; back off and retry."""


class AbortedError(JosefineError):
    """The command's block was on a branch that lost; it did not apply."""
