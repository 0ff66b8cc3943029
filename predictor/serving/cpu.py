"""CPU threads that suit a container: model workers and intra-op threads from the cgroup CPU limit, not the host's cores."""

from __future__ import annotations

import logging
import math
import os
import statistics
from collections import deque
from collections.abc import MutableMapping
from dataclasses import dataclass
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


def usable_cores(limit: float | None, available: int) -> int:
    """The cores this process may keep busy: the CPU limit rounded up, never more than it may run on."""
    return max(1, min(available, math.ceil(limit))) if limit is not None else max(1, available)


CORES_PER_WORKER_ABOVE_4 = 4


@dataclass(frozen=True)
class WorkerPlan:
    """How many forward passes run side by side, and the torch threads each one uses."""

    workers: int
    threads: int  # intra-op threads of each model worker
    all_cores_threads: int  # of the all-cores thread (explanations, uncontended batches): every usable core
    reason: str


def plan_workers(cores: int, *, workers: int | None = None, threads: int | None = None, gpu: bool = False,
                 compiled: bool = False) -> WorkerPlan:
    """Model workers (threads sharing one copy of the weights) and the torch threads of each.

    By default every core runs its own forward pass, up to 4 cores; above that, workers of 4 threads
    (a bound on how slow an uncontended request on a big machine may get). On CPU, one-thread passes
    side by side beat one pass on every core, whose threads wait for each other at every operation
    (predictor/bench/README.md, "Figures behind the queue and the worker plan"); an uncontended request
    may still use every core, on the queue's all-cores thread (UncontendedThreadPolicy). A GPU or a
    torch.compile'd model gets one worker (GPU kernels queue on one stream anyway; compiled graphs
    are not called from several threads at once).
    """
    if gpu or compiled:
        return WorkerPlan(1, threads or cores, threads or cores, "GPU" if gpu else "torch.compile")
    if workers is None:
        if threads:
            workers, reason = max(1, cores // threads), f"{threads} thread(s) each"
        else:
            workers = cores if cores <= 4 else math.ceil(cores / CORES_PER_WORKER_ABOVE_4)
            reason = "default"
    else:
        reason = "requested"
    return WorkerPlan(workers, threads or max(1, cores // workers), cores, reason)


OPENMP_WAITS = ("passive", "short-spin")
SHORT_SPIN_COUNT = "10000"


def openmp_wait(policy: str = "short-spin", environ: MutableMapping[str, str] | None = None) -> None:
    """How PyTorch's idle OpenMP threads wait; must run before torch is imported. Variables already set win.

    OpenMP teams exist only where a pass runs on several threads: the all-cores thread (an
    uncontended request on every core, explanations) and workers of several threads on big machines.
    short-spin (default): they spin 10,000 rounds (the gaps between the parallel regions of one
    forward pass), then sleep. passive: they sleep at once and every parallel region pays a wake-up;
    it stays on offer for nodes where spinning loses to a busy neighbour. libgomp spins at most 100
    rounds, whatever is set here, once the process has more OpenMP threads than cores. The
    measurements are in predictor/bench/README.md, "Figures behind the queue and the worker plan".
    """
    env = os.environ if environ is None else environ
    if policy not in OPENMP_WAITS:
        raise ValueError(f"openmp wait {policy!r}: expected one of {', '.join(OPENMP_WAITS)}")
    env.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # sleep once the spin (if any) is over
    if policy == "short-spin":
        env.setdefault("GOMP_SPINCOUNT", SHORT_SPIN_COUNT)  # libgomp obeys it over OMP_WAIT_POLICY


class UncontendedThreadPolicy:
    """Torch threads for an uncontended batch (nothing else queued or computing): every core, or the
    worker's own share, whichever measures faster.

    Every core (on the queue's all-cores thread, the only one whose OpenMP team spans every core)
    pays when idle OpenMP threads spin briefly and loses when they sleep at once, or when another
    process keeps a core busy (every barrier of the pass then waits for a descheduled thread). So it
    is measured, not assumed, in trials: the next `trial` uncontended batches alternate between the
    two counts (so both meet the same texts and the same neighbours), the count with the lower median
    time per input wins, and it is used for the next `keep` uncontended batches. A new trial starts
    early when the winner's last `trial / 2` batches take `slower` times its trial median: a
    neighbour arrived. Medians, because request lengths vary more than the two counts differ.
    """

    def __init__(self, own: int, every: int, *, trial: int = 32, keep: int = 512, slower: float = 1.5) -> None:
        self.own = own
        self.every = every
        self.trial = trial
        self.keep = keep
        self.slower = slower
        self.choice = own
        self.medians: dict[int, float] = {}  # of the last trial: seconds per input, per thread count
        self._samples: dict[int, list[float]] = {own: [], every: []}
        self._recent: deque[float] = deque(maxlen=max(1, trial // 2))  # the winner's, since the trial
        self._trial_choices = 0
        self._kept = 0

    @property
    def in_trial(self) -> bool:
        """True while the two counts are being compared."""
        return self._kept <= 0

    def choose(self) -> int:
        """The thread count for the next uncontended batch."""
        if self.every <= self.own:
            return self.own
        if not self.in_trial:
            self._kept -= 1
            return self.choice
        self._trial_choices += 1
        return self.own if self._trial_choices % 2 else self.every

    def record(self, threads: int, seconds_per_input: float) -> None:
        """What an uncontended batch on `threads` threads took."""
        if self.every <= self.own:
            return
        if not self.in_trial:
            if threads == self.choice:
                self._recent.append(seconds_per_input)
                if (len(self._recent) == self._recent.maxlen
                        and statistics.median(self._recent) > self.slower * self.medians[self.choice]):
                    self._kept = 0  # much slower than when it won: compare again
            return
        samples = self._samples.setdefault(threads, [])
        samples.append(seconds_per_input)
        if all(len(self._samples[t]) >= self.trial // 2 for t in (self.own, self.every)):
            self.medians = {t: statistics.median(v) for t, v in self._samples.items()}
            self.choice = min((self.own, self.every), key=self.medians.__getitem__)
            self._samples = {self.own: [], self.every: []}
            self._recent.clear()
            self._trial_choices = 0
            self._kept = self.keep


def available_cores() -> int:
    """Cores this container may use: its CPU affinity, capped by the cgroup CPU limit."""
    available = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return usable_cores(cgroup_cpu_limit(), available)


def set_torch_threads(threads: int) -> None:
    """torch's intra-op threads for forward passes started from the calling thread.

    The count lives per thread (OpenMP's nthreads-var): each model worker and the explanation
    thread call this first, so their passes do not share one team.
    """
    import torch

    torch.set_num_threads(threads)


def configure_threads(plan: WorkerPlan) -> None:
    """Set up this (the loading) thread as a worker, and one inter-op thread; log the plan."""
    import torch

    set_torch_threads(plan.threads)  # also what ONNX Runtime's session takes at load
    try:
        torch.set_num_interop_threads(1)
    except RuntimeError:  # already set, or parallel work has started
        pass
    logger.info("model workers: %d of %d torch thread(s) each (%s), all-cores thread of %d "
                "(explanations, uncontended batches)",
                plan.workers, plan.threads, plan.reason, plan.all_cores_threads)


def openmp_waiting(environ: MutableMapping[str, str] | None = None) -> str:
    """How idle OpenMP threads wait, as the environment says (for the log)."""
    env = os.environ if environ is None else environ
    spin = env.get("GOMP_SPINCOUNT")
    return f"spin {spin} rounds, then sleep" if spin else env.get("OMP_WAIT_POLICY", "libgomp default")
