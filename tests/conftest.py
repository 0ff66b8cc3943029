"""Shared fixtures: tiny models per mode, built once per session; offline mode before any import."""

from __future__ import annotations

import atexit
import os
import shutil
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
if "PREDICTOR_BACKEND_CACHE_DIR" not in os.environ:
    # backend auto exports and times each model once: one cache for the session and the servers it starts.
    os.environ["PREDICTOR_BACKEND_CACHE_DIR"] = tempfile.mkdtemp(prefix="predictor-backends-")
    atexit.register(shutil.rmtree, os.environ["PREDICTOR_BACKEND_CACHE_DIR"], ignore_errors=True)
sys.path.insert(0, str(Path(__file__).parent))

import pytest  # noqa: E402

from models import build_encoder, build_gpt2  # noqa: E402
from zygote import Zygote  # noqa: E402

from predictor.handler import GeneralizedHandler  # noqa: E402


@pytest.fixture(scope="session")
def model_dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """One tiny model directory per mode."""
    root = tmp_path_factory.mktemp("models")
    return {
        "sequence_classification": build_encoder(root / "seq", "sequence_classification"),
        "token_classification": build_encoder(root / "tok", "token_classification", label_format="label_list"),
        "question_answering": build_encoder(root / "qa", "question_answering", max_length=48, doc_stride=16),
        "text_generation": build_gpt2(root / "gen"),
    }


@pytest.fixture(scope="session")
def handlers(model_dirs: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> dict[str, GeneralizedHandler]:
    """A loaded handler per mode, shared by the tests that only read from it."""
    cache = tmp_path_factory.mktemp("cache")
    loaded = {}
    for mode, path in model_dirs.items():
        handler = GeneralizedHandler(path, cache_dir=cache)
        handler.load()
        loaded[mode] = handler
    return loaded


@pytest.fixture(scope="session")
def server_zygote(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Zygote]:
    """The process that forks the shared server fleets with torch, transformers and kserve imported once."""
    zygote = Zygote(tmp_path_factory.mktemp("zygote") / "zygote.log")
    try:
        yield zygote
    finally:
        zygote.stop()
