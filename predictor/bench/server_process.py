"""The real predictor in a child process (`python -m predictor ...`) on free ports of 127.0.0.1."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

import httpx

# The directory holding the predictor package (a checkout or site-packages): servers start there, so
# `python -m predictor` runs this very copy of it.
PACKAGE_PARENT = Path(__file__).resolve().parents[2]
# Label values may hold braces (route="/predictions/{model_name}"): match quoted strings whole.
_SAMPLE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(?:[^"}]|"(?:[^"\\]|\\.)*")*\})?\s+(\S+)')


class ServerError(RuntimeError):
    """The predictor did not start, or stopped answering."""


def free_port() -> int:
    """A port nobody listens on right now, on 127.0.0.1."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def parse_prometheus(text: str) -> dict[str, float]:
    """Prometheus text format -> {"name{labels}": value}; comments skipped."""
    samples: dict[str, float] = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        match = _SAMPLE.match(line)
        if match:
            samples[match.group(1) + (match.group(2) or "")] = float(match.group(3))
    return samples


def metric_sum(samples: Mapping[str, float], name: str) -> float:
    """The sum of every series of one metric name, whatever its labels."""
    return sum(v for k, v in samples.items() if k == name or k.startswith(name + "{"))


def batch_metrics(before: Mapping[str, float], after: Mapping[str, float]) -> dict[str, Any]:
    """What the server's batches looked like between two scrapes: mean size and padding per real token."""

    def delta(name: str) -> float:
        return metric_sum(after, name) - metric_sum(before, name)

    def inference_delta(suffix: str) -> float:  # predictor_request_seconds of the inference routes only
        def total(samples: Mapping[str, float]) -> float:
            return sum(v for k, v in samples.items() if k.startswith(f"predictor_request_seconds_{suffix}{{")
                       and "predict" in k)
        return total(after) - total(before)

    batches = delta("predictor_batch_size_count")
    real = delta("predictor_real_tokens_total")
    padded = delta("predictor_padded_tokens_total")
    requests = inference_delta("count")
    return {"batches": int(batches),
            "mean_batch_size": round(delta("predictor_batch_size_sum") / batches, 2) if batches else None,
            "padded_to_real": round(padded / real, 3) if real else None,
            "inference_s_mean_ms": round(1000 * delta("predictor_inference_seconds_sum") / batches, 2)
            if batches else None,
            "server_request_ms_mean": round(1000 * inference_delta("sum") / requests, 2)
            if requests else None}


def rss_bytes(pid: int) -> int:
    """Resident memory of a process: psutil when installed, else /proc/PID/status."""
    try:
        import psutil
    except ModuleNotFoundError:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
        raise ServerError(f"no VmRSS for process {pid}") from None
    return int(psutil.Process(pid).memory_info().rss)


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (psutil when installed, else /proc/PID/stat)."""
    try:
        import psutil
    except ModuleNotFoundError:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    times = psutil.Process(pid).cpu_times()
    return float(times.user + times.system)


class ServerProcess:
    """`python -m predictor --model_name NAME --model_dir DIR` with its log in a file; a context manager."""

    ready_path_template = "/ping"

    def __init__(self, model_dir: Path, name: str, log_path: Path, *, config_path: Path | None = None,
                 extra_args: Sequence[str] = (), extra_env: Mapping[str, str] | None = None,
                 cache_dir: Path | None = None) -> None:
        self.model_dir = model_dir
        self.name = name
        self.log_path = log_path
        self.config_path = config_path
        self.extra_args = list(extra_args)
        self.extra_env = dict(extra_env or {})
        self.cache_dir = cache_dir or log_path.parent / "cache"  # shared with the in-process handlers
        self.http_port = free_port()
        self.grpc_port = free_port()
        self.process: subprocess.Popen[bytes] | None = None
        self.startup_s: float | None = None

    @property
    def base_url(self) -> str:
        """http://127.0.0.1:PORT"""
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def pid(self) -> int:
        """The server's process id."""
        if self.process is None:
            raise ServerError("the server is not running")
        return self.process.pid

    def command(self) -> list[str]:
        """The command line, as a KServe runtime would run it."""
        cmd = [sys.executable, "-m", "predictor", "--model_name", self.name,
               "--model_dir", str(self.model_dir), "--http_port", str(self.http_port),
               "--grpc_port", str(self.grpc_port), "--grace_period", "2",
               # TorchServe's gRPC and management APIs are not measured; off, so no two servers want 7070/8082.
               "--ts_grpc_port", "0", "--ts_management_port", "0"]
        if self.config_path is not None:
            cmd += ["--model_config", str(self.config_path)]
        return cmd + self.extra_args

    def environment(self) -> dict[str, str]:
        """The server's environment: offline, the benchmark's cache, the variant's extra variables."""
        return {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
                "TOKENIZERS_PARALLELISM": "false", "PREDICTOR_CACHE_DIR": str(self.cache_dir),
                **self.extra_env}

    def start(self, timeout_s: float = 180.0) -> float:
        """Start and wait for the readiness route to answer 200; the seconds that took. ServerError if not."""
        started = time.perf_counter()
        with self.log_path.open("wb") as log:
            self.process = subprocess.Popen(self.command(), cwd=PACKAGE_PARENT, env=self.environment(),
                                            stdout=log, stderr=subprocess.STDOUT)
        ready_url = self.base_url + self.ready_path_template.format(name=self.name)
        deadline = started + timeout_s
        with httpx.Client(timeout=2.0) as client:
            while time.perf_counter() < deadline:
                if self.process.poll() is not None:
                    raise ServerError(f"the server exited with {self.process.returncode}:\n"
                                      f"{self.log_tail()}")
                try:
                    if client.get(ready_url).status_code == 200:
                        self.startup_s = round(time.perf_counter() - started, 2)
                        return self.startup_s
                except httpx.TransportError:
                    pass
                time.sleep(0.2)
        self.stop()
        raise ServerError(f"the predictor was not ready within {timeout_s:g}s:\n{self.log_tail()}")

    def stop(self) -> None:
        """SIGTERM (graceful), then SIGKILL after a few seconds."""
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()

    def metrics(self) -> dict[str, float]:
        """A scrape of /metrics."""
        response = httpx.get(f"{self.base_url}/metrics", timeout=10.0)
        response.raise_for_status()
        return parse_prometheus(response.text)

    def backend(self) -> str | None:
        """The backend running the forward passes, as the server's /metrics says (backend auto's choice)."""
        for key, value in self.metrics().items():
            if key.startswith('predictor_model_backend{backend="') and value == 1:
                return key.split('"')[1]
        return None

    def rss_bytes(self) -> int:
        """The server's resident memory now."""
        return rss_bytes(self.pid)

    def cpu_seconds(self) -> float:
        """The server's CPU time so far."""
        return cpu_seconds(self.pid)

    def worker_plan(self) -> tuple[int, int] | None:
        """(model workers, torch threads of each) as the server's log says."""
        try:
            found = re.findall(r"model workers: (\d+) of (\d+) torch thread", self.log_path.read_text(errors="replace"))
        except OSError:
            return None
        return (int(found[-1][0]), int(found[-1][1])) if found else None

    def log_tail(self, lines: int = 25) -> str:
        """The last lines the server logged."""
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def __enter__(self) -> ServerProcess:
        self.start()
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()
