"""`run_failover`'s trial loop, over a fake launcher and fake clients (no processes).

The case that matters: a trial whose writer outlives its join (the cluster did not recover
within the wait). That writer must stop on its own trial's signal and keep to its own
client; if it picked up the next trial's, it would write through that client and could
time the next trial's failover with a stale start.
"""
from __future__ import annotations

import threading
import time
from types import SimpleNamespace
from typing import Any

import pytest

import josefine.bench.failover as failover
import josefine.client
import josefine.launch.cluster
from josefine.errors import JosefineError

pytestmark = pytest.mark.timeout(60)


class _FakeLauncher:
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.node_ids = [1, 2, 3]
        self.cluster_id = "fake"

    def start(self) -> None: ...

    def stop(self) -> None: ...

    def kill(self, node_id: int, sig: int) -> None: ...

    def address(self, i: int) -> str:
        return f"tcp://fake:{i}"

    def credentials(self) -> None:
        return None

    def node_config(self, i: int) -> SimpleNamespace:
        return SimpleNamespace(election_ticks=10, tick_ms=10)


class _FakeClient:
    """Records which threads write through it; `on_put` decides each write's fate."""

    def __init__(self, on_put: Any) -> None:
        self.on_put = on_put
        self.writers: list[threading.Thread] = []
        self._leader: str | None = "tcp://fake:1"

    def __enter__(self) -> _FakeClient:
        return self

    def __exit__(self, *exc: object) -> None: ...

    def put(self, key: str, value: str) -> None:
        if key == "fo":
            me = threading.current_thread()
            if me not in self.writers:
                self.writers.append(me)
            self.on_put(self, me)


def test_a_writer_left_behind_stays_with_its_own_trial(monkeypatch: pytest.MonkeyPatch) -> None:
    release_first = threading.Event()

    def first_trial(client: _FakeClient, me: threading.Thread) -> None:
        # No new leader ever answers: the trial's join gives up on this writer.
        release_first.wait(10)
        raise JosefineError("no leader")

    def second_trial(client: _FakeClient, me: threading.Thread) -> None:
        if me is not client.writers[0]:
            raise JosefineError("not my trial's writer")
        # Let the first trial's writer go on, and see where it goes: it ends (its trial's
        # stop is set) or it writes through this client.
        release_first.set()
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if not stale[0].is_alive() or len(client.writers) > 1:
                break
            time.sleep(0.01)
        client._leader = "tcp://fake:2"

    clients = [_FakeClient(first_trial), _FakeClient(second_trial)]
    stale: list[threading.Thread] = []
    made = iter(clients)

    def new_client(*args: Any, **kwargs: Any) -> _FakeClient:
        return next(made)

    class ShortJoin(threading.Thread):
        def join(self, timeout: float | None = None) -> None:
            super().join(0.3 if timeout is None else min(timeout, 0.3))
            if self.is_alive():
                stale.append(self)

    monkeypatch.setattr(josefine.launch.cluster, "Launcher", _FakeLauncher)
    monkeypatch.setattr(josefine.client, "Client", new_client)
    monkeypatch.setattr(josefine.client, "query_status",
                        lambda *a, **k: {"applied": [1, 1]})
    monkeypatch.setattr(failover, "_wait_leader", lambda *a, **k: 1)
    monkeypatch.setattr(failover, "free_port_block", lambda n: 20000)
    monkeypatch.setattr(failover, "threading",
                        SimpleNamespace(Event=threading.Event, Thread=ShortJoin))

    result = failover.run_failover(3, 2)

    assert len(stale) == 1, "the first trial's writer should have outlived its join"
    stale[0].join(10)
    assert not stale[0].is_alive(), "the first trial's writer never stopped"
    assert len(clients[1].writers) == 1, \
        f"the second trial's client was written through by {clients[1].writers}"
    assert len(result["samples_ms"]) == 1   # the second trial timed a failover, the first not
