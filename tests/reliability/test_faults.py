"""Injected faults (PREDICTOR_FAULT_INJECTION) and broken model files: answered, refused or reported.

oom-once: the first batch of two or more runs out of memory; the handler splits it and every request still
gets its own correct answer. oom-always: 507, and the server stays healthy. A corrupt weights file: never
ready, a clear ERROR naming the file, exit non-zero after the retry window; fixed in time, it recovers.
"""

from __future__ import annotations

import asyncio
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from reliability_requests import ROUTES, problem, valid_probe
from reliability_servers import HealthSample, ServerProcess, check_health_samples, copy_model, expected_answer

pytestmark = pytest.mark.slow

CONCURRENT = 24
OOM_SPLIT = "out of memory on a batch of"


async def _send_all(url: str, requests: list[dict]) -> list[httpx.Response]:
    limits = httpx.Limits(max_connections=len(requests), max_keepalive_connections=len(requests))
    async with httpx.AsyncClient(base_url=url, timeout=60.0, limits=limits) as client:
        return await asyncio.gather(*[client.request(**r) for r in requests])


def test_oom_once_splits_the_batch_and_answers_everyone(oom_once_server, seq_labels, capsys):
    server: ServerProcess = oom_once_server
    texts = list(seq_labels)[:CONCURRENT]
    probes = [valid_probe(ROUTES[n % 3], server.name, t, seq_labels[t]) for n, t in enumerate(texts)]
    bursts = 0
    while OOM_SPLIT not in server.log_text():  # until a batch of two or more formed and hit the fault
        bursts += 1
        assert bursts <= 5, "no batch of two or more formed in five bursts of concurrent requests"
        responses = asyncio.run(_send_all(server.url, [p.send_args() for p in probes]))
        assert [problem(p, r) for p, r in zip(probes, responses, strict=True)] == [None] * len(probes)
        assert [r.status_code for r in responses] == [200] * len(probes)
        time.sleep(0.2)  # the server logs the split before it answers; leave its write a moment
    log = server.log_text()
    assert log.count(OOM_SPLIT) == 1, "oom-once fires once"
    split = next(line for line in log.splitlines() if OOM_SPLIT in line)
    with capsys.disabled():
        print(f"\noom-once: {bursts} burst(s) of {CONCURRENT} concurrent requests, all answered correctly; "
              f"server log: {split.split(' WARNING ')[-1]}")
    assert all(server.health().ready)


@pytest.mark.parametrize("route", ROUTES)
def test_oom_always_is_507_and_the_server_stays_healthy(oom_always_server, route):
    server: ServerProcess = oom_always_server
    probe = valid_probe(route, server.name, "the food was good", "unused")
    with httpx.Client(base_url=server.url, timeout=30) as client:
        response = client.request(**probe.send_args())
    assert response.status_code == 507, response.text
    body = response.json()
    if route == "torchserve":
        assert body["code"] == 507 and body["type"] == "OutOfResourcesException", body
    else:
        assert set(body) == {"error"} and "out of memory" in body["error"], body
    assert "Traceback" not in response.text
    ping = httpx.get(server.url + "/ping", timeout=10)
    assert (ping.status_code, ping.json()) == (200, {"status": "Healthy"})
    assert all(server.health().ready)


def test_oom_always_on_a_batch_is_507_for_each_request(oom_always_server):
    server: ServerProcess = oom_always_server
    probes = [valid_probe(ROUTES[n % 3], server.name, f"text number {n}", "unused") for n in range(12)]
    responses = asyncio.run(_send_all(server.url, [p.send_args() for p in probes]))
    assert [r.status_code for r in responses] == [507] * len(probes)
    assert all(server.health().ready)


# ---- broken model files --------------------------------------------------------------------------------


def _corrupt_copy(base: Path, dest: Path) -> tuple[Path, bytes]:
    model_dir = copy_model(base, dest)
    weights = model_dir / "model.safetensors"
    good = weights.read_bytes()
    weights.write_bytes(good[:1000])
    return model_dir, good


def _sample_until(server: ServerProcess, done, deadline_s: float) -> list[HealthSample]:
    samples = []
    deadline = time.monotonic() + deadline_s
    while not done() and time.monotonic() < deadline:
        try:
            samples.append(server.health(timeout=2.0))
        except httpx.TransportError:
            if server.proc.poll() is not None:
                break
        time.sleep(0.05)
    return samples


@dataclass(frozen=True)
class FailedStart:
    """What a server whose weights file is corrupt did, from live to exit."""

    samples: list[HealthSample]
    exit_code: int
    exited_after_s: float
    errors: list[str]
    predictions: dict[str, httpx.Response]  # one predict request per route family while it was not ready


@pytest.fixture(scope="module")
def corrupt_start(base_models, reliability_workdir) -> FailedStart:
    """A server over a truncated model.safetensors, --load_retry_seconds 3, probed until it exits."""
    model_dir, _ = _corrupt_copy(base_models["seq"], reliability_workdir / "model-corrupt")
    server = ServerProcess.launch("corrupt", model_dir, reliability_workdir, "--load_retry_seconds", "3")
    try:
        server.wait_live(time.monotonic() + 120)
        live_at = time.monotonic()
        with httpx.Client(base_url=server.url, timeout=10) as client:
            predictions = {route: client.request(**valid_probe(route, server.name, "hi", "-").send_args())
                           for route in ROUTES}
        samples = _sample_until(server, lambda: server.proc.poll() is not None, 60)
        code = server.wait_exit(timeout=30)
        exited_after = time.monotonic() - live_at
    finally:
        server.stop()
    errors = [line for line in server.log_text().splitlines() if " ERROR " in line]
    return FailedStart(samples, code, exited_after, errors, predictions)


def test_corrupt_weights_never_ready_clear_error_then_exit_non_zero(corrupt_start, capsys):
    not_ready, ready = check_health_samples(corrupt_start.samples)
    assert not_ready > 0 and ready == 0, corrupt_start.samples
    for sample in corrupt_start.samples:
        statuses = dict(sample.statuses)
        assert statuses["/ping"] == 500 and statuses["/v2/health/ready"] == 503, sample
    assert corrupt_start.exit_code != 0
    assert corrupt_start.exited_after_s < 30, "gives up after the retry window (3 s), not much later"
    failures = [line for line in corrupt_start.errors if "failed to load" in line]
    with capsys.disabled():
        print(f"\ncorrupt weights: {not_ready} not-ready probes, exit code {corrupt_start.exit_code} "
              f"{corrupt_start.exited_after_s:.1f}s after live; ERROR line: {failures[:1]}")
    assert failures, corrupt_start.errors
    assert all("model-corrupt" in line and "deserializing" in line for line in failures), failures
    assert any("giving up loading model corrupt" in line for line in corrupt_start.errors)


def test_predictions_while_not_ready_are_503(corrupt_start):
    for route, response in corrupt_start.predictions.items():
        assert response.status_code == 503, (route, response.text)
        assert "Traceback" not in response.text


def test_predictions_while_not_ready_say_when_to_retry(corrupt_start):
    missing = [route for route, r in corrupt_start.predictions.items() if "retry-after" not in r.headers]
    assert missing == []


def test_corrupt_weights_error_names_the_file(corrupt_start):
    failures = [line for line in corrupt_start.errors if "failed to load" in line]
    assert failures and all("model.safetensors" in line for line in failures), failures


def test_weights_fixed_during_the_retry_window_load_and_serve(base_models, reliability_workdir, seq_core,
                                                               server_zygote):
    model_dir, good = _corrupt_copy(base_models["seq"], reliability_workdir / "model-fixed-later")
    server = ServerProcess.launch("fixed", model_dir, reliability_workdir, "--load_retry_seconds", "60",
                                  zygote=server_zygote)  # its exit is not under test
    try:
        server.wait_live(time.monotonic() + 120)
        failing = _sample_until(server, lambda: "failed to load" in server.log_text(), 30)
        (model_dir / "model.safetensors").write_bytes(good)  # as a storage initializer finishing late would
        samples = failing + _wait_ready_samples(server, 60)
        check_health_samples(samples, start_ready=False)
        assert not all(samples[0].ready) and all(samples[-1].ready)
        text = "the food was good and the staff friendly"
        response = httpx.post(f"{server.url}/predictions/fixed", content=text.encode(), timeout=30)
        assert (response.status_code, response.text) == (200, expected_answer(seq_core, text))
    finally:
        server.kill()  # nothing more is checked; a drain would only cost time
        shutil.rmtree(model_dir, ignore_errors=True)


def _wait_ready_samples(server: ServerProcess, deadline_s: float) -> list[HealthSample]:
    samples: list[HealthSample] = []
    deadline = time.monotonic() + deadline_s
    while not samples or not all(samples[-1].ready):
        assert server.proc.poll() is None, server.log_tail()
        assert time.monotonic() < deadline, f"not ready {deadline_s:.0f}s after the weights were fixed"
        samples.append(server.health(timeout=2.0))
        time.sleep(0.05)
    return samples
