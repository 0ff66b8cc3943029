"""Generation under mixed lengths: 16 greedy clients with max_new_tokens drawn from 8..256 against the same
16 at one length (the mean), in process and through a real server; and a short streamed request's time to
its first generated text under the mixed load against the same request alone.

    python -m predictor.bench.generation_mixed --seconds 20 --rounds 2 [--compare-with OTHER_CHECKOUT]

The two tokens/s phases (mixed, equal) run under the same conditions: the 16 clients and nothing else.
The first-token probe (a 17th client) runs in a third phase of its own, under the mixed load.

With --compare-with, each measurement runs as a subprocess against each checkout's `predictor` in turn,
round after round (A B A B ...), so that both meet the same drift of a shared machine; this file's code
measures both, so both are measured the same way. Prints one JSON document.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

CLIENTS = 16
LOW, HIGH = 8, 256
PROBE_TOKENS = 8
WARM_UP_S = 3.0
PROMPTS = ["The quick brown fox", "Once upon a time in a small town", "The weather today", "Hello",
           "In the beginning there was", "A long time ago", "The results of the study show that",
           "My name is"]


def build_model(dest: Path) -> Path:
    """A small random GPT-2 (4 layers, 128 wide, 512 positions) with the benchmark's byte-level tokenizer."""
    import torch
    from transformers import AutoTokenizer, GPT2Config, GPT2LMHeadModel

    from predictor.bench.models import GPT2_TRAINING_TEXT, save_tiny_gpt2, write_model_config

    if (dest / "model-config.yaml").exists():
        return dest
    save_tiny_gpt2(dest, GPT2_TRAINING_TEXT)
    tokenizer = AutoTokenizer.from_pretrained(dest)
    torch.manual_seed(0)
    config = GPT2Config(vocab_size=len(tokenizer), n_positions=512, n_embd=128, n_layer=4, n_head=4,
                        bos_token_id=tokenizer.eos_token_id, eos_token_id=tokenizer.eos_token_id)
    GPT2LMHeadModel(config).eval().save_pretrained(dest)
    write_model_config(dest, {"model_name": "mixed-gpt2", "mode": "text_generation", "max_length": 64,
                              "max_new_tokens": 32, "max_new_tokens_limit": 512})
    return dest


def budgets(mixed: bool, count: int, seed: int) -> list[int]:
    """max_new_tokens of `count` requests: drawn from LOW..HIGH, or all at the draw's mean."""
    rng = random.Random(seed)
    drawn = [rng.randint(LOW, HIGH) for _ in range(count)]
    return drawn if mixed else [round(statistics.mean(drawn))] * count


def _body(prompt: str, n: int) -> dict[str, Any]:
    return {"text": prompt, "details": True, "parameters": {"max_new_tokens": n, "do_sample": False}}


def _closed_loop(run_one: Callable[[int, int], int], mixed: bool, seconds: float,
                 probe: Callable[[], float] | None) -> dict[str, Any]:
    """CLIENTS threads issue requests back to back for `seconds`; aggregate tokens/s within that window.

    A request counts the share of its tokens that falls inside the window (its tokens spread evenly
    over its time): requests still running at the end (the long ones of a mixed load, which would
    drain alone) count what they made in time. Tokens are as generated: a request that meets an
    end-of-sequence id stops early and counts what it made.
    """
    spans: list[tuple[float, float, int]] = []
    lock = threading.Lock()
    started = time.perf_counter()
    stop_at = started + seconds
    first: list[float] = []

    def client(k: int) -> None:
        plan, n = budgets(mixed, 64, seed=k), 0
        while time.perf_counter() < stop_at:
            begun = time.perf_counter()
            got = run_one(n + k, plan[n % len(plan)])
            n += 1
            with lock:
                spans.append((begun, time.perf_counter(), got))

    def prober() -> None:
        while probe is not None and time.perf_counter() < stop_at:
            first.append(probe())

    threads = [threading.Thread(target=client, args=(k,)) for k in range(CLIENTS)]
    threads.append(threading.Thread(target=prober))
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    inside = sum(tokens * max(0.0, min(end, stop_at) - begun) / max(end - begun, 1e-9)
                 for begun, end, tokens in spans)
    out: dict[str, Any] = {"tokens_per_s": round(inside / seconds, 1), "requests": len(spans)}
    if first:
        out["short_first_token_ms_p50"] = round(statistics.median(first) * 1000, 1)
    return out


def measure_inprocess(model_dir: Path, seconds: float) -> dict[str, Any]:
    """handler.predict from CLIENTS threads (mixed, then equal); a streamed short request's first text."""
    from predictor.handler import GeneralizedHandler

    handler = GeneralizedHandler(model_dir)
    handler.load()

    def run_one(k: int, n: int) -> int:
        [answer] = handler.predict([handler.parse(_body(PROMPTS[k % len(PROMPTS)], n))])
        return int(answer["generated_tokens"])

    def probe() -> float:
        started = time.perf_counter()
        chunks = handler.stream(handler.parse(_body(PROMPTS[1], PROBE_TOKENS)))
        next(chunks)  # the prompt's echo
        next(chunks)  # the first generated text
        elapsed = time.perf_counter() - started
        for _ in chunks:
            pass
        return elapsed

    return _phases(run_one, probe, seconds)


def _phases(run_one: Callable[[int, int], int], probe: Callable[[], float], seconds: float) -> dict[str, Any]:
    """A lone probe's first token; mixed and equal tokens/s (no probe); the probe under the mixed load.

    A short mixed load first (not counted): neither measured phase pays the process's first steps.
    """
    _closed_loop(run_one, True, WARM_UP_S, None)
    lone = statistics.median(probe() for _ in range(10))
    return {"lone_first_token_ms_p50": round(lone * 1000, 1),
            "mixed": _closed_loop(run_one, True, seconds, None),
            "equal": _closed_loop(run_one, False, seconds, None),
            "mixed_with_probe": _closed_loop(run_one, True, seconds, probe)}


def measure_server(model_dir: Path, seconds: float) -> dict[str, Any]:
    """The same through `python -m predictor` (TorchServe route; the probe streams with ?stream=true)."""
    import httpx

    from predictor.bench.server_process import ServerProcess

    logs = Path(tempfile.mkdtemp(prefix="gen-mixed-"))
    with ServerProcess(model_dir, "gen", logs / "server.log") as server:
        url = f"{server.base_url}/predictions/gen"
        local = threading.local()

        def client() -> httpx.Client:
            if not hasattr(local, "client"):
                local.client = httpx.Client(timeout=300.0)
            return local.client  # type: ignore[no-any-return]

        def run_one(k: int, n: int) -> int:
            answer = client().post(url, json=_body(PROMPTS[k % len(PROMPTS)], n))
            answer.raise_for_status()
            return int(answer.json()["generated_tokens"])

        def probe() -> float:
            started, first, received = time.perf_counter(), None, 0
            echo = len(PROMPTS[1].encode())
            body = _body(PROMPTS[1], PROBE_TOKENS)
            with client().stream("POST", url + "?stream=true", json=body) as response:
                for chunk in response.iter_raw():
                    received += len(chunk)
                    if first is None and received > echo:
                        first = time.perf_counter() - started
            return first if first is not None else time.perf_counter() - started

        run_one(0, 8)
        return _phases(run_one, probe, seconds)


def ratios(result: dict[str, Any]) -> dict[str, Any]:
    mixed, equal = result["mixed"], result["equal"]
    return {**result,
            "mixed_over_equal_tokens_per_s": round(mixed["tokens_per_s"] / equal["tokens_per_s"], 2),
            "short_first_token_over_lone": round(result["mixed_with_probe"]["short_first_token_ms_p50"]
                                                 / result["lone_first_token_ms_p50"], 2)}


def _measure_in(checkout: Path, side: str, model_dir: Path, seconds: float) -> dict[str, Any]:
    """One measurement in a subprocess: this file's code, `checkout`'s predictor package.

    runpy rather than `python FILE`, which would put this folder first on sys.path.
    """
    env = {**os.environ, "PYTHONPATH": str(checkout), "HF_HUB_OFFLINE": "1",
           "TOKENIZERS_PARALLELISM": "false"}
    argv = ["generation_mixed", "--measure", side, "--model_dir", str(model_dir), "--seconds", str(seconds)]
    here = str(Path(__file__))
    run = f"import runpy, sys; sys.argv = {argv!r}; runpy.run_path({here!r}, run_name='__main__')"
    out = subprocess.run([sys.executable, "-c", run], cwd=checkout, env=env, check=True, capture_output=True,
                         text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


def main(argv: Sequence[str] | None = None) -> None:
    """Build the model, then measure each side (in process, server) in each checkout, interleaved."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=20.0, help="per load phase")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--sides", default="inprocess,server")
    parser.add_argument("--compare-with", type=Path,
                        help="another checkout (e.g. the code before), measured in turn")
    parser.add_argument("--model_dir", type=Path)
    parser.add_argument("--measure", choices=["inprocess", "server"], help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.measure:
        measure = measure_inprocess if args.measure == "inprocess" else measure_server
        print(json.dumps(ratios(measure(args.model_dir, args.seconds))))
        return
    model_dir = build_model(args.model_dir or Path(tempfile.gettempdir()) / "predictor-gen-mixed")
    here = Path(__file__).resolve().parents[2]  # the folder that holds this predictor package
    checkouts = {"this": here, **({"other": args.compare_with.resolve()} if args.compare_with else {})}
    results: dict[str, dict[str, list[Any]]] = {name: {} for name in checkouts}
    for _ in range(args.rounds):
        for side in args.sides.split(","):
            for name, checkout in checkouts.items():
                result = _measure_in(checkout, side, model_dir, args.seconds)
                results[name].setdefault(side, []).append(result)
    print(json.dumps({"machine_note": "shared machine: checkouts and rounds interleaved", "clients": CLIENTS,
                      "max_new_tokens": [LOW, HIGH], "results": results}, indent=1))


if __name__ == "__main__":
    main()
