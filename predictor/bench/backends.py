"""Backends the predictor's config offers (handler.backend, pt2.compile), each measured in its own process.

A child process per backend keeps a slow compile or a crash from taking the run down: it is
given a time limit, and whatever goes wrong is reported as the backend being unavailable.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import queue
import signal
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

EAGER = "eager"
COMPILE = "compile"


@dataclass(frozen=True)
class Variant:
    """One way to run the model, as a change to its model-config.yaml."""

    name: str
    handler: dict[str, Any] = field(default_factory=dict)
    top: dict[str, Any] = field(default_factory=dict)

    def write_config(self, model_dir: Path, dest: Path) -> Path:
        """The model's config with this variant's keys set, written to dest."""
        doc = yaml.safe_load((model_dir / "model-config.yaml").read_text(encoding="utf-8"))
        doc["handler"] = {**doc["handler"], **self.handler}
        doc.update(self.top)
        dest.write_text(yaml.safe_dump(doc, sort_keys=False), encoding="utf-8")
        return dest


def supported_variants() -> list[Variant]:
    """Eager first, then every non-eager `handler.backend` value, then `pt2.compile` if the config has it."""
    from predictor import config

    variants = [Variant(EAGER, handler={"backend": EAGER})]
    variants += [Variant(b.value, handler={"backend": b.value}) for b in config.Backend
                 if b.value not in (EAGER, "auto")]  # auto is what the server section serves
    if hasattr(config, "CompileConfig"):
        variants.append(Variant(COMPILE, top={"pt2": {"compile": {"enable": True}}}))
    return variants


def applied(variant: str, runner: Any) -> bool:
    """Whether the loaded runner shows the variant took effect (the loader may fall back to eager)."""
    import torch

    from predictor.loading import ModelRunner

    module = getattr(runner, "module", None)
    if variant == "int8":
        return isinstance(module, torch.nn.Module) and any("quantized" in type(m).__module__
                                                           for m in module.modules())
    if variant == COMPILE:
        return getattr(module, "_compiled_call_impl", None) is not None
    if variant == "onnx":
        return not isinstance(runner, ModelRunner)  # ONNX Runtime replaces the PyTorch runner
    return True


def measure_variant(model_dir: str, config_path: str, variant: str, texts: Sequence[str],
                    sizes: Sequence[int], duration_s: float, threads: int, cache_dir: str,
                    attempts: int = 3) -> dict[str, Any]:
    """Load through GeneralizedHandler with the variant's config and time its forward passes (child side)."""
    import torch

    from predictor.bench.inprocess import batch_rows, padded_batches, timed_loop
    from predictor.handler import GeneralizedHandler

    torch.set_num_threads(threads)
    warnings = _WarningRecords()
    logging.getLogger("predictor").addHandler(warnings)
    started = time.perf_counter()
    handler = GeneralizedHandler(Path(model_dir), config_path=Path(config_path), cache_dir=Path(cache_dir))
    handler.load()
    load_s = time.perf_counter() - started
    task: Any = handler.state.task  # the Task protocol does not name model and tokenizer
    runner = task.model
    result: dict[str, Any] = {"load_s": round(load_s, 2), "runner": type(runner).__name__,
                              "module": type(getattr(runner, "module", None)).__name__,
                              "applied": applied(variant, runner), "warnings": warnings.messages}
    if not result["applied"]:
        return result
    max_length = handler.config.handler.max_length

    def forward(batch: dict[str, torch.Tensor]) -> Any:
        with torch.inference_mode():
            return runner(batch)[0]

    per_size = {}
    for size in sizes:
        batches = padded_batches(task.tokenizer, texts, size, max_length)
        loop = timed_loop(forward, batches, batch_rows, duration_s, attempts=attempts)
        per_size[str(size)] = {"seq_per_s": round(loop.rows_per_s, 1),
                               "forward_ms_median": round(loop.median_ms, 2),
                               "foreign_cpu_cores": loop.foreign_cpu_cores}
    result["batch_sizes"] = per_size
    with torch.inference_mode():
        probs = [torch.softmax(forward(b).float(), -1)
                 for b in padded_batches(task.tokenizer, texts, 8, max_length)]
    result["probabilities"] = torch.cat(probs).tolist()
    return result


class _WarningRecords(logging.Handler):
    """The predictor's warnings while a backend loads (why it fell back to eager, say)."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage()[:300])


def _child(out: Any, kwargs: dict[str, Any]) -> None:
    os.setpgrp()  # its own process group, so a timeout also ends the compile workers it may start
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        out.put({"ok": measure_variant(**kwargs)})
    except BaseException as exc:  # reported as "unavailable" by the parent; the child exits either way
        out.put({"error": f"{type(exc).__name__}: {exc}"})


def run_isolated(kwargs: dict[str, Any], timeout_s: float) -> dict[str, Any]:
    """measure_variant in a fresh (spawned) process, killed after timeout_s."""
    ctx = multiprocessing.get_context("spawn")
    out = ctx.Queue()
    # Not a daemon: torch.compile's workers are child processes, which daemons may not have.
    process = ctx.Process(target=_child, args=(out, kwargs))
    process.start()
    try:
        message = out.get(timeout=timeout_s)
    except queue.Empty:
        message = {"error": f"no result within {timeout_s:g}s (time limit)"}
    finally:
        process.join(timeout=5)
        if process.pid is not None:
            try:  # the child if it is stuck, and any worker it left behind
                os.killpg(process.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        if process.is_alive():  # killed before it made its own group
            process.kill()
        process.join()
    return message


def agreement(reference: list[list[float]], other: list[list[float]]) -> dict[str, float]:
    """Label agreement (%) and the largest probability difference between two runs on the same texts."""
    same = sum(1 for a, b in zip(reference, other, strict=True) if _argmax(a) == _argmax(b))
    diff = max(abs(x - y) for a, b in zip(reference, other, strict=True) for x, y in zip(a, b, strict=True))
    return {"label_agreement_pct": round(100.0 * same / len(reference), 2), "max_prob_diff": round(diff, 5)}


def _argmax(values: list[float]) -> int:
    return max(range(len(values)), key=values.__getitem__)


def measure_backends(model_dir: Path, workdir: Path, texts: Sequence[str], *, reference: list[list[float]],
                     sizes: Sequence[int], duration_s: float, threads: int, timeout_s: float,
                     skip: Sequence[str] = (), attempts: int = 3) -> dict[str, Any]:
    """Every supported non-eager variant: throughput per batch size and agreement with `reference` (eager
    probabilities on the same texts, batches of 8); never raises for a variant."""
    results: dict[str, Any] = {}
    for variant in supported_variants():
        if variant.name == EAGER:
            continue  # the in-process limit is the eager figure, measured on the same module
        if variant.name in skip:
            results[variant.name] = {"status": "skipped", "error": "not measured in this run (--quick skips "
                                                                   "compile; see also --skip-backend)"}
            continue
        config_path = variant.write_config(model_dir, workdir / f"model-config.{variant.name}.yaml")
        kwargs = {"model_dir": str(model_dir), "config_path": str(config_path), "variant": variant.name,
                  "texts": list(texts), "sizes": list(sizes), "duration_s": duration_s, "threads": threads,
                  "cache_dir": str(workdir / "cache"), "attempts": attempts}
        message = run_isolated(kwargs, timeout_s)
        if "error" in message:
            results[variant.name] = {"status": "unavailable", "error": message["error"]}
            continue
        measured = message["ok"]
        probs = measured.pop("probabilities", None)
        if not measured["applied"]:
            why = "; ".join(measured["warnings"]) or "no warning logged"
            results[variant.name] = {
                "status": "not_applied", **measured,
                "error": f"the config accepts {variant.name!r} but the model runs eager "
                         f"({measured['runner']} of {measured['module']}): {why}"}
            continue
        entry = {"status": "ok", **measured}
        if probs is not None:
            entry.update(agreement(reference, probs))
        results[variant.name] = entry
    return results
