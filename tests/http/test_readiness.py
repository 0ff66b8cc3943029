"""Readiness tells the truth: a model that cannot load is never ready, and the process exits non-zero."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator

import httpx
import pytest
from http_checks import assert_kserve_error, assert_torchserve_error
from http_servers import ServerProcess, build_model
from kserve import InferenceGRPCClient

LOAD_RETRY_S = 8  # attempts at about 0, 1, 3 and 7 s, then the loader gives up


async def _grpc_server_ready(target: str) -> bool:
    client = InferenceGRPCClient(target, timeout=10)
    try:
        return await client.is_server_ready()
    finally:
        await client.close()


@pytest.fixture(scope="module")
def broken_server(http_workdir) -> Iterator[ServerProcess]:
    """A server whose weights file is truncated: it answers, but its model never loads."""
    model_dir = build_model(http_workdir / "model-broken", "sequence_classification")
    weights = model_dir / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    server = ServerProcess.launch("broken", "sequence_classification", model_dir, http_workdir,
                                  "--load_retry_seconds", str(LOAD_RETRY_S))
    yield server
    server.terminate()
    server.wait_stopped()


def test_not_ready_while_the_model_cannot_load_then_exit_non_zero(broken_server):
    server = broken_server
    server.poll_until("/v2/health/live", 200, time.monotonic() + 90)
    started = time.monotonic()
    with httpx.Client(base_url=server.url, timeout=10) as client:
        ping = client.get("/ping")
        assert (ping.status_code, ping.json()) == (500, {"status": "Unhealthy"})
        assert client.get("/v2/health/ready").status_code == 503
        assert_kserve_error(client.get("/v1/models/broken"), 503)
        assert_kserve_error(client.post("/v1/models/broken:predict", json={"instances": ["hi"]}), 503)
        assert_kserve_error(client.post("/v2/models/broken/infer", json={"inputs": [
            {"name": "text", "datatype": "BYTES", "shape": [1], "data": ["hi"]}]}), 503)
        response = client.post("/predictions/broken", content=b"hi")
        assert_torchserve_error(response, 503, "ServiceUnavailableException")
        assert response.headers.get("retry-after")
        assert client.get("/v2/health/live").status_code == 200  # alive: the process itself is fine
    assert asyncio.run(_grpc_server_ready(server.grpc_target)) is False
    assert time.monotonic() - started < LOAD_RETRY_S, "the checks above must run inside the retry window"
    code = server.wait_stopped(timeout=LOAD_RETRY_S + 60)
    assert code != 0, server.log_tail()
    assert "giving up loading model broken" in server.log_path.read_text()
