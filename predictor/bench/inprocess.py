"""In-process reference figures: the model's own limit, and the seed handler's way of running it."""

from __future__ import annotations

import statistics
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from predictor.bench import machine
from predictor.config import ModelConfig, load_model_config

Batch = dict[str, torch.Tensor]
QUIET_WAIT_S = 20.0  # how long a disturbed measurement waits for the machine before its next attempt


@dataclass
class Classifier:
    """An eager transformers classifier, its tokenizer and the serving config it comes with."""

    model: Any
    tokenizer: Any
    config: ModelConfig

    @property
    def max_length(self) -> int:
        """handler.max_length of the model's config."""
        return self.config.handler.max_length


def load_classifier(model_dir: Path) -> Classifier:
    """The model as transformers loads it (eager, float32, eval), independent of the predictor."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    model = AutoModelForSequenceClassification.from_pretrained(model_dir, local_files_only=True).eval()
    tokenizer = AutoTokenizer.from_pretrained(model_dir, local_files_only=True)
    config = load_model_config(model_dir / "model-config.yaml")
    return Classifier(model=model, tokenizer=tokenizer, config=config)


def padded_batches(tokenizer: Any, texts: Sequence[str], size: int, max_length: int) -> list[Batch]:
    """Consecutive texts in corpus order, `size` at a time, each batch padded to its longest member."""
    batches = []
    for start in range(0, len(texts), size):
        enc = tokenizer(list(texts[start:start + size]), padding="longest", truncation=True,
                        max_length=max_length, return_tensors="pt")
        batches.append(dict(enc))
    return batches


@dataclass
class LoopResult:
    """What a timed loop did: rows processed, wall time, and per-call latencies."""

    rows: int
    seconds: float
    latencies: list[float]
    foreign_cpu_cores: float | None = None  # what other work used meanwhile

    @property
    def rows_per_s(self) -> float:
        """Throughput in rows (sequences) per second."""
        return self.rows / self.seconds if self.seconds > 0 else 0.0

    @property
    def median_ms(self) -> float:
        """Median latency of one call, in milliseconds."""
        return statistics.median(self.latencies) * 1000 if self.latencies else 0.0


def timed_loop(call: Callable[[Any], Any], items: Sequence[Any], rows: Callable[[Any], int],
               duration_s: float, warmup_calls: int = 2, attempts: int = 3) -> LoopResult:
    """Call `call` on items round-robin until duration_s has passed (at least once), after a short warm-up.

    When other work used the machine meanwhile, wait for it to settle and measure again (at most
    `attempts` times); the least disturbed attempt is returned, with how disturbed it was.
    """
    best: LoopResult | None = None
    for attempt in range(attempts):
        if attempt:
            machine.wait_for_quiet(QUIET_WAIT_S)
        before = machine.snapshot()
        result = _loop_once(call, items, rows, duration_s, warmup_calls)
        result.foreign_cpu_cores = machine.foreign_cores(before, machine.snapshot())
        if best is None or (result.foreign_cpu_cores or 0) < (best.foreign_cpu_cores or 0):
            best = result
        if (best.foreign_cpu_cores or 0) <= machine.QUIET_CORES:
            break
    assert best is not None
    return best


def _loop_once(call: Callable[[Any], Any], items: Sequence[Any], rows: Callable[[Any], int],
               duration_s: float, warmup_calls: int) -> LoopResult:
    for item in items[:warmup_calls]:
        call(item)
    latencies: list[float] = []
    done = 0
    started = time.perf_counter()
    deadline = started + duration_s
    i = 0
    while True:
        item = items[i % len(items)]
        t0 = time.perf_counter()
        call(item)
        t1 = time.perf_counter()
        latencies.append(t1 - t0)
        done += rows(item)
        i += 1
        if t1 >= deadline:
            break
    return LoopResult(rows=done, seconds=time.perf_counter() - started, latencies=latencies)


def batch_rows(batch: Mapping[str, torch.Tensor]) -> int:
    """Sequences in a padded batch."""
    return int(batch["input_ids"].shape[0])


def forward_sweep(clf: Classifier, texts: Sequence[str], sizes: Sequence[int], duration_s: float,
                  attempts: int = 3) -> dict[str, Any]:
    """The limit: eager forward passes alone (tokenisation done beforehand), per batch size."""
    per_size: dict[str, Any] = {}

    def forward(batch: Batch) -> Any:
        with torch.inference_mode():
            return clf.model(**batch).logits

    for size in sizes:
        batches = padded_batches(clf.tokenizer, texts, size, clf.max_length)
        result = timed_loop(forward, batches, batch_rows, duration_s, attempts=attempts)
        real = sum(int(b["attention_mask"].sum()) for b in batches)
        padded = sum(int(b["attention_mask"].numel()) for b in batches)
        per_size[str(size)] = {"seq_per_s": round(result.rows_per_s, 1),
                               "forward_ms_median": round(result.median_ms, 2),
                               "calls": len(result.latencies), "padded_to_real": round(padded / real, 3),
                               "foreign_cpu_cores": result.foreign_cpu_cores}
    best = max(per_size, key=lambda k: per_size[k]["seq_per_s"])
    single = per_size.get("1", {}).get("forward_ms_median")
    return {"batch_sizes": per_size, "best_batch_size": int(best),
            "best_seq_per_s": per_size[best]["seq_per_s"], "single_forward_ms_median": single}


def side_by_side_sweep(clf: Classifier, texts: Sequence[str], sizes: Sequence[int], duration_s: float,
                       loops: int, attempts: int = 3) -> dict[str, Any]:
    """`loops` threads of one torch thread each, running forward passes at the same time on one copy
    of the model: the most the server's default layout (one model worker per core) can compute.
    """
    per_size: dict[str, Any] = {}
    restore = torch.get_num_threads()

    def run_loops(batches: list[Batch]) -> tuple[int, float]:
        start = threading.Barrier(loops)
        rows = [0] * loops
        spans = [0.0] * loops

        def loop(n: int) -> None:
            torch.set_num_threads(1)
            with torch.inference_mode():
                for batch in batches[n:n + 2]:  # warm-up
                    clf.model(**batch)
                start.wait()
                began = time.perf_counter()
                i = n * len(batches) // loops  # each loop starts elsewhere in the corpus
                while time.perf_counter() - began < duration_s:
                    batch = batches[i % len(batches)]
                    clf.model(**batch)
                    rows[n] += batch_rows(batch)
                    i += 1
                spans[n] = time.perf_counter() - began

        threads = [threading.Thread(target=loop, args=(n,)) for n in range(loops)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        return sum(rows), max(spans)

    try:
        for size in sizes:
            batches = padded_batches(clf.tokenizer, texts, size, clf.max_length)
            best: dict[str, Any] | None = None
            for attempt in range(attempts):
                if attempt:
                    machine.wait_for_quiet(QUIET_WAIT_S)
                before = machine.snapshot()
                rows, seconds = run_loops(batches)
                foreign = machine.foreign_cores(before, machine.snapshot())
                result = {"seq_per_s": round(rows / seconds, 1), "foreign_cpu_cores": foreign}
                if best is None or (foreign or 0) < (best["foreign_cpu_cores"] or 0):
                    best = result
                if (foreign or 0) <= machine.QUIET_CORES:
                    break
            per_size[str(size)] = best
    finally:
        torch.set_num_threads(restore)
    top = max(per_size, key=lambda k: per_size[k]["seq_per_s"])
    return {"loops": loops, "batch_sizes": per_size, "best_batch_size": int(top),
            "best_seq_per_s": per_size[top]["seq_per_s"]}


def single_request_ms(clf: Classifier, texts: Sequence[str], duration_s: float, attempts: int = 3) -> float:
    """Median time to tokenise one text and run it alone: what one request costs without a server."""

    def one(text: str) -> Any:
        enc = clf.tokenizer([text], truncation=True, max_length=clf.max_length, return_tensors="pt")
        with torch.inference_mode():
            return clf.model(**enc).logits

    return round(timed_loop(one, list(texts), lambda _: 1, duration_s, attempts=attempts).median_ms, 2)


def seed_way(clf: Classifier, texts: Sequence[str], duration_s: float, attempts: int = 3) -> dict[str, Any]:
    """TorchServe's handler: each request alone, padded to max_length, tokenised per request.

    The seed called `encode_plus(text, max_length=..., pad_to_max_length=True, truncation=True)`;
    transformers 5 removed both names, and `padding="max_length"` is their documented equivalent.
    """

    def one(text: str) -> Any:
        enc = clf.tokenizer(text, max_length=clf.max_length, padding="max_length", truncation=True,
                            add_special_tokens=True, return_tensors="pt")
        with torch.inference_mode():
            return clf.model(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"]).logits

    result = timed_loop(one, list(texts), lambda _: 1, duration_s, attempts=attempts)
    return {"seq_per_s": round(result.rows_per_s, 1), "latency_ms_median": round(result.median_ms, 2),
            "calls": len(result.latencies), "padded_length": clf.max_length,
            "foreign_cpu_cores": result.foreign_cpu_cores}


def probabilities(clf: Classifier, texts: Sequence[str], size: int = 8) -> list[list[float]]:
    """Class probabilities for every text (batches of `size`, padded to the longest): the eager reference."""
    rows: list[list[float]] = []
    with torch.inference_mode():
        for batch in padded_batches(clf.tokenizer, texts, size, clf.max_length):
            rows += torch.softmax(clf.model(**batch).logits.float(), -1).tolist()
    return rows
