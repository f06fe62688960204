"""State machines: the protocol, the built-in key-value machine, client sessions, applier."""
from josefine.fsm.api import DigestStateMachine, SnapshotStateMachine, StateMachine
from josefine.fsm.applier import Applier, SnapshotInfo
from josefine.fsm.kv import KVStateMachine, kv_cas, kv_delete, kv_get, kv_put
from josefine.fsm.sessions import SessionTable

__all__ = ["StateMachine", "SnapshotStateMachine", "DigestStateMachine", "Applier",
           "SnapshotInfo", "KVStateMachine", "kv_put", "kv_delete", "kv_cas", "kv_get",
           "SessionTable"]
