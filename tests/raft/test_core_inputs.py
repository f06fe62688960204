"""The core's input union and the typed vocabulary of its answers.

`RaftCore.step` takes exactly `CoreInput`: each member reaches its own handler, and anything
else is refused with a TypeError before it can touch the core's state. The step matches on
the exact type (the fastest form), which mypy cannot check for exhaustiveness: the first two
tests here do it instead. Outcomes and events
carry `OutcomeKind` / `EventKind`, which still compare equal to the strings that the actors
and the simulation test against.
"""
from __future__ import annotations

import typing
from collections.abc import Callable
from typing import Any

import pytest
from harness import Network, make_leader, new_core

from josefine.chain.block import Command
from josefine.messages import (AppendBlocks, AppendResp, ChangeConfig, CoreInput,
                               ForwardPropose, ForwardProposeResp, Heartbeat, HeartbeatResp,
                               InstallSnapshot, InstallSnapshotResp, Persisted, PreVoteReq,
                               PreVoteResp, Propose, ReadIndex, ReadIndexReq, ReadIndexResp,
                               SnapshotStatus, SnapshotTaken, Status, Tick, TimeoutNow,
                               TransferLeadership, VoteReq, VoteResp)
from josefine.raft.core import RaftCore, Role
from josefine.raft.ready import EventKind, OutcomeKind
from josefine.types import GENESIS_ID

# One instance of every input (term 0, a fresh core's term) with the handler it must reach
# and the role the core must hold for that handler to run.
_P = {"src": 2, "dst": 1, "term": 0}
INPUTS: dict[type, tuple[Callable[[], Any], str, Role]] = {
    Tick: (lambda: Tick(), "_tick", Role.FOLLOWER),
    Propose: (lambda: Propose(commands=(Command("c", 1, b"x"),)), "_propose", Role.FOLLOWER),
    ReadIndex: (lambda: ReadIndex(read_id=7), "_read_index", Role.FOLLOWER),
    Persisted: (lambda: Persisted(head=GENESIS_ID), "_on_persisted", Role.FOLLOWER),
    TransferLeadership: (lambda: TransferLeadership(target=2), "_transfer", Role.FOLLOWER),
    AppendBlocks: (lambda: AppendBlocks(**_P, prev=GENESIS_ID, blocks=(), commit=GENESIS_ID,
                                        seq=1), "_on_append", Role.FOLLOWER),
    AppendResp: (lambda: AppendResp(**_P, success=True, match=GENESIS_ID), "_on_append_resp",
                 Role.LEADER),
    Heartbeat: (lambda: Heartbeat(**_P, commit=None, seq=1), "_on_heartbeat", Role.FOLLOWER),
    HeartbeatResp: (lambda: HeartbeatResp(**_P, seq=1), "_on_heartbeat_resp", Role.LEADER),
    VoteReq: (lambda: VoteReq(**_P, head=GENESIS_ID), "_on_vote_req", Role.FOLLOWER),
    VoteResp: (lambda: VoteResp(**_P, granted=True), "_on_vote_resp", Role.CANDIDATE),
    PreVoteReq: (lambda: PreVoteReq(**_P, head=GENESIS_ID), "_on_prevote_req", Role.FOLLOWER),
    PreVoteResp: (lambda: PreVoteResp(**_P, granted=False), "_on_vote_resp",
                  Role.PRECANDIDATE),
    TimeoutNow: (lambda: TimeoutNow(**_P), "_on_timeout_now", Role.FOLLOWER),
    InstallSnapshot: (lambda: InstallSnapshot(**_P, last=GENESIS_ID, last_digest=bytes(32),
                                              voters=(1, 2, 3)),
                      "_on_install_snapshot", Role.FOLLOWER),
    InstallSnapshotResp: (lambda: InstallSnapshotResp(**_P, success=True, match=GENESIS_ID),
                          "_on_install_snapshot_resp", Role.LEADER),
    SnapshotTaken: (lambda: SnapshotTaken(last=GENESIS_ID, digest=bytes(32)),
                    "_on_snapshot_taken", Role.FOLLOWER),
    SnapshotStatus: (lambda: SnapshotStatus(peer=2, last=GENESIS_ID, ok=False),
                     "_on_snapshot_status", Role.FOLLOWER),
    ChangeConfig: (lambda: ChangeConfig(op=1, node=4, address="tcp://h:4"),
                   "_change_config", Role.FOLLOWER),
    ReadIndexReq: (lambda: ReadIndexReq(**_P, read_id=3), "_on_read_index_req", Role.LEADER),
    ReadIndexResp: (lambda: ReadIndexResp(**_P, read_id=3, index=GENESIS_ID),
                    "_on_read_index_resp", Role.FOLLOWER),
    ForwardPropose: (lambda: ForwardPropose(**_P, fwd_id=1, commands=b""),
                     "_on_forward_propose", Role.LEADER),
    ForwardProposeResp: (lambda: ForwardProposeResp(**_P, fwd_id=1, status=Status.BUSY,
                                                    refused=(("c", 1),)),
                         "_on_forward_propose_resp", Role.FOLLOWER),
}


def test_the_table_below_covers_exactly_the_input_union():
    assert set(INPUTS) == set(typing.get_args(CoreInput))


@pytest.mark.parametrize("typ", list(INPUTS), ids=lambda t: t.__name__)
def test_every_core_input_reaches_its_own_handler(typ, monkeypatch):
    make, handler, role = INPUTS[typ]
    calls: list[tuple] = []

    def record(self: RaftCore, *args: Any) -> None:
        calls.append(args)

    monkeypatch.setattr(RaftCore, handler, record)
    core = new_core(1)
    core.role = role
    core.step(make())
    assert len(calls) == 1, f"{typ.__name__} did not reach {handler}"


@pytest.mark.parametrize("typ", [AppendResp, HeartbeatResp, VoteResp, PreVoteResp,
                                 InstallSnapshotResp],
                         ids=lambda t: t.__name__)
def test_answers_reach_their_handler_only_in_the_role_that_asked(typ, monkeypatch):
    """A leader's AppendResp reaching a follower (it stepped down since) is dropped, and so is
    a vote for a candidacy that has ended: current term or not."""
    make, handler, role = INPUTS[typ]
    calls: list[tuple] = []
    monkeypatch.setattr(RaftCore, handler, lambda self, *args: calls.append(args))
    for other in Role:
        if other is role:
            continue
        core = new_core(1)
        core.role = other
        core.step(make())
    assert calls == [], f"{typ.__name__} reached {handler} outside {role.name}"


class _Impostor:
    """Looks like a peer message from a newer term, but is no member of CoreInput."""

    src, dst, term = 2, 1, 9


@pytest.mark.parametrize("thing", [_Impostor(), object(), ("tick",), None],
                         ids=["peer-lookalike", "object", "tuple", "None"])
def test_anything_outside_the_union_is_refused_before_it_changes_the_core(thing):
    core = new_core(1)
    before = (core.term, core.voted_for, core.role, core.leader, core.elapsed, core.head)
    with pytest.raises(TypeError, match=f"not a core input: {type(thing).__name__}"):
        core.step(thing)
    assert (core.term, core.voted_for, core.role, core.leader, core.elapsed, core.head) == before


def test_outcomes_carry_outcome_kinds_that_still_equal_the_old_strings():
    core = new_core(1)   # a follower: everything is refused, each with its kind
    r = core.step(Propose(commands=(Command("c", 1, b"x"),)))
    r2 = core.step(ReadIndex(read_id=5))
    r3 = core.step(TransferLeadership(target=2))
    got = [(o.kind, o.key, o.status) for o in r.outcomes + r2.outcomes + r3.outcomes]
    assert got == [(OutcomeKind.PROPOSE, ("c", 1), Status.NOT_LEADER),
                   (OutcomeKind.READ, 5, Status.NOT_LEADER),
                   (OutcomeKind.TRANSFER, 2, Status.NOT_LEADER)]
    for (kind, _, _), old in zip(got, ["propose", "read", "transfer"]):
        assert type(kind) is OutcomeKind and kind == old and kind in {old} and str(kind) == old


def test_events_carry_event_kinds_that_still_equal_the_old_strings():
    net = Network(3)
    net.elect(1)
    r_lead = make_leader(new_core(1, check_quorum=False))
    core = new_core(2)
    r_vote = core.step(VoteReq(src=3, dst=2, term=1, head=GENESIS_ID))
    events = list(r_lead.events) + list(r_vote.events) + [ev for _, ev in net.events]
    kinds = {ev[0] for ev in events}
    assert {EventKind.CAMPAIGN, EventKind.BECAME_LEADER, EventKind.VOTED,
            EventKind.COMMIT} <= kinds
    assert all(type(ev[0]) is EventKind for ev in events)
    assert (EventKind.VOTED, 1, 3) in r_vote.events
    commit = next(ev for ev in events if ev[0] == EventKind.COMMIT)
    assert commit[1] is Role.LEADER and commit[1] == int(Role.LEADER)
    assert ("became_leader", 1) in r_lead.events   # old-style comparisons keep working
    assert all(ev[0] in {"campaign", "voted", "became_leader", "commit"} for ev in events)


def test_a_follower_reports_its_ack_as_an_acked_event():
    leader = new_core(1)
    r = make_leader(leader)
    blocks_to_2 = [m for m in r.eager if type(m) is AppendBlocks and m.dst == 2]
    follower = new_core(2)
    r2 = follower.step(blocks_to_2[0])
    acked = [ev for ev in r2.events if ev[0] == EventKind.ACKED]
    assert acked == [(EventKind.ACKED, leader.term, leader.head)]
    assert type(acked[0][0]) is EventKind
