"""The checked-in TorchServe gRPC stubs are exactly what generate.sh makes from the shared inference.proto."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PROTO_DIR = ROOT.parent / "shared" / "torchserve-proto"
STUBS = ROOT / "predictor" / "serving" / "ts_proto"


def test_checked_in_stubs_equal_a_fresh_generation(tmp_path):
    if not (PROTO_DIR / "inference.proto").is_file():
        pytest.skip(f"TorchServe's inference.proto not found at {PROTO_DIR} (the shared/ folder beside the repo)")
    pytest.importorskip("grpc_tools")
    env = {**os.environ, "PYTHON": sys.executable}
    subprocess.run(["bash", str(STUBS / "generate.sh"), str(PROTO_DIR), str(tmp_path)], check=True, env=env,
                   capture_output=True)
    for name in ("inference_pb2.py", "inference_pb2_grpc.py"):
        fresh = (tmp_path / "predictor" / "serving" / "ts_proto" / name).read_text()
        assert (STUBS / name).read_text() == fresh, (
            f"{name} differs from a fresh generation: run predictor/serving/ts_proto/generate.sh "
            "(with the grpcio-tools version pinned in pyproject's test extra)")
