"""`josefine bench --failover`: how long clients wait for a new leader, over repeated trials
on a fresh durable cluster.

Unplanned: the leader is killed (SIGKILL); timed from the kill to the first write committed
by its successor, so it includes an election timeout, the election and one commit.

Planned (`planned=True`): the leader is stopped as an operator stops it (SIGTERM through
`Launcher.stop_node`); a leader hands leadership to its most caught-up voter before it
exits (`Node.hand_over_leadership`), so no election timeout is waited out. Timed from the
SIGTERM to the first write committed by the successor. The trials alternate, one of each
kind in turn, so both see the same machine and the same cluster.

Result (the keys `josefine bench --failover --json` prints under "failover"): the unplanned
trials at the top level, as always: "trials", "samples_ms", "median_ms", "min_ms",
"max_ms", "election_timeout_ms", "median_in_election_timeouts"; with `planned`, also
"planned": {"samples_ms", "median_ms", "min_ms", "max_ms", "median_in_election_timeouts",
"stopped": [leader id per trial], "successors": [id of the node that committed the first
write after it, per trial], "handed_to": [the id the stopped leader's log says it handed
leadership to, or null, per trial]}. A trial in which no successor committed within
`TRIAL_WAIT_S` has no sample (and null in "successors").
"""
from __future__ import annotations

import re
import signal
import statistics
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from josefine.bench.runner import _wait_leader
from josefine.launch.ports import free_port_block

if TYPE_CHECKING:
    from josefine.client import Client

TRIAL_WAIT_S = 60.0
"""Longest wait in one trial for the successor's first write."""

_HANDED = re.compile(rb"handed leadership to node (\d+)")


@dataclass
class Trial:
    """One failover trial."""

    took_ms: float | None
    """From the signal to the successor's first committed write; None: none within
    `TRIAL_WAIT_S`."""
    leader: int
    successor: int | None
    handed_to: int | None = None
    """Planned trials: whom the stopped leader's log says it handed leadership to."""


def run_failover(nodes: int, trials: int, progress: Callable[[float], None] | None = None,
                 planned: bool = False) -> dict[str, Any]:
    """`trials` leader kills, and with `planned` as many planned stops (interleaved), on one
    fresh durable cluster of `nodes`; the dict the module docstring describes."""
    from josefine.launch.cluster import Launcher
    kills: list[Trial] = []
    stops: list[Trial] = []
    steps = trials * (2 if planned else 1)
    with tempfile.TemporaryDirectory(prefix="josefine-failover-") as d:
        launcher = Launcher(nodes, Path(d), free_port_block(nodes), out=None)
        launcher.start()
        try:
            addrs = {i: launcher.address(i) for i in launcher.node_ids}
            cfg = launcher.node_config(launcher.node_ids[0])
            et_ms = cfg.election_ticks * cfg.tick_ms
            for t in range(trials):
                for kind in (False, True) if planned else (False,):
                    (stops if kind else kills).append(_trial(launcher, addrs, t, planned=kind))
                    if progress:
                        progress((len(kills) + len(stops)) / steps)
        finally:
            launcher.stop()
    out: dict[str, Any] = {"trials": trials, **_stats(kills, et_ms),
                           "election_timeout_ms": et_ms}
    out["median_in_election_timeouts"] = out.pop("in_election_timeouts")
    if planned:
        stats = _stats(stops, et_ms)
        stats["median_in_election_timeouts"] = stats.pop("in_election_timeouts")
        out["planned"] = {**stats, "stopped": [s.leader for s in stops],
                          "successors": [s.successor for s in stops],
                          "handed_to": [s.handed_to for s in stops]}
    return out


def _stats(trials: list[Trial], et_ms: float) -> dict[str, Any]:
    samples = [t.took_ms for t in trials if t.took_ms is not None]
    med = statistics.median(samples) if samples else float("nan")
    return {"samples_ms": [round(x, 1) for x in samples], "median_ms": round(med, 1),
            "min_ms": round(min(samples), 1) if samples else None,
            "max_ms": round(max(samples), 1) if samples else None,
            "in_election_timeouts": round(med / et_ms, 2)}


def _trial(launcher: Any, addrs: dict[int, str], t: int, planned: bool) -> Trial:
    """One failover: SIGKILL of the leader, or with `planned` its graceful stop."""
    from josefine.client import Client, query_status
    leader = _wait_leader(addrs, launcher.cluster_id, launcher.credentials(), timeout=60)
    # everyone up and caught up before the next kill
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            sts = [query_status(a, launcher.cluster_id, 0.5, credentials=launcher.credentials())
                   for a in addrs.values()]
        except Exception:
            time.sleep(0.1)
            continue
        if len({tuple(s["applied"]) for s in sts}) == 1:
            break
        time.sleep(0.1)
    log_path = launcher.log_path(leader) if planned else None
    offset = log_path.stat().st_size if log_path is not None and log_path.exists() else 0
    stopper: threading.Thread | None = None
    with Client(addrs, launcher.cluster_id, timeout=30, request_timeout=0.05,
                credentials=launcher.credentials()) as c:
        c.put("warm", str(t))
        stop = threading.Event()
        first: list[float] = []
        t_signal = time.monotonic()
        if planned:
            # stop_node returns once the process has exited (hand-over, snapshot, stop);
            # the writer runs meanwhile.
            stopper = threading.Thread(target=launcher.stop_node, args=(leader,), daemon=True)
            stopper.start()
        else:
            launcher.kill(leader, signal.SIGKILL)
        w = threading.Thread(target=_write_until_new_leader,
                             args=(c, stop, addrs[leader], t, first), daemon=True)
        w.start()
        w.join(TRIAL_WAIT_S)
        stop.set()
        successor = (next((i for i, a in addrs.items() if a == c._leader), None)
                     if first else None)
    trial = Trial(None if not first else (first[0] - t_signal) * 1000, leader, successor)
    if stopper is not None and log_path is not None:
        stopper.join(TRIAL_WAIT_S)
        trial.handed_to = _handed_to(log_path, offset)
        launcher.start_node(leader)   # back for the next trial (a killed one restarts itself)
    return trial


def _handed_to(log_path: Path, offset: int) -> int | None:
    """The node a stopped leader's log, from `offset` on, says it handed leadership to."""
    try:
        with open(log_path, "rb") as f:
            f.seek(offset)
            m = _HANDED.search(f.read())
    except OSError:
        return None
    return int(m.group(1)) if m else None


def _write_until_new_leader(c: Client, stop: threading.Event, old_leader: str, trial: int,
                            first: list[float]) -> None:
    """Write until a write is answered by a node other than `old_leader`; note when in `first`.

    Everything it touches comes in as arguments, none from the trial loop's variables: a
    writer still running after its trial gave up on it (join timed out) must stop on its own
    trial's `stop`, and must not write through, or time, the next trial's client.
    """
    from josefine.errors import JosefineError
    n = 0
    while not stop.is_set():
        n += 1
        try:
            c.put("fo", f"{trial}-{n}")
        except JosefineError:
            continue
        if not first and c._leader != old_leader:
            first.append(time.monotonic())
            return
