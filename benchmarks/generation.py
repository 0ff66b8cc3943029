"""Text generation: greedy tokens/s in process vs through the server, and time to the first streamed chunk."""

from __future__ import annotations

import json
import statistics
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import httpx
import torch

from benchmarks.corpus import spread
from predictor.config import load_model_config


def generation_prompts(texts: Sequence[str], count: int, words: int = 8) -> list[str]:
    """The first words of texts spread over the corpus: short prompts that never hit max_length."""
    return [" ".join(t.split()[:words]) for t in spread(list(texts), count)]


def _round(value: float | None, digits: int = 2) -> float | None:
    return None if value is None else round(value, digits)


def inprocess_generation(model_dir: Path, prompts: Sequence[str], max_new_tokens: int,
                         duration_s: float) -> dict[str, Any]:
    """model.generate alone, greedy, one prompt at a time, truncated as the predictor truncates prompts."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    max_length = load_model_config(model_dir / "model-config.yaml").handler.max_length
    tokenizer = AutoTokenizer.from_pretrained(model_dir, local_files_only=True)
    tokenizer.truncation_side = "left"
    model = AutoModelForCausalLM.from_pretrained(model_dir, local_files_only=True).eval()

    def generate(prompt: str, new_tokens: int) -> int:
        enc = tokenizer(prompt, truncation=True, max_length=max_length, return_tensors="pt")
        with torch.inference_mode():
            out = model.generate(**enc, max_new_tokens=new_tokens, do_sample=False,
                                 pad_token_id=tokenizer.eos_token_id)
        return int(out.shape[1] - enc["input_ids"].shape[1])

    generate(prompts[0], max_new_tokens)  # warm-up
    tokens, latencies, first = 0, [], []
    deadline = time.perf_counter() + duration_s
    n = 0
    while time.perf_counter() < deadline or n < len(prompts):
        prompt = prompts[n % len(prompts)]
        started = time.perf_counter()
        generate(prompt, 1)
        first.append(time.perf_counter() - started)
        started = time.perf_counter()
        tokens += generate(prompt, max_new_tokens)
        latencies.append(time.perf_counter() - started)
        n += 1
    return {"requests": len(latencies), "tokens": tokens, "tokens_per_s": _round(tokens / sum(latencies), 1),
            "latency_ms_median": _round(statistics.median(latencies) * 1000),
            "first_token_ms_median": _round(statistics.median(first) * 1000)}


def server_generation(base_url: str, name: str, prompts: Sequence[str], max_new_tokens: int,
                      duration_s: float) -> dict[str, Any]:
    """One client, one request at a time (concurrency 1); tokens counted from the server's details."""
    url = f"{base_url}/predictions/{name}"
    tokens, latencies, errors = 0, [], []
    with httpx.Client(timeout=120.0) as client:
        client.post(url, json=_body(prompts[0], max_new_tokens, details=True))  # warm-up
        deadline = time.perf_counter() + duration_s
        n = 0
        while time.perf_counter() < deadline or n < len(prompts):
            started = time.perf_counter()
            response = client.post(url, json=_body(prompts[n % len(prompts)], max_new_tokens, details=True))
            elapsed = time.perf_counter() - started
            n += 1
            if response.status_code != 200:
                errors.append(f"{response.status_code}: {response.text[:200]}")
                continue
            tokens += int(response.json()["generated_tokens"])
            latencies.append(elapsed)
    return {"requests": len(latencies), "errors": len(errors), "error_samples": errors[:3], "tokens": tokens,
            "tokens_per_s": _round(tokens / sum(latencies), 1) if latencies else None,
            "latency_ms_median": _round(statistics.median(latencies) * 1000) if latencies else None}


def _body(prompt: str, max_new_tokens: int, *, details: bool = False) -> dict[str, Any]:
    body: dict[str, Any] = {"text": prompt,
                            "parameters": {"max_new_tokens": max_new_tokens, "do_sample": False}}
    if details:
        body["details"] = True
    return body


def server_streaming(base_url: str, name: str, model_dir: Path, prompts: Sequence[str], max_new_tokens: int,
                     requests: int) -> dict[str, Any]:
    """`?stream=true`: time to the first chunk (the prompt echo), to the first generated text, to the end."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir, local_files_only=True)
    url = f"{base_url}/predictions/{name}?stream=true"
    first_chunk, first_text, total, errors = [], [], [], []
    with httpx.Client(timeout=120.0) as client:
        for n in range(requests + 1):  # the first is a warm-up
            prompt = prompts[n % len(prompts)]
            echo_text = str(tokenizer.decode(tokenizer(prompt)["input_ids"], skip_special_tokens=True))
            echo = len(echo_text.encode("utf-8"))
            times = _stream_once(client, url, json.dumps(_body(prompt, max_new_tokens)).encode(), echo)
            if isinstance(times, str):
                errors.append(times)
            elif n > 0:
                first_chunk.append(times[0])
                if times[1] is not None:
                    first_text.append(times[1])
                total.append(times[2])
    return {"requests": len(total), "errors": len(errors), "error_samples": errors[:3],
            "first_chunk_ms_median": _ms_median(first_chunk),
            "first_generated_text_ms_median": _ms_median(first_text),
            "complete_ms_median": _ms_median(total)}


def _ms_median(values: Sequence[float]) -> float | None:
    return _round(statistics.median(values) * 1000) if values else None


def _stream_once(client: httpx.Client, url: str, body: bytes,
                 echo_bytes: int) -> tuple[float, float | None, float] | str:
    """(first chunk, first byte past the prompt echo, end) in seconds, or an error text."""
    started = time.perf_counter()
    first: float | None = None
    generated: float | None = None
    received = 0
    with client.stream("POST", url, content=body, headers={"content-type": "application/json"}) as response:
        if response.status_code != 200:
            return f"{response.status_code}: {response.read()[:200]!r}"
        for chunk in response.iter_raw():
            now = time.perf_counter() - started
            if chunk and first is None:
                first = now
            received += len(chunk)
            if generated is None and received > echo_bytes:
                generated = now
    return (first if first is not None else time.perf_counter() - started, generated,
            time.perf_counter() - started)
