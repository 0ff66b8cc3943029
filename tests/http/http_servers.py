"""Predictor server processes for the HTTP tests: launch on free loopback ports, wait, stop."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from models import build_encoder, build_gpt2
from ports import free_ports

STARTUP_TIMEOUT_S = 120.0  # six servers start at once on two cores
STOP_TIMEOUT_S = 15.0
LOG_TAIL_LINES = 60
_POLL_LINES = ('"GET /ping ', '"GET /v2/health/live ')

# The servers of the session: name -> (mode, builder keyword arguments).
SERVERS: dict[str, tuple[str, dict[str, Any]]] = {
    "seq": ("sequence_classification", {}),
    "tok": ("token_classification", {"label_format": "label_list"}),
    "qa": ("question_answering", {"max_length": 48, "doc_stride": 16}),
    "gen": ("text_generation", {}),
    # handler.stream: true, so /predictions streams unless the request says otherwise.
    "gen-stream": ("text_generation", {"stream": True}),
    # A sequence classifier that tests may break (model repository routes); nobody else uses it.
    "spare": ("sequence_classification", {}),
}


def build_model(dest: Path, mode: str, **kwargs: Any) -> Path:
    """A tiny model for `mode` built by tests/models.py."""
    if mode == "text_generation":
        return build_gpt2(dest, **kwargs)
    return build_encoder(dest, mode, **kwargs)


@dataclass
class ServerProcess:
    """One predictor process, its ports and its log."""

    name: str
    mode: str
    model_dir: Path
    http_port: int
    grpc_port: int
    log_path: Path
    proc: subprocess.Popen[bytes]
    ts_grpc_port: int = 0
    management_port: int = 0
    _ready: bool = field(default=False, repr=False)
    _failure: str | None = field(default=None, repr=False)

    @classmethod
    def launch(cls, name: str, mode: str, model_dir: Path, workdir: Path, *extra: str) -> ServerProcess:
        """Start `python -m predictor` for one model; returns at once (the server is not ready yet)."""
        http_port, grpc_port, ts_grpc_port, management_port = free_ports(4)
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
               "PREDICTOR_CACHE_DIR": str(workdir / f"cache-{name}"), "PYTHONUNBUFFERED": "1"}
        log_path = workdir / f"server-{name}.log"
        with log_path.open("wb") as log:  # the child keeps its own descriptor
            proc = subprocess.Popen(
                [sys.executable, "-m", "predictor", "--model_name", name, "--model_dir", str(model_dir),
                 "--http_port", str(http_port), "--grpc_port", str(grpc_port), "--grace_period", "2",
                 "--ts_grpc_port", str(ts_grpc_port), "--ts_management_port", str(management_port), *extra],
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
            )
        return cls(name, mode, model_dir, http_port, grpc_port, log_path, proc, ts_grpc_port, management_port)

    @property
    def url(self) -> str:
        """The REST base URL."""
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def grpc_target(self) -> str:
        """host:port of the gRPC v2 endpoint."""
        return f"127.0.0.1:{self.grpc_port}"

    def log_tail(self, lines: int = LOG_TAIL_LINES) -> str:
        """The last lines of the server's log, without the access lines of our own polling."""
        text = self.log_path.read_text(encoding="utf-8", errors="replace")
        kept = [line for line in text.splitlines() if not any(p in line for p in _POLL_LINES)]
        return "\n".join(kept[-lines:])

    def fail(self, why: str) -> None:
        """Fail the test, showing the server's log."""
        pytest.fail(f"server {self.name!r}: {why}\n--- last lines of {self.log_path} ---\n{self.log_tail()}",
                    pytrace=False)

    def poll_until(self, path: str, expected_status: int | None, deadline: float) -> httpx.Response:
        """GET `path` until it answers (with `expected_status`, when given); fails on exit or deadline."""
        while True:
            if self.proc.poll() is not None:
                self.fail(f"exited with code {self.proc.returncode} while waiting for {path}")
            try:
                response = httpx.get(self.url + path, timeout=2.0)
                if expected_status is None or response.status_code == expected_status:
                    return response
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                self.fail(f"no {expected_status or 'answer'} from {path} within {STARTUP_TIMEOUT_S:.0f}s")
            time.sleep(0.1)

    def wait_ready(self) -> ServerProcess:
        """Live (`/v2/health/live` answers), then ready (`/ping` is 200); a failure is remembered."""
        if self._failure is not None:
            pytest.fail(self._failure, pytrace=False)
        if not self._ready:
            deadline = time.monotonic() + STARTUP_TIMEOUT_S
            try:
                self.poll_until("/v2/health/live", None, deadline)
                self.poll_until("/ping", 200, deadline)
            except pytest.fail.Exception as exc:
                self._failure = str(exc)  # the next test using this server fails at once, not after a timeout
                raise
            self._ready = True
        return self

    def terminate(self) -> None:
        """SIGTERM (graceful drain)."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)

    def wait_stopped(self, timeout: float = STOP_TIMEOUT_S) -> int:
        """Wait for the exit code; SIGKILL when the process outlives `timeout`."""
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait(timeout=10)


class Fleet:
    """The session's servers, launched together, each waited for on first use."""

    def __init__(self, servers: dict[str, ServerProcess]) -> None:
        self.servers = servers

    def ready(self, name: str) -> ServerProcess:
        """The named server, ready to answer."""
        return self.servers[name].wait_ready()

    def stop(self) -> None:
        """Terminate every server (all signalled first, so they drain in parallel)."""
        for server in self.servers.values():
            server.terminate()
        for server in self.servers.values():
            server.wait_stopped()
