"""How busy the machine is with work that is not this benchmark's: every figure depends on it."""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass

logger = logging.getLogger(__name__)

QUIET_CORES = 0.1  # other work below this many cores counts as a quiet machine


def load_average() -> list[float] | None:
    """1, 5 and 15 minute load averages (they count this benchmark's own processes too)."""
    return [round(x, 2) for x in os.getloadavg()] if hasattr(os, "getloadavg") else None


@dataclass(frozen=True)
class CpuSnapshot:
    """CPU seconds the whole machine and this benchmark's process tree had used at one instant."""

    wall: float
    busy_s: float
    own_s: float


def _busy_seconds() -> float:
    """Non-idle CPU seconds of all cores since boot, from /proc/stat."""
    with open("/proc/stat", encoding="ascii") as stat:
        fields = [int(x) for x in stat.readline().split()[1:]]
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    busy = sum(fields[:8]) - idle  # user nice system idle iowait irq softirq steal
    return busy / os.sysconf("SC_CLK_TCK")


def _own_seconds() -> float:
    """CPU seconds of this process, its finished children and its live descendants (psutil)."""
    import psutil

    me = psutil.Process()
    times = me.cpu_times()
    total = times.user + times.system + times.children_user + times.children_system
    for child in me.children(recursive=True):
        try:
            child_times = child.cpu_times()
        except psutil.Error:  # it ended meanwhile; its time moves to children_* once reaped
            continue
        total += child_times.user + child_times.system
    return float(total)


def snapshot() -> CpuSnapshot | None:
    """Now, or None where /proc/stat or psutil is missing."""
    try:
        return CpuSnapshot(wall=time.monotonic(), busy_s=_busy_seconds(), own_s=_own_seconds())
    except (OSError, ModuleNotFoundError, ValueError, IndexError):
        return None


def foreign_cores(start: CpuSnapshot | None, end: CpuSnapshot | None) -> float | None:
    """Cores kept busy by other work between two snapshots (0 on a quiet machine)."""
    if start is None or end is None or end.wall <= start.wall:
        return None
    foreign = (end.busy_s - start.busy_s) - (end.own_s - start.own_s)
    return round(max(0.0, foreign) / (end.wall - start.wall), 2)


def wait_for_quiet(max_wait_s: float, threshold_cores: float = QUIET_CORES,
                   window_s: float = 5.0) -> float | None:
    """Wait (at most max_wait_s) until other work uses under threshold_cores; the last reading."""
    deadline = time.monotonic() + max_wait_s
    reading = None
    while True:
        start = snapshot()
        time.sleep(window_s)
        reading = foreign_cores(start, snapshot())
        if reading is None or reading < threshold_cores or time.monotonic() >= deadline:
            return reading
        logger.info("waiting for the machine to settle (other work uses %.2f cores)", reading)
