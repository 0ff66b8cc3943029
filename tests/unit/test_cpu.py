"""CPU set-up for a container: threads from the cgroup limit, and how idle OpenMP threads wait."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from predictor.serving.cpu import SHORT_SPIN_COUNT, cgroup_cpu_limit, intra_op_threads, openmp_wait


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
def test_threads_follow_the_limit_not_the_host(limit: float | None, available: int, expected: int) -> None:
    assert intra_op_threads(limit, available) == expected


def test_passive_waiting_is_the_default() -> None:
    env: dict[str, str] = {}
    openmp_wait("passive", env)
    assert env == {"OMP_WAIT_POLICY": "PASSIVE"}


def test_short_spin_spins_then_sleeps() -> None:
    env: dict[str, str] = {}
    openmp_wait("short-spin", env)
    assert env == {"OMP_WAIT_POLICY": "PASSIVE", "GOMP_SPINCOUNT": SHORT_SPIN_COUNT}


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
    done = _serve_missing_model("--openmp_wait", "short-spin")
    assert done.returncode == 1  # no model there; the thread set-up comes first
    assert f"idle OpenMP threads: spin {SHORT_SPIN_COUNT} rounds, then sleep" in done.stderr, done.stderr
    default = _serve_missing_model()
    assert "idle OpenMP threads: PASSIVE" in default.stderr, default.stderr


def test_a_bad_policy_in_the_environment_is_a_usage_error() -> None:
    done = _serve_missing_model(env={"PREDICTOR_OPENMP_WAIT": "spin-forever"})
    assert done.returncode == 2 and "spin-forever" in done.stderr and "Traceback" not in done.stderr
