"""Real `python -m predictor` processes for the reliability tests: models, launch, health probes, exit.

The same approach as tests/http (free loopback ports, one log file per process, SIGTERM to stop), kept
separate on purpose: these tests break, overload and kill their servers.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest
import yaml
from models import build_encoder, build_gpt2
from ports import free_ports
from zygote import Zygote

STARTUP_TIMEOUT_S = 180.0  # many processes may import torch at once on two cores
LOG_TAIL_LINES = 80
_POLL_LINES = ('"GET /ping ', '"GET /v2/health/', '"GET /v1/models/', '"GET /v2/models/')
HEALTH_PATHS = ("/ping", "/v2/health/ready", "/v1/models/{name}", "/v2/models/{name}/ready")

# Configs of the session's servers (see conftest.SERVERS).
SMALL_LIMITS = {"max_body_bytes": 2048, "max_instances": 4, "max_text_chars": 300}  # seq_limits_server
GEN_QUEUE_SIZE = 4  # jobQueueSize of gen_queue_server
GEN_TOKEN_CAP = 600  # handler.max_new_tokens_limit of gen_queue_server
STREAM_LIMIT_S = 2  # limits.max_stream_seconds of gen_timeout_server
NEEDLE = "zebra"  # the word qa_load_server's model answers, wherever it is in the context


# ---- models -------------------------------------------------------------------------------------------


def configure(model_dir: Path, **top: Any) -> Path:
    """Merge keys into model-config.yaml; `handler` and `limits` mappings are merged key by key."""
    path = model_dir / "model-config.yaml"
    doc = yaml.safe_load(path.read_text())
    for key, value in top.items():
        if isinstance(value, dict):
            doc[key] = {**doc.get(key, {}), **value}
        else:
            doc[key] = value
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return model_dir


def build_seq(dest: Path, calibration_texts: Sequence[str]) -> Path:
    """tests/models.py's tiny sequence classifier, its head scaled so that texts get different labels.

    With random weights every text scores 0.5013 +- 1e-4 for the same label, so a response that went to the
    wrong request would still look right. Scaled and centred on the calibration texts, about half of
    them get each label, with clearly different scores.
    """
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    build_encoder(dest, "sequence_classification")
    model = AutoModelForSequenceClassification.from_pretrained(dest).eval()
    tokenizer = AutoTokenizer.from_pretrained(dest)
    with torch.inference_mode():
        enc = tokenizer(list(calibration_texts), truncation=True, max_length=64, padding=True,
                        return_tensors="pt")
        margins = model(**enc).logits.diff(dim=-1).squeeze(-1)
    scale = 4.0 / float(margins.std())
    with torch.no_grad():
        model.classifier.weight.mul_(scale)
        model.classifier.bias.mul_(scale)
        model.classifier.bias[1] -= float(margins.median()) * scale  # centre: half the texts on each side
    model.save_pretrained(dest)
    return dest


SLOW_GEN_POSITIONS = 4096


def build_slow_gpt2(dest: Path) -> Path:
    """tests/models.py's tiny GPT-2 tokenizer with a deeper, 4096-position model: generations take seconds.

    The stock tiny GPT-2 has 256 positions, which it generates in about 0.1 s; the timeout and
    overload tests need one request to keep the model busy for longer than that. Twelve narrow layers
    cost about 1.7 ms a token on one core (each layer is a few small kernels), so 2500 tokens stay well
    past a one-second responseTimeout on a machine several times faster than ours.
    """
    import torch
    from transformers import AutoTokenizer, GPT2Config, GPT2LMHeadModel

    build_gpt2(dest)
    tokenizer = AutoTokenizer.from_pretrained(dest)
    torch.manual_seed(0)
    config = GPT2Config(vocab_size=len(tokenizer), n_positions=SLOW_GEN_POSITIONS, n_embd=64, n_layer=12,
                        n_head=2, bos_token_id=tokenizer.eos_token_id, eos_token_id=tokenizer.eos_token_id)
    GPT2LMHeadModel(config).eval().save_pretrained(dest)
    return configure(dest, handler={"max_new_tokens_limit": SLOW_GEN_POSITIONS - 64})


def copy_model(src: Path, dest: Path, **top: Any) -> Path:
    """A copy of a model directory with its own model-config.yaml changes."""
    shutil.copytree(src, dest)
    return configure(dest, **top) if top else dest


# ---- health -------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class HealthSample:
    """One pass over the readiness endpoints, in HEALTH_PATHS order: (path, status) pairs."""

    statuses: tuple[tuple[str, int], ...]

    @property
    def ready(self) -> tuple[bool, ...]:
        """Ready as each endpoint says it, in the order they were asked."""
        return tuple(status == 200 for _, status in self.statuses)

    @property
    def agrees(self) -> bool:
        """All ready or all not ready."""
        return len(set(self.ready)) == 1

    def transition(self, before: bool) -> bool:
        """True when the endpoints switched from `before` to `not before` once, mid-sample (a real change)."""
        states = list(self.ready)
        switch = states.index(not before) if (not before) in states else len(states)
        return states == [before] * switch + [not before] * (len(states) - switch)


def check_health_samples(samples: Sequence[HealthSample], *,
                         start_ready: bool | None = None) -> tuple[int, int]:
    """Every sample agrees, except one that catches a single change of state (from `start_ready`).

    Returns (not ready samples, ready samples).
    """
    mixed = [s for s in samples if not s.agrees]
    if start_ready is None:
        assert not mixed, mixed
    else:
        assert all(s.transition(start_ready) for s in mixed), mixed
        assert len(mixed) <= 1, mixed  # a change happens once
    agreeing = [s for s in samples if s.agrees]
    not_ready = sum(1 for s in agreeing if not s.ready[0])
    return not_ready, len(agreeing) - not_ready


# ---- processes ----------------------------------------------------------------------------------------


@dataclass
class ServerProcess:
    """One predictor process, its ports and its log."""

    name: str
    model_dir: Path
    http_port: int
    grpc_port: int
    log_path: Path
    proc: Any  # subprocess.Popen, or zygote.ForkedProcess
    grace_period_s: int
    startup_samples: list[HealthSample] = field(default_factory=list)
    _ready: bool = field(default=False, repr=False)
    _failure: str | None = field(default=None, repr=False)
    signalled_at: float | None = field(default=None, repr=False)

    @classmethod
    def launch(cls, name: str, model_dir: Path, workdir: Path, *extra: str, env: dict[str, str] | None = None,
               grace_period_s: int = 5, zygote: Zygote | None = None) -> ServerProcess:
        """Start `python -m predictor` for one model (forked from `zygote` when given, with the same arguments
        and environment); returns at once (the server is not ready yet)."""
        http_port, grpc_port = free_ports(2)
        # Fault injection only where a test asks for it, never inherited from the test run.
        inherited = {k: v for k, v in os.environ.items() if k != "PREDICTOR_FAULT_INJECTION"}
        full_env = {**inherited, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "PYTHONUNBUFFERED": "1",
                    "PREDICTOR_CACHE_DIR": str(workdir / f"cache-{name}"), **(env or {})}
        log_path = workdir / f"server-{name}.log"
        argv = ["--model_name", name, "--model_dir", str(model_dir), "--http_port", str(http_port),
                "--grpc_port", str(grpc_port),
                "--ts_grpc_port", "0", "--ts_management_port", "0",  # not under test here; never 7070/8082 twice
                "--grace_period", str(grace_period_s), *extra]
        if zygote is not None:
            return cls(name, model_dir, http_port, grpc_port, log_path, zygote.launch(argv, full_env, log_path),
                       grace_period_s)
        with log_path.open("wb") as log:  # the child keeps its own descriptor
            proc = subprocess.Popen([sys.executable, "-m", "predictor", *argv], stdout=log, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL, env=full_env)
        return cls(name, model_dir, http_port, grpc_port, log_path, proc, grace_period_s)

    @property
    def url(self) -> str:
        """The REST base URL."""
        return f"http://127.0.0.1:{self.http_port}"

    def log_text(self) -> str:
        """The whole log so far."""
        return self.log_path.read_text(encoding="utf-8", errors="replace")

    def log_tail(self, lines: int = LOG_TAIL_LINES) -> str:
        """The last lines of the log, without the access lines of health polling."""
        kept = [line for line in self.log_text().splitlines() if not any(p in line for p in _POLL_LINES)]
        return "\n".join(kept[-lines:])

    def fail(self, why: str) -> None:
        """Fail the test, showing the server's log."""
        pytest.fail(f"server {self.name!r}: {why}\n--- last lines of {self.log_path} ---\n{self.log_tail()}",
                    pytrace=False)

    def health(self, timeout: float = 5.0) -> HealthSample:
        """Ask every readiness endpoint once, in order."""
        statuses = []
        with httpx.Client(base_url=self.url, timeout=timeout) as client:
            for template in HEALTH_PATHS:
                path = template.format(name=self.name)
                response = client.get(path)
                if path == "/ping":
                    expected = {"status": "Healthy" if response.status_code == 200 else "Unhealthy"}
                    assert response.json() == expected, response.text
                statuses.append((path, response.status_code))
        return HealthSample(tuple(statuses))

    def live(self) -> bool:
        """True once the HTTP port answers /v2/health/live."""
        try:
            return httpx.get(self.url + "/v2/health/live", timeout=2.0).status_code == 200
        except httpx.TransportError:
            return False

    def wait_live(self, deadline: float) -> None:
        """Until /v2/health/live answers; fails on exit or deadline."""
        while not self.live():
            if self.proc.poll() is not None:
                self.fail(f"exited with code {self.proc.returncode} before answering")
            if time.monotonic() > deadline:
                self.fail(f"not live within {STARTUP_TIMEOUT_S:.0f}s")
            time.sleep(0.05)

    def wait_ready(self) -> ServerProcess:
        """Live, then ready; every readiness endpoint is sampled on the way (they must agree)."""
        if self._failure is not None:
            pytest.fail(self._failure, pytrace=False)
        if self._ready:
            return self
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        try:
            self.wait_live(deadline)
            while True:
                try:
                    sample = self.health()
                except httpx.TransportError:
                    sample = None
                if sample is not None:
                    self.startup_samples.append(sample)
                    if all(sample.ready):
                        break
                if self.proc.poll() is not None:
                    self.fail(f"exited with code {self.proc.returncode} while loading")
                if time.monotonic() > deadline:
                    self.fail(f"not ready within {STARTUP_TIMEOUT_S:.0f}s")
                time.sleep(0.02)
        except pytest.fail.Exception as exc:
            self._failure = str(exc)  # the next test using this server fails at once, not after a timeout
            raise
        self._ready = True
        return self

    def rss(self) -> int:
        """Resident memory of the server process, in bytes."""
        return psutil.Process(self.proc.pid).memory_info().rss

    def terminate(self) -> None:
        """SIGTERM (graceful drain), once; remembers when."""
        if self.proc.poll() is None and self.signalled_at is None:
            self.signalled_at = time.monotonic()
            self.proc.send_signal(signal.SIGTERM)

    def wait_exit(self, timeout: float) -> int:
        """The exit code; SIGKILL (and a failure) when the process outlives `timeout`."""
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=10)
            self.fail(f"still running {timeout:.0f}s later; killed")
            raise  # pragma: no cover (fail raises)

    def kill(self) -> None:
        """Teardown when nothing more is checked: SIGKILL and reap (no drain, no interpreter teardown)."""
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(timeout=10)

    def stop(self) -> None:
        """Teardown: SIGTERM, then SIGKILL if the process does not exit."""
        self.terminate()
        try:
            self.proc.wait(timeout=self.grace_period_s + 15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=10)


@contextmanager
def single_threaded() -> Iterator[None]:
    """torch on one thread in this process meanwhile: next to busy servers, two spinning threads crawl."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def expected_answer(core: Any, item: Any) -> Any:
    """What the in-process core (a loaded GeneralizedHandler) answers for one request item, alone."""
    with single_threaded():
        return core.predict([core.parse(item)])[0]
