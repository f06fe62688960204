"""Moved to josefine/runtime/waiters.py (client intake lives in the runtime now)."""
from josefine.runtime.waiters import RemoteAnswer, Waiter, Waiters

__all__ = ["RemoteAnswer", "Waiter", "Waiters"]
