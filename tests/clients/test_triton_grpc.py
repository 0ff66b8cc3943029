"""tritonclient's gRPC client against a real server, in a process of its own (see triton_grpc_calls.py)."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

# Not imported here: its protobuf package would clash with kserve's in this process.
if importlib.util.find_spec("tritonclient") is None:
    pytest.skip("tritonclient is not installed (pip install 'tritonclient[grpc]')", allow_module_level=True)

SCRIPT = Path(__file__).with_name("triton_grpc_calls.py")
TEXTS = ["hello world", "Ada Lovelace lived in London.", "Le café était fermé."]


@pytest.fixture(scope="module")
def answers(seq_server) -> dict:
    done = subprocess.run([sys.executable, str(SCRIPT), seq_server.grpc_target], capture_output=True, text=True,
                          timeout=120, check=False)
    assert done.returncode == 0, done.stderr[-4000:]
    return json.loads(done.stdout)


def test_health_and_metadata(answers):
    assert (answers["live"], answers["ready"], answers["model_ready"]) == (True, True, True)
    assert "model_repository_extension" not in answers["server_metadata"].get("extensions", [])
    metadata = answers["model_metadata"]
    assert metadata["versions"] == ["1.0"]
    assert [(t["name"], t["datatype"]) for t in metadata["inputs"]] == [("text", "BYTES")]


def test_raw_inputs_are_answered_raw(answers, seq_labels):
    assert answers["labels"] == [seq_labels(t) for t in TEXTS]
    assert answers["response"] == {"id": "g-1", "model_version": "1.0", "raw_outputs": 1}


@pytest.mark.parametrize(("call", "status", "named"), [
    ("unknown_input", "StatusCode.INVALID_ARGUMENT", "'text'"),
    ("unknown_output", "StatusCode.INVALID_ARGUMENT", "'output'"),
    ("not_utf8", "StatusCode.INVALID_ARGUMENT", "UTF-8"),
    ("truncated", "StatusCode.INVALID_ARGUMENT", "claims 9 bytes"),
    ("unknown_version", "StatusCode.NOT_FOUND", "1.0"),
    ("unknown_model", "StatusCode.NOT_FOUND", "nope"),
    ("too_many", "StatusCode.RESOURCE_EXHAUSTED", "65"),
])
def test_errors_have_their_status(answers, call, status, named):
    error = answers["errors"][call]
    assert error["status"] == status, error
    assert named in error["message"], error
