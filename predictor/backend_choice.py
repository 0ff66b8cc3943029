"""`handler.backend: auto`: build the installed backends, keep those that agree with eager, serve the fastest.

The decision is cached next to the exports, keyed by the model's hash, the machine and the library
versions, so a restart neither exports nor times again.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import math
import os
import platform
import statistics
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

import torch

from predictor.config import ModelConfig, TaskName
from predictor.devices import DevicePlan
from predictor.export_cache import export_folder, scratch_path, weights_digest

logger = logging.getLogger(__name__)

EAGER = "eager"
# Agreement with eager: softmax probabilities within this, and the same argmax everywhere.
PROB_TOLERANCE = 1e-4
TIMING_ROUNDS = 3
_PROBE_TEXTS = (
    "Short one.",
    "Ada Lovelace wrote the first program for Charles Babbage's engine in London.",
    " ".join(["Marie Curie was born in Warsaw and won two Nobel prizes in Paris."] * 12),
)
_PROBE_QUESTION = "Who wrote the first program?"
_MODEL_INPUTS = ("input_ids", "attention_mask", "token_type_ids")
_PROBE_MAX_TOKENS = 128  # timing at the longest inputs of a 512-token model would dominate load time
_ENCODER_MODES = (TaskName.SEQUENCE_CLASSIFICATION, TaskName.TOKEN_CLASSIFICATION,
                  TaskName.QUESTION_ANSWERING)


@dataclass(frozen=True)
class Trial:
    """One candidate's result: built or not (error), agreement with eager, median time of the probe set."""

    backend: str
    error: str | None = None
    agrees: bool = False
    max_prob_diff: float = math.nan
    ms: float = math.nan


def choose(trials: Sequence[Trial]) -> str:
    """The fastest backend that was built and agrees with eager; eager when none does."""
    usable = [t for t in trials if t.error is None and t.agrees and not math.isnan(t.ms)]
    return min(usable, key=lambda t: t.ms).backend if usable else EAGER


def eager_only_reason(runner: Any, config: ModelConfig, plan: DevicePlan) -> str | None:
    """Why `auto` must serve eager for this model, or None when the compiled backends are candidates."""
    mode = config.handler.mode
    if mode not in _ENCODER_MODES:
        return f"{mode.value} generates with the model's own generate()"
    if plan.is_cuda or plan.device_map:
        return "the model runs on CUDA; the candidates are CPU engines"
    if runner.torchscript:
        return "a TorchScript model has no exportable transformers module"
    if config.compile.enable:
        return "pt2.compile is configured"
    if plan.dtype != torch.float32:
        return f"dtype {plan.dtype} (the candidates are compared and served in float32)"
    return None


def probe_batches(tokenizer: Any, mode: TaskName, max_length: int) -> list[dict[str, torch.Tensor]]:
    """Fixed inputs of a few lengths and batch sizes (1, 3, 8), tokenised and padded as the tasks pad them.

    One long row (up to 128 tokens) checks positions far past the export's sample; the batch of 8 is of
    short and medium texts, which keeps the timing rounds cheap on big models.
    """
    length = min(max_length, _PROBE_MAX_TOKENS)
    groups = [list(_PROBE_TEXTS[:1]), list(_PROBE_TEXTS), [_PROBE_TEXTS[i % 2] for i in range(8)]]
    batches = []
    for texts in groups:
        pair = ([_PROBE_QUESTION] * len(texts), texts) if mode is TaskName.QUESTION_ANSWERING else (texts,)
        encoded = tokenizer(*pair, truncation=True, max_length=length, padding=True, padding_side="right",
                            return_tensors="pt")
        batches.append({k: v for k, v in encoded.items() if k in _MODEL_INPUTS})
    return batches


def probabilities(output: torch.Tensor, mask: torch.Tensor, mode: TaskName) -> torch.Tensor:
    """Softmax probabilities of the positions a task reads (padding left out)."""
    scores = output.float()
    if mode is TaskName.QUESTION_ANSWERING:  # per-position span scores, softmax over the sequence
        return torch.softmax(scores.masked_fill(mask == 0, -math.inf), -1)
    probs = torch.softmax(scores, -1)
    return probs[mask.bool()] if mode is TaskName.TOKEN_CLASSIFICATION else probs


def compare(reference: Sequence[Sequence[torch.Tensor]], outputs: Sequence[Sequence[torch.Tensor]],
            batches: Sequence[Mapping[str, torch.Tensor]], mode: TaskName) -> tuple[bool, float]:
    """(agrees, max abs probability difference) of a candidate's outputs against eager's, batch by batch."""
    agrees, worst = True, 0.0
    for ref_out, out, batch in zip(reference, outputs, batches, strict=True):
        needed = 2 if mode is TaskName.QUESTION_ANSWERING else 1
        if len(out) < needed:
            return False, math.inf
        for ref_t, t in zip(ref_out[:needed], out[:needed], strict=True):
            if ref_t.shape != t.shape:
                return False, math.inf
            p_ref = probabilities(ref_t, batch["attention_mask"], mode)
            p = probabilities(t, batch["attention_mask"], mode)
            worst = max(worst, float((p_ref - p).abs().max()))
            agrees = agrees and bool(torch.equal(p_ref.argmax(-1), p.argmax(-1)))
    return agrees and worst <= PROB_TOLERANCE, worst


def _run_all(runner: Any, batches: Sequence[Mapping[str, torch.Tensor]]) -> list[tuple[torch.Tensor, ...]]:
    with torch.inference_mode():
        return [tuple(t.detach().cpu() for t in runner(b)) for b in batches]


def time_ms(runner: Any, batches: Sequence[Mapping[str, torch.Tensor]], rounds: int = TIMING_ROUNDS) -> float:
    """Median over rounds of the time to run every probe batch once, in milliseconds."""
    times = []
    with torch.inference_mode():
        for _ in range(rounds):
            started = time.perf_counter()
            for batch in batches:
                runner(batch)
            times.append((time.perf_counter() - started) * 1000)
    return statistics.median(times)


def _builders() -> dict[str, Callable[[Any, Path, Path], Any]]:
    """The installed compiled backends, by name."""
    found: dict[str, Callable[[Any, Path, Path], Any]] = {}
    if importlib.util.find_spec("onnxruntime") is not None:
        from predictor.onnx_backend import load_onnx

        found["onnx"] = load_onnx
    if importlib.util.find_spec("openvino") is not None:
        from predictor.openvino_backend import load_openvino

        found["openvino"] = load_openvino
    return found


def decision_key(config: ModelConfig) -> dict[str, Any]:
    """What a cached choice depends on besides the weights: the machine, the thread count, the versions."""
    cpu = platform.processor()
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                   if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    versions = {}
    for package in ("predictor", "torch", "transformers", "onnxruntime", "openvino"):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = None
    return {"cpu": cpu, "cores": os.cpu_count(), "threads": torch.get_num_threads(),
            "mode": config.handler.mode.value, "max_length": config.handler.max_length, "versions": versions}


def log_table(trials: Sequence[Trial], choice: str) -> None:
    """One INFO line per candidate, then the choice."""
    logger.info("backend auto: %-9s %-7s %-14s %s", "backend", "agrees", "max prob diff", "ms")
    for t in trials:
        agrees = "failed" if t.error else ("yes" if t.agrees else "no")
        logger.info("backend auto: %-9s %-7s %-14.2g %.2f", t.backend, agrees, t.max_prob_diff, t.ms)
    logger.info("backend auto: serving %s (the fastest that agrees with eager)", choice)


def run_trials(runner: Any, built: Mapping[str, Any], failures: Mapping[str, str],
               batches: Sequence[Mapping[str, torch.Tensor]], mode: TaskName) -> list[Trial]:
    """Agreement and timing of every built candidate against the eager runner."""
    reference = _run_all(runner, batches)
    trials = [Trial(EAGER, agrees=True, max_prob_diff=0.0, ms=time_ms(runner, batches))]
    for name, candidate in built.items():
        try:
            agrees, diff = compare(reference, _run_all(candidate, batches), batches, mode)
            trials.append(Trial(name, agrees=agrees, max_prob_diff=diff, ms=time_ms(candidate, batches)))
        except Exception as exc:  # a runtime that builds but cannot run these shapes is skipped, not fatal
            logger.warning("backend auto: %s failed on the probe inputs (%s: %s)", name,
                           type(exc).__name__, exc)
            trials.append(Trial(name, error=f"{type(exc).__name__}: {exc}"))
    trials += [Trial(name, error=error) for name, error in failures.items()]
    return trials


def select_backend(runner: Any, config: ModelConfig, source_dir: Path, cache_dir: Path) -> Any:
    """The runner `auto` serves: a cached choice, else the fastest candidate that agrees with eager."""
    builders = _builders()
    folder = export_folder(source_dir, cache_dir)
    digest = weights_digest(source_dir)
    key = decision_key(config)
    # One file per key: several thread counts or machines sharing a cache volume keep their own choice.
    key_hash = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:12]
    decision_file = folder / f"model-{digest}.backend-{key_hash}.json"
    cached = _read_decision(decision_file)
    if cached is not None and cached.get("key") == key:
        choice = cached["choice"]
        logger.info("backend auto: serving %s (cached choice for this model and machine, %s)", choice,
                    decision_file)
        if choice == EAGER:
            return runner
        try:
            return builders[choice](runner, source_dir, cache_dir)
        except Exception as exc:  # e.g. the runtime was uninstalled: decide again
            logger.warning("backend auto: cached choice %s unavailable (%s); choosing again", choice, exc)
    built: dict[str, Any] = {}
    failures: dict[str, str] = {}
    for name, build in builders.items():
        try:
            built[name] = build(runner, source_dir, cache_dir)
        except Exception as exc:  # exporter coverage varies by architecture: skip the candidate, keep serving
            logger.warning("backend auto: %s could not be built (%s: %s)", name, type(exc).__name__, exc)
            failures[name] = f"{type(exc).__name__}: {exc}"
    from predictor import artifacts

    tokenizer = artifacts.load_tokenizer(source_dir, config)
    batches = probe_batches(tokenizer, config.handler.mode, config.handler.max_length)
    trials = run_trials(runner, built, failures, batches, config.handler.mode)
    choice = choose(trials)
    log_table(trials, choice)
    _write_decision(decision_file, {"key": key, "choice": choice, "trials": [asdict(t) for t in trials]})
    return runner if choice == EAGER else built[choice]


def _read_decision(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _write_decision(path: Path, decision: Mapping[str, Any]) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = scratch_path(path)
        partial.write_text(json.dumps(decision, indent=1), encoding="utf-8")
        partial.replace(path)
    except OSError as exc:  # a read-only cache costs the next start a re-timing, nothing else
        logger.warning("backend auto: cannot cache the choice in %s (%s)", path, exc)
