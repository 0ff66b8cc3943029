"""TorchServe's own gRPC client code path: stubs generated from the shared inference.proto with grpcio-tools.

Never imports predictor's checked-in stubs: both would register TorchServe's message names in
protobuf's global pool, and the second would be refused.
"""

from __future__ import annotations

import importlib
import sys
from pathlib import Path
from types import ModuleType

import pytest

PROTO_DIR = Path(__file__).resolve().parents[2].parent / "shared" / "torchserve-proto"


def protoc_includes() -> list[str]:
    """Include roots of the well-known protos (grpc_tools) and google/rpc/status.proto (googleapis-common-protos)."""
    import google.rpc
    import grpc_tools

    return [str(Path(grpc_tools.__file__).parent / "_proto"), str(Path(list(google.rpc.__path__)[0]).parents[1])]


def generate_client(out: Path) -> tuple[ModuleType, ModuleType]:
    """inference_pb2 and inference_pb2_grpc, generated into `out` from ../shared/torchserve-proto."""
    if not (PROTO_DIR / "inference.proto").is_file():
        pytest.skip(f"TorchServe's inference.proto not found at {PROTO_DIR} (the shared/ folder beside the repo)")
    if "inference_pb2" in sys.modules:
        return sys.modules["inference_pb2"], sys.modules["inference_pb2_grpc"]
    from grpc_tools import protoc

    args = ["protoc", f"-I{PROTO_DIR}", *(f"-I{i}" for i in protoc_includes()), f"--python_out={out}",
            f"--grpc_python_out={out}", str(PROTO_DIR / "inference.proto")]
    assert protoc.main(args) == 0, "grpc_tools.protoc failed on inference.proto"
    sys.path.insert(0, str(out))
    return importlib.import_module("inference_pb2"), importlib.import_module("inference_pb2_grpc")
