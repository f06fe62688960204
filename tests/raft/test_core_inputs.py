"""The typed vocabulary of the core's answers: outcomes and events carry `OutcomeKind` /
`EventKind`, which still compare equal to the strings that the actors and the simulation
test against.
"""
from __future__ import annotations

from harness import Network, make_leader, new_core

from josefine.chain.block import Command
from josefine.messages import (AppendBlocks, Propose, ReadIndex, Status, TransferLeadership,
                               VoteReq)
from josefine.raft.core import Role
from josefine.raft.ready import EventKind, OutcomeKind
from josefine.types import GENESIS_ID

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
