"""The core never imports the serving stack, and importing it does no work."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
CORE = ["predictor", "predictor.handler", "predictor.tasks", "predictor.config", "predictor.artifacts",
        "predictor.batching", "predictor.devices", "predictor.errors"]  # fmt: skip
PROBE = """
import json, logging, sys
sys.argv = ["predictor", "--definitely-not-a-flag"]  # importing must not read argv
for name in {modules!r}:
    __import__(name)
import torch
print(json.dumps({{
    "serving": sorted(m for m in ("kserve", "fastapi", "starlette", "uvicorn") if m in sys.modules),
    "ours": sorted(m for m in sys.modules if m.startswith("predictor.serving") or m == "predictor.explain"),
    "captum": "captum" in sys.modules,
    "root_handlers": len(logging.getLogger().handlers),
    "cuda_initialized": torch.cuda.is_initialized(),
}}))
"""


@pytest.fixture(scope="module")
def imported() -> dict[str, object]:
    """Import the core in a fresh interpreter and report what that pulled in."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "PYTHONPATH": str(ROOT)}
    done = subprocess.run(
        [sys.executable, "-c", PROBE.format(modules=CORE)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    report: dict[str, object] = json.loads(done.stdout.strip().splitlines()[-1])
    return report


def test_core_import_leaves_kserve_fastapi_starlette_unloaded(imported: dict[str, object]) -> None:
    assert imported["serving"] == []


def test_core_imports_neither_the_serving_package_nor_captum(imported: dict[str, object]) -> None:
    assert imported["ours"] == []
    assert imported["captum"] is False  # explanations import it lazily


def test_import_sets_up_no_logging_and_probes_no_device(imported: dict[str, object]) -> None:
    assert imported["root_handlers"] == 0
    assert imported["cuda_initialized"] is False
