"""Fixtures of the zoo tests: every zoo folder built once per session (helpers live in tests/zoo_models.py)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from zoo_models import Zoo, build_zoo

sys.path.insert(0, str(Path(__file__).parents[1] / "http"))  # the HTTP tests' server launcher


@pytest.fixture(scope="session")
def zoo(tmp_path_factory: pytest.TempPathFactory) -> Zoo:
    """Every zoo folder, built once per session."""
    root = tmp_path_factory.mktemp("zoo")
    return Zoo(build_zoo(root), tmp_path_factory.mktemp("zoo-cache"))
