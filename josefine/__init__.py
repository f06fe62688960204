"""Josefine: Chained Raft consensus as an actor system.

Public API: `Node` (run a node's actors in this process), `Client` (talk to a cluster),
`NodeConfig`, `StateMachine` (protocol) and the default `KVStateMachine`.
"""
from __future__ import annotations

import logging

from josefine.actors.node import Node
from josefine.client import Client
from josefine.config import NodeConfig
from josefine.fsm.api import StateMachine
from josefine.fsm.kv import KVStateMachine

Config = NodeConfig

__all__ = ["Node", "Client", "NodeConfig", "Config", "StateMachine", "KVStateMachine"]

logging.getLogger(__name__).addHandler(logging.NullHandler())
