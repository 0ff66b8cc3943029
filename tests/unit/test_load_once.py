"""`predictor serve` resolves the model once: the .mar is unpacked and model-config.yaml read before the port
opens, and the handler's load() uses that result instead of doing both again."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from models import build_mar

from predictor import artifacts
from predictor.serving import cli, server


def test_serve_unpacks_the_mar_and_reads_the_config_once(model_dirs: dict[str, Path], tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    store = tmp_path / "model-store"
    build_mar(store, model_dirs["sequence_classification"], serialized_file="model.safetensors")
    calls: Counter[str] = Counter()
    unpack, read_config = artifacts._unpack_mar, artifacts.load_model_config

    def counted_unpack(*args: Any, **kwargs: Any) -> Path:
        calls["unpack"] += 1
        return unpack(*args, **kwargs)

    def counted_config(*args: Any, **kwargs: Any) -> Any:
        calls["config"] += 1
        return read_config(*args, **kwargs)

    monkeypatch.setattr(artifacts, "_unpack_mar", counted_unpack)
    monkeypatch.setattr(artifacts, "load_model_config", counted_config)
    monkeypatch.setenv("PREDICTOR_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr("predictor.serving.cpu.configure_threads", lambda plan: None)  # torch's threads stay
    loaded = []

    def run_loads_only(self: server.PredictorServer, app: Any, generation: bool) -> int:
        """What the server's loader thread does once the port is open; no port is opened here."""
        calls["before load"] = calls["unpack"] + calls["config"]
        self.model.handler.load()
        loaded.append(self.model.handler)
        return 0

    monkeypatch.setattr(server.PredictorServer, "run", run_loads_only)
    args = cli.build_parser().parse_args(["serve", "--model_name", "m", "--model_dir", str(store),
                                          "--ts_grpc_port", "0", "--ts_management_port", "0"])
    assert cli.serve(args) == 0
    [handler] = loaded
    assert handler.ready
    assert handler.config.handler.mode.value == "sequence_classification"
    assert calls == {"unpack": 1, "config": 1, "before load": 2}
    assert handler.cache_dir == tmp_path / "cache"


def test_the_cache_dir_default_is_one_rule(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from predictor.handler import GeneralizedHandler

    monkeypatch.setenv("PREDICTOR_CACHE_DIR", str(tmp_path / "here"))
    assert GeneralizedHandler(tmp_path).cache_dir == artifacts.default_cache_dir({"PREDICTOR_CACHE_DIR":
                                                                                  str(tmp_path / "here")})
    monkeypatch.setenv("PREDICTOR_CACHE_DIR", "")
    assert GeneralizedHandler(tmp_path).cache_dir == artifacts.default_cache_dir({})
    assert artifacts.default_cache_dir({}).name == "predictor-cache"
