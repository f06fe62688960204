"""Cluster membership: who votes, who only learns, and how one change is made
(docs/protocol.md A.12; thesis ch. 4, one server at a time).

A configuration is a set of members, each a voter or a learner, with the address peers and
clients dial. A CONFIG block carries the change that made it and the whole configuration
after it, so a node finds the configuration in force on any path by looking at the
highest CONFIG block on it (or, below that, at its snapshot's): nothing is ever computed
from a history of changes, and a head that leaves a dead branch reverts by itself.

The payload layout is fixed and binary, like command batches (block.py): it is covered
by the block's digest, so it must never change with a library. All big-endian:

    u8 version (1) | u8 op | u64 node | u32 member count |
    per member, in id order: u64 id | u8 role | u16 address length | address (UTF-8)
"""
from __future__ import annotations

import struct
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from enum import IntEnum

__all__ = ["ChangeOp", "Config", "ConfigChange", "ConfigChangeError", "Member", "MemberRole",
           "decode_config_block", "encode_config_block"]


class MemberRole(IntEnum):
    VOTER = 1
    LEARNER = 2


class ChangeOp(IntEnum):
    """What one CONFIG block does (the design's ChangeConfig.op)."""

    ADD_LEARNER = 1
    PROMOTE = 2
    REMOVE = 3
    BOOTSTRAP = 4   # never proposed: the starting configuration, for a snapshot's record


class ConfigChangeError(ValueError):
    """A change that cannot be made to this configuration; the message names why."""


@dataclass(frozen=True, slots=True)
class Member:
    id: int
    address: str
    role: MemberRole


@dataclass(frozen=True, slots=True)
class ConfigChange:
    op: ChangeOp
    node: int
    address: str = ""


@dataclass(frozen=True, slots=True)
class Config:
    """An immutable configuration; `members` in id order."""

    members: tuple[Member, ...]

    @classmethod
    def of(cls, voters: Iterable[int], addresses: Mapping[int, str] | None = None,
           learners: Iterable[int] = ()) -> Config:
        addr = addresses or {}
        ms = [Member(i, addr.get(i, ""), MemberRole.VOTER) for i in voters]
        ms += [Member(i, addr.get(i, ""), MemberRole.LEARNER) for i in learners]
        return cls(tuple(sorted(ms, key=lambda m: m.id)))

    @property
    def voters(self) -> frozenset[int]:
        return frozenset(m.id for m in self.members if m.role == MemberRole.VOTER)

    @property
    def learners(self) -> frozenset[int]:
        return frozenset(m.id for m in self.members if m.role == MemberRole.LEARNER)

    @property
    def ids(self) -> frozenset[int]:
        return frozenset(m.id for m in self.members)

    def member(self, node: int) -> Member | None:
        for m in self.members:
            if m.id == node:
                return m
        return None

    def addresses(self) -> dict[int, str]:
        return {m.id: m.address for m in self.members}

    def apply(self, change: ConfigChange) -> Config:
        """The configuration after `change`; ConfigChangeError (naming the problem) if it
        cannot be made. Every change moves at most one voter (thesis §4.1)."""
        node, op = change.node, change.op
        current = self.member(node)
        if op == ChangeOp.ADD_LEARNER:
            if current is not None:
                raise ConfigChangeError(f"node {node} is already a member "
                                        f"({current.role.name.lower()})")
            if not change.address:
                raise ConfigChangeError(f"adding node {node}: an address is needed")
            taken = [m.id for m in self.members if m.address == change.address]
            if taken:
                raise ConfigChangeError(f"address {change.address} is already node "
                                        f"{taken[0]}'s")
            new = self.members + (Member(node, change.address, MemberRole.LEARNER),)
        elif op == ChangeOp.PROMOTE:
            if current is None:
                raise ConfigChangeError(f"node {node} is not a member: add it as a learner "
                                        "first")
            if current.role == MemberRole.VOTER:
                raise ConfigChangeError(f"node {node} is already a voter")
            new = tuple(Member(m.id, m.address, MemberRole.VOTER) if m.id == node else m
                        for m in self.members)
        elif op == ChangeOp.REMOVE:
            if current is None:
                raise ConfigChangeError(f"node {node} is not a member")
            if current.role == MemberRole.VOTER and self.voters == {node}:
                raise ConfigChangeError(f"node {node} is the last voter: a cluster cannot "
                                        "remove its last voter")
            new = tuple(m for m in self.members if m.id != node)
        else:
            raise ConfigChangeError(f"{op!r} is not a change that can be proposed")
        return Config(tuple(sorted(new, key=lambda m: m.id)))


_HEAD = struct.Struct(">BBQI")
_MEMBER = struct.Struct(">QBH")
_VERSION = 1


def encode_config_block(change: ConfigChange, config: Config) -> bytes:
    """The payload of the CONFIG block that makes `change`, resulting in `config`."""
    parts = [_HEAD.pack(_VERSION, int(change.op), change.node, len(config.members))]
    for m in config.members:
        a = m.address.encode()
        parts.append(_MEMBER.pack(m.id, int(m.role), len(a)))
        parts.append(a)
    return b"".join(parts)


def decode_config_block(payload: bytes) -> tuple[ConfigChange, Config]:
    """Inverse of `encode_config_block`; ValueError on a malformed payload."""
    try:
        version, op, node, n = _HEAD.unpack_from(payload, 0)
        if version != _VERSION:
            raise ValueError(f"config block version {version}")
        off = _HEAD.size
        members = []
        for _ in range(n):
            mid, role, la = _MEMBER.unpack_from(payload, off)
            off += _MEMBER.size
            addr = payload[off:off + la].decode()
            if len(addr.encode()) != la:
                raise ValueError("truncated address")
            off += la
            members.append(Member(mid, addr, MemberRole(role)))
        change = ConfigChange(ChangeOp(op), node)
    except (struct.error, UnicodeDecodeError) as exc:
        raise ValueError(f"malformed config block: {exc}") from exc
    if off != len(payload):
        raise ValueError("trailing bytes after config block")
    ids = [m.id for m in members]
    if ids != sorted(set(ids)):
        raise ValueError("config block members are not in strict id order")
    return change, Config(tuple(members))
