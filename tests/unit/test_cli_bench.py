"""`python -m predictor bench`: help, flags handed to the benchmark's own parser, the wheel case (exit 2)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
TIMEOUT_S = 120


def predictor(*args: str, cwd: Path = REPO, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """`python -m predictor ARGS` in a real process."""
    return subprocess.run([sys.executable, "-m", "predictor", *args], check=False, cwd=cwd,
                          env=env or dict(os.environ), capture_output=True, text=True, timeout=TIMEOUT_S,
                          stdin=subprocess.DEVNULL)


@pytest.fixture(scope="module")
def wheel_like_site(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, str]]:
    """(cwd, env) where `predictor` is a plain copy of the package, as a wheel installs it, and no
    `benchmarks` package is anywhere on the path (the editable install maps only `predictor`)."""
    root = tmp_path_factory.mktemp("wheel-like")
    site = root / "site-packages"
    shutil.copytree(REPO / "predictor", site / "predictor", ignore=shutil.ignore_patterns("__pycache__"))
    work = root / "work"
    work.mkdir()
    env = {**os.environ, "PYTHONPATH": str(site)}
    probe = subprocess.run(
        [sys.executable, "-c", ("import importlib.util, predictor; "
                                "print(predictor.__file__); print(importlib.util.find_spec('benchmarks'))")],
        cwd=work, env=env, capture_output=True, text=True, timeout=TIMEOUT_S, check=True)
    package_file, benchmarks_spec = probe.stdout.split()
    assert Path(package_file).is_relative_to(site), "the copy must be the predictor that runs"
    assert benchmarks_spec == "None", "benchmarks must not be importable in this set-up"
    return work, env


def test_help_shows_examples_and_the_benchmarks_own_flags() -> None:
    result = predictor("bench", "--help")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("usage: predictor bench")
    assert "examples:\n  python -m predictor bench --quick" in result.stdout
    benchmark_help = result.stdout.split("the benchmark's flags:", 1)[1]
    for flag in ("--quick", "--out", "--only", "--duration", "--inprocess-duration", "--wait-idle"):
        assert flag in benchmark_help


def test_bench_is_listed_among_the_subcommands() -> None:
    result = predictor("--help")
    assert result.returncode == 0, result.stderr
    assert "{serve,demo,demo-model,import-mar,bench}" in result.stdout
    assert "run the benchmark" in result.stdout


def test_flags_reach_the_benchmarks_parser() -> None:
    # A value the benchmark's argparse rejects: its own usage line, its own message, argparse's exit 2.
    bad_type = predictor("bench", "--quick", "--duration", "soon")
    assert bad_type.returncode == 2
    assert "usage: python -m benchmarks.run" in bad_type.stderr
    assert "argument --duration: invalid float value: 'soon'" in bad_type.stderr
    # A well-formed flag whose value the benchmark checks after parsing: it arrived intact.
    bad_section = predictor("bench", "--quick", "--only", "limit,nosuch")
    assert bad_section.returncode == 1
    assert "--only: unknown section(s) ['nosuch']" in bad_section.stderr
    # --help after another flag is the benchmark's own help, not ours.
    own_help = predictor("bench", "--quick", "--help")
    assert own_help.returncode == 0, own_help.stderr
    assert own_help.stdout.startswith("usage: python -m benchmarks.run")
    assert "examples:" not in own_help.stdout


def test_runs_from_another_directory_of_an_editable_checkout(tmp_path: Path) -> None:
    # `benchmarks` is not on sys.path outside the checkout; bench finds it next to the predictor package.
    result = predictor("bench", "--only", "nosuch", cwd=tmp_path)
    assert result.returncode == 1
    assert "--only: unknown section(s) ['nosuch']" in result.stderr


def test_without_the_benchmarks_package_exit_2_with_one_line(wheel_like_site: tuple[Path, dict[str, str]]) -> None:
    cwd, env = wheel_like_site
    result = predictor("bench", "--quick", cwd=cwd, env=env)
    assert result.returncode == 2
    assert result.stdout == ""
    [line] = result.stderr.splitlines()
    assert line.startswith("predictor bench: the benchmarks package is not importable here")
    assert "from a clone of the repository" in line and "pip install -e" in line


def test_help_still_works_without_the_benchmarks_package(wheel_like_site: tuple[Path, dict[str, str]]) -> None:
    cwd, env = wheel_like_site
    result = predictor("bench", "--help", cwd=cwd, env=env)
    assert result.returncode == 0
    assert "examples:\n  python -m predictor bench --quick" in result.stdout
    assert "the benchmark's flags:" not in result.stdout
    assert "not importable here" in result.stderr
