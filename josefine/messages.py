"""Every typed message of the system: the vocabulary (docs/protocol.md A.4).

Peer messages travel between nodes and client messages between a `Client` and a node;
`josefine.codec` gives each a stable numeric tag and derives its wire field map from the
dataclass below, so a field added here travels (and is checked on decode) by its declared
type. Every class is listed in exactly one of `WIRE_MESSAGE_TYPES` and
`LOCAL_MESSAGE_TYPES` (tests/test_codec.py holds new classes to that). Local inputs never
leave a process: they are how time, client requests and storage completions reach the
pure core.

Every peer message carries `src`, `dst` and `term`. Sequences are tuples; payloads bytes.
Classes are plain `@dataclass(frozen=True, slots=True, kw_only=True)` so that type
checkers see their fields and constructors.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from enum import IntEnum
from typing import Any, Union

from josefine.chain.block import Block, Command
from josefine.types import BlockId

# --------------------------------------------------------------------------- peer messages


@dataclass(frozen=True, slots=True, kw_only=True)
class PreVoteReq:
    """Would you vote for me? Changes no state anywhere (thesis §9.6). term = sender's + 1."""

    src: int
    dst: int
    term: int
    head: BlockId


@dataclass(frozen=True, slots=True, kw_only=True)
class PreVoteResp:
    """Pre-vote answer; a grant carries the request's term, a refusal the voter's."""

    src: int
    dst: int
    term: int
    granted: bool


@dataclass(frozen=True, slots=True, kw_only=True)
class VoteReq:
    """Candidate asks for a vote (Raft §5.2, §5.4.1); head decides up-to-dateness."""

    src: int
    dst: int
    term: int
    head: BlockId
    transfer: bool = False
    """Set only after TimeoutNow: bypasses the follower lease (thesis §3.10)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class VoteResp:
    src: int
    dst: int
    term: int
    granted: bool


@dataclass(frozen=True, slots=True, kw_only=True)
class AppendBlocks:
    """Replicate a contiguous run of blocks whose first parent is `prev` (may be empty)."""

    src: int
    dst: int
    term: int
    prev: BlockId
    blocks: tuple[Block, ...]
    commit: BlockId
    """Leader's commit capped at the tail of this message (A.8)."""
    seq: int


@dataclass(frozen=True, slots=True, kw_only=True)
class AppendResp:
    """Follower's answer to AppendBlocks; a success is sent only after the blocks are synced."""

    src: int
    dst: int
    term: int
    success: bool
    seq: int = 0
    match: BlockId | None = None
    rejected_prev: BlockId | None = None
    hint: tuple[tuple[int, int], ...] = ()
    """(term, max height of that term) above the follower's commit, newest first."""
    commit: BlockId | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class Heartbeat:
    src: int
    dst: int
    term: int
    commit: BlockId | None
    seq: int


@dataclass(frozen=True, slots=True, kw_only=True)
class HeartbeatResp:
    src: int
    dst: int
    term: int
    seq: int


@dataclass(frozen=True, slots=True, kw_only=True)
class TimeoutNow:
    """Leader tells an up-to-date target to campaign at once (leadership transfer)."""

    src: int
    dst: int
    term: int


@dataclass(frozen=True, slots=True, kw_only=True)
class InstallSnapshot:
    """Leader -> follower: "your next block lies below my base; take my snapshot" (A.14).

    The core's form of the message: the leader's core emits it (as an eager message) and
    the runtime streams the snapshot file whose base is `last` as `SnapshotChunk`s; the
    follower's runtime hands it to the core only once the whole file is durable on its
    disk. It never travels as such, so it is a local type."""

    src: int
    dst: int
    term: int
    last: BlockId
    """The snapshot's base: the last block whose effects it holds."""
    last_digest: bytes
    voters: tuple[int, ...]
    """The voters in force at `last`."""
    config: Any = None
    """The whole membership at `last` (a `josefine.raft.membership.Config`), when known."""


@dataclass(frozen=True, slots=True, kw_only=True)
class InstallSnapshotResp:
    """Follower's answer; a success leaves only after snapshot, base and head are durable,
    and counts as an AppendResp whose match is `last` (A.14)."""

    src: int
    dst: int
    term: int
    success: bool
    match: BlockId | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class SnapshotChunk:
    """One piece of a snapshot file on its way to a follower (runtime to runtime: the
    cores see only the whole snapshot, as `InstallSnapshot`). `offset` is where `data`
    starts in the file; `done` marks the last chunk."""

    src: int
    dst: int
    term: int
    last: BlockId
    last_digest: bytes
    offset: int
    data: bytes
    done: bool = False


@dataclass(frozen=True, slots=True, kw_only=True)
class SnapshotChunkAck:
    """Flow control for `SnapshotChunk`: `offset` is the next byte the receiver expects
    (after a refusal, 0: the sender starts over); `ok` False means the transfer failed."""

    src: int
    dst: int
    term: int
    last: BlockId
    offset: int
    ok: bool


@dataclass(frozen=True, slots=True, kw_only=True)
class ReadIndexReq:
    """Follower -> leader: "give me a read index" for a client read at the follower (A.10).

    `read_id` is the follower's own number for the request, unique per incarnation of its
    core, so an answer to an earlier request can never be taken for this one's."""

    src: int
    dst: int
    term: int
    read_id: int


@dataclass(frozen=True, slots=True, kw_only=True)
class ReadIndexResp:
    """Leader -> follower: `index` is a commit the leader held after the request arrived,
    confirmed by a quorum's heartbeat answers; None refuses (not leader any more)."""

    src: int
    dst: int
    term: int
    read_id: int
    index: BlockId | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class ForwardPropose:
    """Follower -> leader: client commands the follower received (A.8). `commands` is
    their block-payload encoding; (client_id, seq) travel unchanged, so the leader's
    sessions dedupe retries wherever they entered."""

    src: int
    dst: int
    term: int
    fwd_id: int
    commands: bytes


@dataclass(frozen=True, slots=True, kw_only=True)
class ForwardProposeResp:
    """Answer to a `ForwardPropose` whose commands were not appended: `refused` names
    them (empty: all of them), `status` is what the follower relays (NOT_LEADER or BUSY,
    which promise "never appended"; UNKNOWN from a node that may have led this term).
    Accepted commands get no answer: the follower answers them when it applies them."""

    src: int
    dst: int
    term: int
    fwd_id: int
    status: Status
    refused: tuple[tuple[str, int], ...] = ()
    leader_hint: int | None = None


PeerMessage = Union[PreVoteReq, PreVoteResp, VoteReq, VoteResp, AppendBlocks, AppendResp,
                    Heartbeat, HeartbeatResp, TimeoutNow, InstallSnapshot, InstallSnapshotResp,
                    ReadIndexReq, ReadIndexResp, ForwardPropose, ForwardProposeResp]
PEER_MESSAGE_TYPES: tuple[type, ...] = (PreVoteReq, PreVoteResp, VoteReq, VoteResp, AppendBlocks,
                                        AppendResp, Heartbeat, HeartbeatResp, TimeoutNow,
                                        InstallSnapshotResp, SnapshotChunk, SnapshotChunkAck,
                                        ReadIndexReq, ReadIndexResp, ForwardPropose,
                                        ForwardProposeResp)
"""Peer messages that travel between nodes (`InstallSnapshot` travels as chunks)."""
LEADER_MESSAGES: tuple[type, ...] = (AppendBlocks, Heartbeat, TimeoutNow, InstallSnapshot)


# ------------------------------------------------------------------------- client messages


class Status(IntEnum):
    """Outcome of a proposal or read (A.8)."""

    OK = 0
    NOT_LEADER = 1
    """Never appended; safe to retry elsewhere (leader_hint may say where)."""
    BUSY = 2
    """Over the uncommitted backlog limit; back off and retry."""
    UNKNOWN = 3
    """The leader stepped down before the outcome was known; retry with the same seq."""
    ABORTED = 4
    """The committed path holds a different block at the proposal's height: definitely not applied."""
    REJECTED = 5
    """Malformed or unacceptable request (bad command, unknown target)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class ClientPropose:
    """A client's write; (client_id, seq) make retries apply once."""

    client_id: str
    seq: int
    command: bytes
    any_node: bool = False
    """A follower may forward it to the leader and relay the answer. Without it a
    follower that knows the leader answers NOT_LEADER with that hint, so a client that
    talks to the leader anyway saves the extra hop on every later write."""


@dataclass(frozen=True, slots=True, kw_only=True)
class ClientProposeResp:
    client_id: str
    seq: int
    status: Status
    result: Any = None
    leader_hint: int | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class ClientRead:
    """A linearizable read, served through ReadIndex (A.10)."""

    client_id: str
    read_id: int
    query: bytes
    any_node: bool = False
    """Any node may serve it (a follower with the leader's read index, A.10); False
    keeps it at the leader: a follower answers NOT_LEADER with a hint."""


@dataclass(frozen=True, slots=True, kw_only=True)
class ClientReadResp:
    client_id: str
    read_id: int
    status: Status
    result: Any = None
    leader_hint: int | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class ClientStatus:
    """Ask a node for its status dictionary."""

    client_id: str
    read_id: int = 0


@dataclass(frozen=True, slots=True, kw_only=True)
class ClientStatusResp:
    client_id: str
    read_id: int
    status: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True, kw_only=True)
class ClientTransfer:
    client_id: str
    read_id: int
    target: int


@dataclass(frozen=True, slots=True, kw_only=True)
class ClientAdmin:
    """Admin request, e.g. fault-injection rules; accepted only when enabled at start."""

    client_id: str
    read_id: int
    op: str
    args: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True, kw_only=True)
class ClientAdminResp:
    client_id: str
    read_id: int
    ok: bool
    result: Any = None
    error: str = ""


CLIENT_REQUEST_TYPES: tuple[type, ...] = (ClientPropose, ClientRead, ClientStatus,
                                          ClientTransfer, ClientAdmin)
CLIENT_RESPONSE_TYPES: tuple[type, ...] = (ClientProposeResp, ClientReadResp, ClientStatusResp,
                                           ClientAdminResp)
WIRE_MESSAGE_TYPES: tuple[type, ...] = (PEER_MESSAGE_TYPES + CLIENT_REQUEST_TYPES
                                        + CLIENT_RESPONSE_TYPES)
"""Every class that leaves a process; each has a tag in `josefine.codec.TAGS`."""


# --------------------------------------------------------------------------- local inputs


@dataclass(frozen=True, slots=True, kw_only=True)
class Tick:
    """One unit of logical time (A.1); the timer actor turns wall time into ticks."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Propose:
    """A batch of client commands to pack into one block (the role actor batches)."""

    commands: tuple[Command, ...]


@dataclass(frozen=True, slots=True, kw_only=True)
class ReadIndex:
    """Ask the core for a linearizable read point; read_id is opaque to the core."""

    read_id: Any
    at_follower: bool = True
    """A follower may serve it with the leader's read index (A.10); False: only the
    leader serves it (a follower answers NOT_LEADER with its hint)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Persisted:
    """Storage completion: everything up to this head is durable (leader self-ack, A.3)."""

    head: BlockId


@dataclass(frozen=True, slots=True, kw_only=True)
class TransferLeadership:
    target: int


@dataclass(frozen=True, slots=True, kw_only=True)
class ChangeConfig:
    """Admin: one membership change (`josefine.raft.membership.ChangeOp`: add a learner,
    promote a learner, remove a member), proposed by the leader as a CONFIG block."""

    op: int
    node: int
    address: str = ""


@dataclass(frozen=True, slots=True, kw_only=True)
class SnapshotTaken:
    """This node's snapshot whose base is `last` is durable on disk: the core may serve
    it to followers and compact its chain (A.14)."""

    last: BlockId
    digest: bytes


@dataclass(frozen=True, slots=True, kw_only=True)
class SnapshotStatus:
    """The runtime's report on streaming a snapshot to `peer`: `ok` False means the transfer
    failed (unreachable follower, missing file), so the leader probes again later."""

    peer: int
    last: BlockId
    ok: bool


CoreInput = Union[PeerMessage, Tick, Propose, ReadIndex, Persisted, TransferLeadership,
                  SnapshotTaken, SnapshotStatus, ChangeConfig]


# ------------------------------------------------------- actor messages (never on the wire)


@dataclass(frozen=True, slots=True, kw_only=True)
class Outbound:
    """Role/Chain -> Transport: peer messages to send, in order."""

    msgs: tuple


@dataclass(frozen=True, slots=True, kw_only=True)
class Nudge:
    """Something is waiting in the receiver's side queue (proposals, persist work)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class ApplyWork:
    """Chain -> Fsm: committed blocks to apply, then reads to serve, then outcomes."""

    blocks: tuple
    reads: tuple
    outcomes: tuple
    decoded: Any = None
    """BlockId -> the commands of that block as this node proposed them (Ready.decoded)."""
    restore: BlockId | None = None
    """Before `blocks`: replace the state machine by this node's snapshot whose base is
    this block (an installed snapshot, A.14)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class StatusQuery:
    """Ask the role actor for a status snapshot; `reply` is called with the dict."""

    reply: Any


@dataclass(frozen=True, slots=True, kw_only=True)
class ChainQuery:
    """Ask the role actor for a bounded description of its block tree (`josefine chain`);
    `reply` is called, on the role actor's thread, with `chainview.describe_core`'s dict."""

    last: int
    reply: Any


LOCAL_MESSAGE_TYPES: tuple[type, ...] = (Tick, Propose, ReadIndex, Persisted, TransferLeadership,
                                         SnapshotTaken, SnapshotStatus, InstallSnapshot,
                                         ChangeConfig,
                                         Outbound, Nudge, ApplyWork, StatusQuery, ChainQuery)
"""Every class that never leaves its process (the codec refuses to encode them)."""
