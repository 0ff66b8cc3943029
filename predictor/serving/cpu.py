"""CPU threads that suit a container: intra-op threads from the cgroup CPU limit, not the host's cores."""

from __future__ import annotations

import logging
import math
import os
from collections.abc import MutableMapping
from pathlib import Path

logger = logging.getLogger(__name__)


def cgroup_cpu_limit(root: Path = Path("/sys/fs/cgroup")) -> float | None:
    """The CPU limit of this container in cores (cgroup v2 cpu.max or v1 cfs quota), None when unlimited."""
    try:
        quota, period = (root / "cpu.max").read_text().split()[:2]
        return None if quota == "max" else int(quota) / int(period)
    except (OSError, ValueError):
        pass
    try:
        quota_us = int((root / "cpu" / "cpu.cfs_quota_us").read_text())
        period_us = int((root / "cpu" / "cpu.cfs_period_us").read_text())
        return None if quota_us <= 0 else quota_us / period_us
    except (OSError, ValueError):
        return None


def intra_op_threads(limit: float | None, available: int) -> int:
    """Threads for one forward pass: the CPU limit rounded up, never more than the cores we may run on.

    With passive OpenMP waiting (below) two threads on 2 cores served 130 req/s at concurrency 32
    against 100 for one (benchmarks/, idle machine); threads spinning without end served 43.
    """
    return max(1, min(available, math.ceil(limit))) if limit is not None else max(1, available)


OPENMP_WAITS = ("passive", "short-spin")
SHORT_SPIN_COUNT = "10000"


def openmp_wait(policy: str = "passive", environ: MutableMapping[str, str] | None = None) -> None:
    """How PyTorch's idle OpenMP threads wait; must run before torch is imported. Variables already set win.

    passive: they sleep at once. Spinning threads starve the event loop between forward passes, and a
    busy neighbour on the same cores makes every barrier wait for a descheduled thread: the safe default.
    short-spin: they spin 10,000 rounds (tens of microseconds: the gaps between the parallel regions of
    one forward pass), then sleep. Measured on 2 dedicated cores (benchmarks/): concurrency 1 p50 9–10 ms
    instead of 11.5–13, concurrency 32 145 req/s instead of 113–136; with one busy process on the same
    cores: 42 ms and 48 req/s instead of 14 ms and 96. For pods with dedicated cores (Kubernetes static
    CPU manager, Guaranteed QoS, integer CPUs).
    """
    env = os.environ if environ is None else environ
    if policy not in OPENMP_WAITS:
        raise ValueError(f"openmp wait {policy!r}: expected one of {', '.join(OPENMP_WAITS)}")
    env.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # sleep once the spin (if any) is over
    if policy == "short-spin":
        env.setdefault("GOMP_SPINCOUNT", SHORT_SPIN_COUNT)  # libgomp obeys it over OMP_WAIT_POLICY


def configure_threads(requested: int | None) -> int:
    """Set torch's intra-op threads (and one inter-op thread: one model, one forward at a time)."""
    import torch

    available = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    threads = requested or intra_op_threads(cgroup_cpu_limit(), available)
    torch.set_num_threads(threads)
    try:
        torch.set_num_interop_threads(1)
    except RuntimeError:  # already set, or parallel work has started
        pass
    spin = os.environ.get("GOMP_SPINCOUNT")
    waiting = f"spin {spin} rounds, then sleep" if spin else os.environ.get("OMP_WAIT_POLICY", "libgomp default")
    logger.info("torch intra-op threads: %d (cores available: %d); idle OpenMP threads: %s", threads, available,
                waiting)
    return threads
