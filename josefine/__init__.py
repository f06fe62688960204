"""Josefine: Chained Raft consensus as an actor system."""
