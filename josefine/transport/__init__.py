"""Transport: the msgpack codec (`codec`), ZeroMQ sockets (`zmq_transport`), fault
injection (`faults`) and the client-side connection (`client_conn`).

Nothing here imports `actors/` or `raft/` (STYLE 3.1).
"""
