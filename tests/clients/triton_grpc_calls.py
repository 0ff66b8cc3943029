"""Calls tritonclient's gRPC client makes, run in a process of their own and reported as JSON on stdout.

tritonclient.grpc and kserve register the same protobuf package (inference.*), so the two cannot be
imported into one process: the tests run this script with `python triton_grpc_calls.py HOST:PORT`.
"""

from __future__ import annotations

import json
import sys
from typing import Any

import numpy as np
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

TEXTS = ["hello world", "Ada Lovelace lived in London.", "Le café était fermé."]


def _input(texts: list[str], name: str = "text") -> Any:
    tensor = grpcclient.InferInput(name, [len(texts)], "BYTES")
    tensor.set_data_from_numpy(np.array([t.encode() for t in texts], dtype=object))
    return tensor


def _error(call: Any) -> dict[str, str]:
    try:
        call()
    except InferenceServerException as exc:
        return {"status": str(exc.status()), "message": exc.message()}
    return {"status": "OK", "message": ""}


def main(target: str) -> dict[str, Any]:
    """Every call's answer, by name."""
    client = grpcclient.InferenceServerClient(target)
    metadata = client.get_model_metadata("seq", "1.0", as_json=True)
    result = client.infer("seq", [_input(TEXTS)], request_id="g-1", model_version="1.0")
    raw = result.get_response()
    not_utf8 = _input(["x"])
    not_utf8._raw_content = b"\x02\x00\x00\x00\xff\xfe"
    truncated = _input(["x"])
    truncated._raw_content = b"\x09\x00\x00\x00abc"
    return {
        "live": client.is_server_live(), "ready": client.is_server_ready(),
        "model_ready": client.is_model_ready("seq", "1.0"),
        "server_metadata": client.get_server_metadata(as_json=True), "model_metadata": metadata,
        "labels": [v.decode() for v in result.as_numpy("output").tolist()],
        "response": {"id": raw.id, "model_version": raw.model_version, "raw_outputs": len(raw.raw_output_contents)},
        "errors": {
            "unknown_input": _error(lambda: client.infer("seq", [_input(["a"], "nope")])),
            "unknown_output": _error(lambda: client.infer("seq", [_input(["a"])],
                                                          outputs=[grpcclient.InferRequestedOutput("nope")])),
            "not_utf8": _error(lambda: client.infer("seq", [not_utf8])),
            "truncated": _error(lambda: client.infer("seq", [truncated])),
            "unknown_version": _error(lambda: client.infer("seq", [_input(["a"])], model_version="7")),
            "unknown_model": _error(lambda: client.get_model_metadata("nope")),
            "too_many": _error(lambda: client.infer("seq", [_input(["a"] * 65)])),
        },
    }


if __name__ == "__main__":
    print(json.dumps(main(sys.argv[1])))
