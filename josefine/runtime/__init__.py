"""The node runtime: the one executor of the core's Ready contract (docs/protocol.md A.3).

It sits between the actors (threads, sockets, disk) and the pure core, and owns no thread,
socket or clock itself, so the production actors and the seeded simulation run the very
same code: `executor` decides, `channels` names every hand-over between threads.
"""
