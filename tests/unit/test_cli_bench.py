"""`python -m predictor bench`: help, flags handed to the benchmark's own parser, a missing extra (exit 2)."""

from __future__ import annotations

import ast
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
    """(cwd, env) where `predictor` is a plain copy of the package, as a wheel installs it, away from the
    source checkout (no tests/, no pyproject.toml next to it)."""
    root = tmp_path_factory.mktemp("wheel-like")
    site = root / "site-packages"
    shutil.copytree(REPO / "predictor", site / "predictor", ignore=shutil.ignore_patterns("__pycache__"))
    work = root / "work"
    work.mkdir()
    env = {**os.environ, "PYTHONPATH": str(site)}
    probe = subprocess.run([sys.executable, "-c", "import predictor; print(predictor.__file__)"],
                           cwd=work, env=env, capture_output=True, text=True, timeout=TIMEOUT_S, check=True)
    assert Path(probe.stdout.strip()).is_relative_to(site), "the copy must be the predictor that runs"
    return work, env


def bench_without(module: str, *args: str) -> subprocess.CompletedProcess[str]:
    """`python -m predictor bench ARGS` where `module` cannot be imported (the extra not installed)."""
    program = (f"import sys; sys.modules[{module!r}] = None; from predictor.serving.cli import main; "
               f"raise SystemExit(main(['bench', *{list(args)!r}]))")
    return subprocess.run([sys.executable, "-c", program], check=False, cwd=REPO, capture_output=True,
                          text=True, timeout=TIMEOUT_S, stdin=subprocess.DEVNULL)


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
    assert "usage: python -m predictor.bench.run" in bad_type.stderr
    assert "argument --duration: invalid float value: 'soon'" in bad_type.stderr
    # A well-formed flag whose value the benchmark checks after parsing: it arrived intact.
    bad_section = predictor("bench", "--quick", "--only", "limit,nosuch")
    assert bad_section.returncode == 1
    assert "--only: unknown section(s) ['nosuch']" in bad_section.stderr
    # --help after another flag is the benchmark's own help, not ours.
    own_help = predictor("bench", "--quick", "--help")
    assert own_help.returncode == 0, own_help.stderr
    assert own_help.stdout.startswith("usage: python -m predictor.bench.run")
    assert "examples:" not in own_help.stdout


def test_runs_from_another_directory_of_an_editable_checkout(tmp_path: Path) -> None:
    result = predictor("bench", "--only", "nosuch", cwd=tmp_path)
    assert result.returncode == 1
    assert "--only: unknown section(s) ['nosuch']" in result.stderr


def test_runs_from_an_installed_copy_of_the_package(wheel_like_site: tuple[Path, dict[str, str]]) -> None:
    # The benchmark ships in the package with its corpus: no source checkout needed.
    cwd, env = wheel_like_site
    result = predictor("bench", "--only", "nosuch", cwd=cwd, env=env)
    assert result.returncode == 1, result.stderr
    assert "--only: unknown section(s) ['nosuch']" in result.stderr
    corpus = subprocess.run([sys.executable, "-c", "from predictor.bench.corpus import load_corpus; "
                                                   "print(len(load_corpus()))"],
                            cwd=cwd, env=env, capture_output=True, text=True, timeout=TIMEOUT_S, check=True)
    assert int(corpus.stdout) >= 100


@pytest.mark.parametrize("module", ["matplotlib", "psutil", "aiohttp"])
def test_a_missing_bench_dependency_exits_2_naming_the_extra(module: str) -> None:
    result = bench_without(module, "--quick")
    assert result.returncode == 2
    assert result.stdout == ""
    [line] = result.stderr.splitlines()
    assert line.startswith(f"predictor bench: the benchmark needs {module!r}")
    assert "pip install 'predictor[bench]'" in line


def test_help_still_works_without_the_bench_extra() -> None:
    result = bench_without("matplotlib", "--help")
    assert result.returncode == 0
    assert "examples:\n  python -m predictor bench --quick" in result.stdout
    assert "the benchmark's flags:" not in result.stdout
    assert "predictor[bench]" in result.stderr


def test_serving_imports_neither_the_benchmark_nor_its_plotting() -> None:
    # (psutil and aiohttp come with kserve itself)
    program = ("import sys; from predictor.serving import cli, server; "
               "cli.build_parser().parse_args(['serve', '--model_name', 'm']); "
               "print(sorted(m for m in sys.modules if m.split('.')[0] in ('benchmarks', 'matplotlib') "
               "or m.startswith('predictor.bench')))")
    result = subprocess.run([sys.executable, "-c", program], cwd=REPO, capture_output=True, text=True,
                            timeout=TIMEOUT_S, check=True)
    assert result.stdout.strip() == "[]"


def test_the_package_neither_imports_a_top_level_benchmarks_nor_edits_sys_path() -> None:
    offenders = []
    for path in sorted((REPO / "predictor").rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) and node.level == 0 else [])
            if any(n.split(".")[0] == "benchmarks" for n in names):
                offenders.append(f"{path.relative_to(REPO)}:{node.lineno} imports benchmarks")
            if isinstance(node, ast.Attribute) and node.attr == "path" and \
                    isinstance(node.value, ast.Name) and node.value.id == "sys":
                offenders.append(f"{path.relative_to(REPO)}:{node.lineno} uses sys.path")
    assert offenders == []
