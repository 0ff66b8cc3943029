"""CPU threads that suit a container: intra-op threads from the cgroup CPU limit, not the host's cores."""

from __future__ import annotations

import logging
import math
import os
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
    against 100 for one (benchmarks/, idle machine); spinning threads served 43.
    """
    return max(1, min(available, math.ceil(limit))) if limit is not None else max(1, available)


def passive_openmp_wait() -> None:
    """Idle OpenMP threads sleep instead of spinning (unless OMP_WAIT_POLICY is set): spinning threads
    starve the event loop between forward passes. Must run before torch is imported."""
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


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
    logger.info("torch intra-op threads: %d (cores available: %d)", threads, available)
    return threads
