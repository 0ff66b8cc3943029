"""CPU set-up for a container: threads from the cgroup limit, and how idle OpenMP threads wait."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from predictor.serving.cpu import (
    SHORT_SPIN_COUNT,
    UncontendedThreadPolicy,
    WorkerPlan,
    cgroup_cpu_limit,
    openmp_wait,
    plan_workers,
    usable_cores,
)


def test_cgroup_v2_limit(tmp_path: Path) -> None:
    (tmp_path / "cpu.max").write_text("150000 100000\n")
    assert cgroup_cpu_limit(tmp_path) == 1.5
    (tmp_path / "cpu.max").write_text("max 100000\n")
    assert cgroup_cpu_limit(tmp_path) is None


def test_cgroup_v1_limit(tmp_path: Path) -> None:
    (tmp_path / "cpu").mkdir()
    (tmp_path / "cpu" / "cpu.cfs_quota_us").write_text("200000\n")
    (tmp_path / "cpu" / "cpu.cfs_period_us").write_text("100000\n")
    assert cgroup_cpu_limit(tmp_path) == 2.0
    (tmp_path / "cpu" / "cpu.cfs_quota_us").write_text("-1\n")
    assert cgroup_cpu_limit(tmp_path) is None


def test_no_cgroup_files_means_no_limit(tmp_path: Path) -> None:
    assert cgroup_cpu_limit(tmp_path) is None


@pytest.mark.parametrize("limit,available,expected", [(None, 8, 8), (1.5, 8, 2), (0.2, 8, 1), (16.0, 4, 4)])
def test_cores_follow_the_limit_not_the_host(limit: float | None, available: int, expected: int) -> None:
    assert usable_cores(limit, available) == expected


def test_passive_sleeps_at_once() -> None:
    env: dict[str, str] = {}
    openmp_wait("passive", env)
    assert env == {"OMP_WAIT_POLICY": "PASSIVE"}


def test_short_spin_is_the_default_and_spins_then_sleeps() -> None:
    env: dict[str, str] = {}
    openmp_wait(environ=env)
    assert env == {"OMP_WAIT_POLICY": "PASSIVE", "GOMP_SPINCOUNT": SHORT_SPIN_COUNT}


@pytest.mark.parametrize(
    "cores,kwargs,expected",
    [
        (2, {}, WorkerPlan(2, 1, 2, "default")),  # every core its own forward pass
        (4, {}, WorkerPlan(4, 1, 4, "default")),
        (16, {}, WorkerPlan(4, 4, 16, "default")),  # above 4 cores: workers of 4 threads
        (6, {}, WorkerPlan(2, 3, 6, "default")),
        (1, {}, WorkerPlan(1, 1, 1, "default")),
        (8, {"workers": 2}, WorkerPlan(2, 4, 8, "requested")),  # --model_workers
        (2, {"workers": 1}, WorkerPlan(1, 2, 2, "requested")),  # --model_workers 1, never minWorkers
        (3, {"workers": 8}, WorkerPlan(8, 1, 3, "requested")),  # more workers than cores: one thread each
        (8, {"threads": 2}, WorkerPlan(4, 2, 8, "2 thread(s) each")),  # --intra_op_threads alone
        (8, {"workers": 2, "threads": 1}, WorkerPlan(2, 1, 8, "requested")),
        (8, {"workers": 4, "gpu": True}, WorkerPlan(1, 8, 8, "GPU")),  # GPU: one worker whatever is asked
        (8, {"compiled": True}, WorkerPlan(1, 8, 8, "torch.compile")),
    ],
)
def test_worker_plan(cores: int, kwargs: dict[str, object], expected: WorkerPlan) -> None:
    assert plan_workers(cores, **kwargs) == expected  # type: ignore[arg-type]


def run_trial(policy: UncontendedThreadPolicy, seconds: dict[int, list[float]]) -> None:
    """Answer the chooser's trial picks with these times (round-robin per count)."""
    used = {t: 0 for t in seconds}
    while policy.in_trial:
        threads = policy.choose()
        policy.record(threads, seconds[threads][used[threads] % len(seconds[threads])])
        used[threads] += 1


def test_a_trial_alternates_both_counts_then_the_faster_is_kept() -> None:
    policy = UncontendedThreadPolicy(own=1, every=2, trial=8, keep=20)
    picks = [policy.choose() for _ in range(4)]
    assert picks == [1, 2, 1, 2]  # alternating: both meet the same texts and the same neighbours
    for threads in picks:
        policy.record(threads, {1: 0.008, 2: 0.006}[threads])
    run_trial(policy, {1: [0.008], 2: [0.006]})
    assert policy.medians == {1: 0.008, 2: 0.006} and policy.choice == 2
    assert [policy.choose() for _ in range(20)] == [2] * 20
    assert policy.in_trial  # and then it compares again


def test_the_median_decides_not_one_long_request() -> None:
    policy = UncontendedThreadPolicy(own=1, every=2, trial=8)
    # Two threads are faster on most texts; one very long text on two threads does not change that.
    run_trial(policy, {1: [0.008, 0.009, 0.008, 0.010], 2: [0.006, 0.050, 0.006, 0.007]})
    assert policy.choice == 2


def test_a_neighbour_ends_the_keep_early_and_one_thread_wins() -> None:
    policy = UncontendedThreadPolicy(own=1, every=2, trial=8, keep=1000)
    run_trial(policy, {1: [0.008], 2: [0.006]})
    assert policy.choice == 2
    for _ in range(3):  # a busy process arrived: the two-thread team waits at every barrier
        policy.record(policy.choose(), 0.040)
    assert not policy.in_trial  # a few slow batches could be long texts
    policy.record(policy.choose(), 0.040)
    assert policy.in_trial  # four in a row: the median of the last half-trial is far above the winning one
    run_trial(policy, {1: [0.012], 2: [0.040]})
    assert policy.choice == 1


def test_passive_waiting_makes_one_thread_win() -> None:
    policy = UncontendedThreadPolicy(own=1, every=2, trial=8)
    run_trial(policy, {1: [0.0083], 2: [0.0097]})  # measured: sleeping helpers cost more than they give
    assert policy.choice == 1


def test_one_count_is_no_choice() -> None:
    policy = UncontendedThreadPolicy(own=2, every=2)
    assert {policy.choose() for _ in range(10)} == {2}


def test_variables_the_operator_set_win() -> None:
    env = {"OMP_WAIT_POLICY": "ACTIVE", "GOMP_SPINCOUNT": "500"}
    openmp_wait("short-spin", env)
    assert env == {"OMP_WAIT_POLICY": "ACTIVE", "GOMP_SPINCOUNT": "500"}


def test_an_unknown_policy_is_refused() -> None:
    with pytest.raises(ValueError, match="short-spin"):
        openmp_wait("spin-forever", {})


def _serve_missing_model(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")}
    return subprocess.run([sys.executable, "-m", "predictor", "--model_name", "m", "--model_dir", "/nonexistent/m",
                           *args], capture_output=True, text=True, timeout=120, check=False,
                          env={**clean, **(env or {})})


def test_the_flag_reaches_the_server_before_torch_starts() -> None:
    done = _serve_missing_model()  # short-spin by default
    assert done.returncode == 1  # no model there; the thread set-up comes first
    assert f"idle OpenMP threads: spin {SHORT_SPIN_COUNT} rounds, then sleep" in done.stderr, done.stderr
    passive = _serve_missing_model(env={"PREDICTOR_OPENMP_WAIT": "passive"})
    assert "idle OpenMP threads: PASSIVE" in passive.stderr, passive.stderr


def test_a_bad_policy_in_the_environment_is_a_usage_error() -> None:
    done = _serve_missing_model(env={"PREDICTOR_OPENMP_WAIT": "spin-forever"})
    assert done.returncode == 2 and "spin-forever" in done.stderr and "Traceback" not in done.stderr
