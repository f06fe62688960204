"""FaultRules: partitions, one-way loss, drop probabilities, delay, admin round trip."""
from __future__ import annotations

import pytest

from josefine.transport.faults import FaultRules, LinkRule

pytestmark = pytest.mark.timeout(60)


def test_no_rules_means_a_healthy_network():
    r = FaultRules(seed=1)
    assert not r.active
    assert r.outbound(2) == 0.0 and r.inbound(2)


def test_partition_blocks_both_directions_until_healed():
    r = FaultRules(seed=1)
    r.partition([2, 3])
    assert r.active
    assert r.outbound(2) is None and not r.inbound(3)
    assert r.outbound(4) == 0.0 and r.inbound(4)
    r.heal([2])
    assert r.outbound(2) == 0.0 and r.inbound(2)
    assert r.outbound(3) is None
    r.heal()
    assert not r.active


def test_one_way_loss():
    r = FaultRules(seed=1)
    r.block_outbound([2])
    assert r.outbound(2) is None and r.inbound(2)
    r.heal()
    r.block_inbound(["3"])  # ids may come as strings from JSON admin requests
    assert r.outbound(3) == 0.0 and not r.inbound(3)
    assert r.blocked_inbound == {3} and r.blocked_outbound == frozenset()


def test_drop_probability_is_seeded_and_roughly_right():
    def run(seed):
        r = FaultRules(seed=seed)
        r.set_link(2, drop_out=0.3, drop_in=0.5)
        return [r.outbound(2) is None for _ in range(2000)], [r.inbound(2) for _ in range(2000)]

    out, inb = run(7)
    assert run(7) == (out, inb)
    assert 0.25 < sum(out) / len(out) < 0.35
    assert 0.45 < sum(inb) / len(inb) < 0.55
    assert run(8) != (out, inb)


def test_default_link_rule_and_per_peer_override():
    r = FaultRules(seed=1)
    r.set_link(None, drop_out=1.0)
    r.set_link(3, delay_ms=250)
    assert r.outbound(2) is None
    assert r.outbound(3) == pytest.approx(0.25)
    r.clear_link(None)
    assert r.outbound(2) == 0.0
    r.clear_link(3)
    assert not r.active


def test_dict_round_trip_and_load_in_place():
    r = FaultRules(seed=42)
    r.partition([2])
    r.block_outbound([5])
    r.set_link(3, drop_out=0.1, drop_in=0.2, delay_ms=30)
    r.set_link(None, delay_ms=5)
    d = r.to_dict()
    assert d == {"seed": 42, "blocked_out": [2, 5], "blocked_in": [2],
                 "links": {"3": {"drop_out": 0.1, "drop_in": 0.2, "delay_ms": 30},
                           "*": {"drop_out": 0.0, "drop_in": 0.0, "delay_ms": 5}}}
    assert FaultRules.from_dict(d).to_dict() == d
    other = FaultRules(seed=1)
    other.load(d)
    assert other.to_dict() == d and other.active
    other.load({})  # empty: a healthy network again (seed kept)
    assert not other.active and other.seed == 42


@pytest.mark.parametrize("bad", [
    {"links": {"2": {"drop_out": 1.5}}},
    {"links": {"2": {"drop_out": True}}},
    {"links": {"2": {"delay_ms": -1}}},
    {"links": {"2": {"jitter": 1}}},
    {"links": {"x": {}}},
    {"links": [1]},
    {"blocked_in": ["a"]},
    {"blocked_out": [-1]},
    {"seed": "1"},
    {"drop_client_replies": -1},
    {"drop_client_replies": True},
    {"partitions": [1]},
    [1, 2],
])
def test_load_validates_before_changing_anything(bad):
    r = FaultRules(seed=1)
    r.partition([9])
    before = r.to_dict()
    with pytest.raises(ValueError):
        r.load(bad)
    assert r.to_dict() == before


def test_clear_removes_everything():
    r = FaultRules(seed=1)
    r.partition([2])
    r.set_link(None, drop_in=0.5)
    r.clear()
    assert not r.active and r.to_dict()["links"] == {} and r.inbound(2)


def test_client_replies_are_dropped_as_many_times_as_asked_then_flow_again():
    r = FaultRules(seed=1)
    assert r.client_reply()
    r.drop_client_replies(2)
    assert r.active and r.to_dict()["drop_client_replies"] == 2
    assert FaultRules.from_dict(r.to_dict()).to_dict() == r.to_dict()
    assert [r.client_reply() for _ in range(3)] == [False, False, True]
    assert not r.active and "drop_client_replies" not in r.to_dict()
    r.drop_client_replies(1)
    r.clear()
    assert r.client_reply()
    with pytest.raises(ValueError):
        r.drop_client_replies(-1)


def test_link_rule_validation():
    with pytest.raises(ValueError):
        LinkRule(drop_in=-0.1)
    assert LinkRule().is_noop()
