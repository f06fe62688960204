"""CPU and memory of a process from /proc (Linux): the benchmark report and node status."""
from __future__ import annotations

import os

_CLK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float | None:
    """user + system CPU time of `pid` so far (children not included)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / _CLK
    except (OSError, IndexError, ValueError):
        return None


def rss_kib(pid: int) -> tuple[int | None, int | None]:
    """(current RSS, peak RSS) in KiB."""
    cur = peak = None
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    cur = int(line.split()[1])
                elif line.startswith("VmHWM:"):
                    peak = int(line.split()[1])
    except OSError:
        pass
    return cur, peak


def rss_bytes(pid: int) -> int | None:
    """Current RSS in bytes, or None where /proc cannot tell."""
    cur = rss_kib(pid)[0]
    return None if cur is None else cur * 1024
