"""CPU set-up for a container: threads from the cgroup limit, and how idle OpenMP threads wait."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from predictor.serving.cpu import (
    SHORT_SPIN_COUNT,
    LoneBatchThreads,
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
        (8, {"workers": 2}, WorkerPlan(2, 4, 8, "requested")),  # minWorkers / --model_workers
        (2, {"workers": 1}, WorkerPlan(1, 2, 2, "requested")),  # TorchServe's minWorkers: 1 as it was
        (3, {"workers": 8}, WorkerPlan(8, 1, 3, "requested")),  # more workers than cores: one thread each
        (8, {"threads": 2}, WorkerPlan(4, 2, 8, "2 thread(s) each")),  # --intra_op_threads alone
        (8, {"workers": 2, "threads": 1}, WorkerPlan(2, 1, 8, "requested")),
        (8, {"workers": 4, "gpu": True}, WorkerPlan(1, 8, 8, "GPU")),  # GPU: one worker whatever is asked
        (8, {"compiled": True}, WorkerPlan(1, 8, 8, "torch.compile")),
    ],
)
def test_worker_plan(cores: int, kwargs: dict[str, object], expected: WorkerPlan) -> None:
    assert plan_workers(cores, **kwargs) == expected  # type: ignore[arg-type]


def test_a_lone_batch_tries_both_counts_then_keeps_the_faster() -> None:
    lone = LoneBatchThreads(own=1, every=2, explore_every=4)
    assert lone.choose() == 1
    lone.record(1, 0.008)
    assert lone.choose() == 2
    lone.record(2, 0.006)
    picks = [lone.choose() for _ in range(12)]
    assert picks.count(2) == 9 and picks.count(1) == 3  # every 4th lone batch explores the slower count


def test_a_slowed_down_team_gives_way_and_comes_back() -> None:
    lone = LoneBatchThreads(own=1, every=2, explore_every=4)
    lone.record(1, 0.008)
    lone.record(2, 0.006)
    for _ in range(12):  # a neighbour now keeps a core busy: the two-thread team waits at every barrier
        lone.record(2, 0.040)
    assert [lone.choose() for _ in range(3)] == [1, 1, 1]
    for _ in range(12):  # the neighbour left: the explorations see fast two-thread passes again
        lone.record(2, 0.006)
    assert [lone.choose() for _ in range(4)].count(2) == 3  # and the fourth explores one thread again


def test_one_count_is_no_choice() -> None:
    lone = LoneBatchThreads(own=2, every=2)
    assert {lone.choose() for _ in range(10)} == {2}


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
