"""kserve's per-request timing: left out of the middleware stack unless --enable_latency_logging asks for it."""

from __future__ import annotations

import logging
import re

import httpx
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from timing_asgi import TimingClient, TimingMiddleware

from predictor.serving.cli import build_parser, configure_logging
from predictor.serving.middleware import new_request_id
from predictor.serving.server import without_request_timing


class Recorder(TimingClient):
    """Collects what the timing middleware reports."""

    def __init__(self) -> None:
        self.names: list[str] = []

    def timing(self, metric_name: str, timing: float, tags: list[str]) -> None:
        self.names.append(metric_name)


def _app(recorder: Recorder) -> FastAPI:
    app = FastAPI()

    @app.get("/hello")
    async def hello() -> dict[str, str]:
        return {"hello": "world"}

    app.add_middleware(TimingMiddleware, client=recorder)  # as kserve adds it, after our configure()
    return app


@pytest.mark.parametrize("filtered", [False, True])
def test_timing_middleware_runs_only_when_kept(filtered: bool) -> None:
    recorder = Recorder()
    app = _app(recorder)
    if filtered:
        without_request_timing(app)
    with TestClient(app) as client:
        for _ in range(3):
            assert client.get("/hello").json() == {"hello": "world"}
    assert len(recorder.names) == (0 if filtered else 6)  # wall and CPU time of each request


def test_latency_logging_is_off_unless_asked() -> None:
    parser = build_parser()
    assert parser.parse_args(["serve", "--model_name", "m"]).enable_latency_logging is False
    assert parser.parse_args(["demo"]).enable_latency_logging is False
    assert parser.parse_args(["serve", "--enable_latency_logging", "true"]).enable_latency_logging is True


def test_latency_lines_are_logged_only_when_asked() -> None:
    trace = logging.getLogger("kserve.trace")
    before = trace.level
    try:
        configure_logging("INFO")
        assert not trace.isEnabledFor(logging.INFO)
        configure_logging("INFO", latency_logging=True)
        assert trace.isEnabledFor(logging.INFO)
    finally:
        trace.setLevel(before)


def test_generated_request_ids_look_like_uuid_hex_and_differ() -> None:
    ids = {new_request_id() for _ in range(1000)}
    assert len(ids) == 1000
    assert all(re.fullmatch(r"[0-9a-f]{32}", i) for i in ids)


def test_the_served_app_keeps_answering_without_the_timing_middleware(seq_server) -> None:
    # The real server (default flags) still answers every route family after the filter ran.
    with httpx.Client(base_url=seq_server.url, timeout=30.0) as client:
        assert client.post("/predictions/seq", content=b"hello").status_code == 200
        assert client.post("/v1/models/seq:predict", json={"instances": ["hello"]}).status_code == 200
    assert "TimingMiddleware" not in seq_server.log_path.read_text(errors="replace")
