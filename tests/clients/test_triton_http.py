"""tritonclient's HTTP client (binary tensor data by default, JSON with binary_data=False) against a real server."""

from __future__ import annotations

import json
import struct

import httpx
import numpy as np
import pytest
from oip_spec import nulls, validate

httpclient = pytest.importorskip("tritonclient.http")
from tritonclient.utils import InferenceServerException  # noqa: E402

TEXTS = ["hello world", "Ada Lovelace lived in London.", "Le café était fermé."]


@pytest.fixture(scope="module")
def triton(seq_server):
    client = httpclient.InferenceServerClient(f"127.0.0.1:{seq_server.http_port}", network_timeout=60)
    yield client
    client.close()


def _input(texts: list[str], binary: bool, name: str = "text"):
    tensor = httpclient.InferInput(name, [len(texts)], "BYTES")
    tensor.set_data_from_numpy(np.array([t.encode() for t in texts], dtype=object), binary_data=binary)
    return tensor


def test_health_and_metadata(triton):
    assert triton.is_server_live() and triton.is_server_ready()
    assert triton.is_model_ready("seq") and triton.is_model_ready("seq", "1.0")
    assert not triton.is_model_ready("seq", "7")
    server = triton.get_server_metadata()
    validate(server, "metadata_server_response")
    assert "model_repository_extension" not in server["extensions"]  # load/unload answer 501 here
    for version in ("", "1.0"):
        metadata = triton.get_model_metadata("seq", version)
        validate(metadata, "metadata_model_response")
        assert not nulls(metadata)
        assert metadata["versions"] == ["1.0"]
        assert [t["name"] for t in metadata["inputs"]] == ["text"]


@pytest.mark.parametrize("binary_in", [True, False], ids=["binary-in", "json-in"])
@pytest.mark.parametrize("binary_out", [None, True, False], ids=["default-out", "binary-out", "json-out"])
def test_infer(triton, seq_labels, binary_in, binary_out):
    outputs = None if binary_out is None else [httpclient.InferRequestedOutput("output", binary_data=binary_out)]
    result = triton.infer("seq", [_input(TEXTS, binary_in)], outputs=outputs, request_id="r-1", model_version="1.0")
    got = [v.decode() if isinstance(v, bytes) else v for v in result.as_numpy("output").tolist()]
    assert got == [seq_labels(t) for t in TEXTS]
    response = result.get_response()
    assert not nulls(response), response
    assert (response["model_name"], response["model_version"], response["id"]) == ("seq", "1.0", "r-1")
    if binary_out is False:  # all data in the JSON: the document's schema applies as it is
        validate(response, "inference_response")


def test_unversioned_infer_without_id_leaves_id_out(triton):
    response = triton.infer("seq", [_input(TEXTS[:1], False)],
                            outputs=[httpclient.InferRequestedOutput("output", binary_data=False)]).get_response()
    assert "id" not in response and "parameters" not in response
    validate(response, "inference_response")


@pytest.mark.parametrize(("inputs", "outputs", "status", "named"), [
    ([("nope", ["a"])], None, "400", "'text'"),
    ([("text", ["a"])], ["nope"], "400", "'output'"),
    ([("text", ["a"]), ("text", ["b"])], None, "400", "twice"),
])
def test_unknown_or_repeated_names_are_400(triton, inputs, outputs, status, named):
    tensors = [_input(texts, True, name) for name, texts in inputs]
    requested = [httpclient.InferRequestedOutput(o) for o in outputs] if outputs else None
    with pytest.raises(InferenceServerException) as caught:
        triton.infer("seq", tensors, outputs=requested)
    assert caught.value.status() == status and named in caught.value.message()


def test_unknown_version_is_404(triton):
    with pytest.raises(InferenceServerException) as caught:
        triton.infer("seq", [_input(["a"], True)], model_version="7")
    assert caught.value.status() == "404" and "1.0" in caught.value.message()


# ---- the binary extension, malformed: what a buggy or hostile client sends --------------------------
def _element(data: bytes) -> bytes:
    return struct.pack("<I", len(data)) + data


def _binary_body(shape: list[int], raw: bytes, size: int | None = None) -> tuple[bytes, int]:
    head = json.dumps({"inputs": [{"name": "text", "shape": shape, "datatype": "BYTES",
                                   "parameters": {"binary_data_size": len(raw) if size is None else size}}]}).encode()
    return head + raw, len(head)


def _bad_bodies() -> dict[str, tuple[bytes, str]]:
    ok = _element(b"hello")
    cases = {
        "shape-mismatch": (*_binary_body([3], ok), "shape"),
        "not-utf8": (*_binary_body([1], _element(b"\xff\xfe")), "UTF-8"),
        "prefix-past-end": (*_binary_body([1], struct.pack("<I", 1000) + b"abc"), "1000"),
        "short-prefix": (*_binary_body([1], ok + b"\x01\x00"), "length prefix"),
        "size-past-end": (*_binary_body([1], ok, size=len(ok) + 10), "binary_data_size"),
        "trailing-bytes": (*_binary_body([1], ok, size=len(ok)), "belong to no input"),
    }
    body, length = cases["trailing-bytes"][:2]
    cases["trailing-bytes"] = (body + b"junk", length, "belong to no input")
    return {name: (body, str(length), why) for name, (body, length, why) in cases.items()}


BAD = _bad_bodies()
BAD["header-not-a-number"] = (BAD["shape-mismatch"][0], "12abc", "byte count")
BAD["header-past-body"] = (BAD["shape-mismatch"][0], "100000", "only")


@pytest.mark.parametrize("case", sorted(BAD))
def test_malformed_binary_bodies_are_400(seq_server, case):
    body, header, why = BAD[case]
    response = httpx.post(f"{seq_server.url}/v2/models/seq/infer", content=body,
                          headers={"Inference-Header-Content-Length": header}, timeout=30)
    assert response.status_code == 400, response.text
    assert why in response.json()["error"]
    validate(response.json(), "inference_error_response")
    assert httpx.get(seq_server.url + "/v2/health/ready", timeout=10).status_code == 200
