"""Timer actor: turns wall time into the core's logical `Tick`s.

The core owns the (seeded) randomized election timeout in ticks, so this actor only keeps
the beat. A fire is dropped while the previous Tick is still unprocessed — a busy role
actor must not find a backlog of ticks that would expire its election timer at once.

Honestly described: this actor's mailbox receives nothing in normal operation. It is the
unit of ownership of the beat thread (started and joined with the actor, in the node's
start and stop order); its output is the `ticks` channel (josefine/runtime/channels.py).
"""
from __future__ import annotations

import logging
import threading

from josefine.actors.base import NodeActor
from josefine.runtime.channels import TickGate
from josefine.messages import Tick

log = logging.getLogger(__name__)


class TimerActor(NodeActor):
    def __init__(self, node_id, links, fatal, tick_ms: int, gate: TickGate) -> None:  # noqa: ANN001
        super().__init__(node_id, links, fatal)
        self.interval = tick_ms / 1000.0
        self.gate = gate
        self._halt = threading.Event()
        self._thread: threading.Thread | None = None

    def on_start(self) -> None:
        self._thread = threading.Thread(target=self._beat, name=f"timer-{self.node_id}",
                                        daemon=True)
        self._thread.start()

    def _beat(self) -> None:
        tick = Tick()
        gate = self.gate
        while not self._halt.wait(self.interval):
            if gate.pending:
                gate.dropped += 1
                continue
            gate.pending = True
            self.tell(self.links.role, tick)

    def on_stop(self) -> None:
        self._halt.set()
        if self._thread is not None:
            self._thread.join(timeout=2)

    def on_receive(self, message):  # noqa: ANN001 - pykka hook
        log.warning("node %d: timer ignored %r", self.node_id, message)
