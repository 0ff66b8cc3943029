"""Run the benchmark: the model's limit, the seed's way, the real server, backends, generation, explanations.

    python -m predictor bench --quick                 # about two minutes, a smoke run
    python -m predictor bench --out results.json      # the full run, several minutes

Everything runs on this machine, on 127.0.0.1, one measurement at a time (never two at once on
the same cores), on the same model and the same corpus texts; see predictor/bench/README.md.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import platform
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from predictor.bench import backends as backends_module
from predictor.bench import machine
from predictor.bench.corpus import describe, load_corpus, spread
from predictor.bench.load import JSON, Request, closed_loop, run_phase
from predictor.bench.models import ModelDirs, build_models
from predictor.bench.plot import default_plot_path, plot
from predictor.bench.report import derive, format_table
from predictor.bench.server_process import ServerError, ServerProcess, batch_metrics

logger = logging.getLogger("predictor.bench")

SECTIONS = ("limit", "seed", "backends", "explanations", "server", "kserve_hf", "soak", "server_variants",
            "neighbour", "backend_servers", "generation", "generation_mixed")


def server_variants(cores: int) -> dict[str, tuple[dict[str, str], tuple[str, ...]]]:
    """Full run only: the server as one model worker with every core for torch (the layout before
    model workers), its OpenMP threads spinning when idle, sleeping at once, or spinning briefly
    (10k rounds) and then sleeping (--openmp_wait short-spin). The predictor's own choice is
    measured in `server`, which records it."""
    threads = ("--intra_op_threads", str(cores))
    return {f"threads{cores}_spin": ({"OMP_WAIT_POLICY": "ACTIVE"}, threads),
            f"threads{cores}_passive": ({"OMP_WAIT_POLICY": "PASSIVE", "GOMP_SPINCOUNT": "0"}, threads),
            # the predictor's --openmp_wait short-spin: GOMP_SPINCOUNT=10000, then sleep
            f"threads{cores}_short_spin": ({}, (*threads, "--openmp_wait", "short-spin"))}

SIDE_BY_SIDE_SIZES = (1, 2, 4)  # one-thread passes are fastest at small batches (the limit shows it)
MODEL_NAME = "bench"
GENERATOR_NAME = "gen"


@dataclass(frozen=True)
class Settings:
    """How long and how much to measure; the defaults are the full run."""

    quick: bool = False
    duration_s: float = 20.0  # per server load phase
    warmup_s: float = 3.0
    inprocess_s: float = 4.0  # per batch size, per in-process figure
    concurrencies: tuple[int, ...] = (1, 8, 32)
    batch_sizes: tuple[int, ...] = (1, 2, 4, 8, 16, 32)
    backend_sizes: tuple[int, ...] = (1, 8, 32)
    backend_timeout_s: float = 600.0
    skip_backends: tuple[str, ...] = ()
    explain_inputs: int = 5
    generation_s: float = 8.0
    generation_rounds: int = 4  # in process and server alternate (generation.py)
    max_new_tokens: int = 32
    stream_requests: int = 5
    soak_s: float = 300.0  # memory over a long load at the top concurrency
    soak_chunk_s: float = 30.0  # one RSS sample per chunk
    generation_mixed_s: float = 20.0  # per phase of generation_mixed.py (mixed, equal, mixed with the probe)
    threads: int = 2
    attempts: int = 3  # per in-process figure, when other work disturbed it
    sections: tuple[str, ...] = SECTIONS

    @classmethod
    def quick_run(cls, **overrides: Any) -> Settings:
        """About two minutes: short phases, fewer inputs, no torch.compile, no server or backend variants."""
        values: dict[str, Any] = {"quick": True, "duration_s": 5.0, "warmup_s": 1.0, "inprocess_s": 0.75,
                                  "backend_sizes": (8,), "backend_timeout_s": 180.0,
                                  "skip_backends": (backends_module.COMPILE,), "explain_inputs": 1,
                                  "generation_s": 2.0, "generation_rounds": 2, "stream_requests": 2, "attempts": 1,
                                  "sections": tuple(s for s in SECTIONS
                                                    if s not in ("server_variants", "backend_servers",
                                                                 "kserve_hf", "soak", "neighbour",
                                                                 "generation_mixed"))}
        return cls(**{**values, **overrides})


@dataclass
class Run:
    """One benchmark run in progress: where it works and what it has measured so far."""

    settings: Settings
    models: ModelDirs
    workdir: Path
    texts: list[str]
    report: dict[str, Any] = field(default_factory=dict)
    classifier: Any = None

    def section(self, name: str, measure: Callable[[], Any], key: str | None = None) -> None:
        """Measure one section into report[key or name]; a failure is recorded (and sets the exit code)."""
        if name not in self.settings.sections:
            return
        logger.info("measuring: %s", name)
        started, cpu = time.perf_counter(), machine.snapshot()
        try:
            self.report[key or name] = measure()
        except Exception as exc:  # one broken section must not cost the other figures
            logger.error("section %s failed: %s", name, exc)
            self.report.setdefault("errors", {})[name] = "".join(traceback.format_exception(exc))
        self.report.setdefault("section_seconds", {})[name] = round(time.perf_counter() - started, 1)
        foreign = machine.foreign_cores(cpu, machine.snapshot())
        self.report.setdefault("section_foreign_cpu_cores", {})[name] = foreign


def available_cores() -> int:
    """Cores this process may run on, within the container's CPU limit: the in-process loops use them all."""
    from predictor.serving.cpu import cgroup_cpu_limit

    available = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    limit = cgroup_cpu_limit()
    return max(1, min(available, math.ceil(limit))) if limit is not None else available


# ---- sections ---------------------------------------------------------------------------------
def measure_limit(run: Run) -> dict[str, Any]:
    """The eager model alone, per batch size; plus one text tokenised and run alone."""
    from predictor.bench.inprocess import forward_sweep, side_by_side_sweep, single_request_ms

    s = run.settings
    result = forward_sweep(run.classifier, run.texts, s.batch_sizes, s.inprocess_s, s.attempts)
    result["single_request_ms_median"] = single_request_ms(run.classifier, run.texts, s.inprocess_s,
                                                           s.attempts)
    if s.threads > 1:  # the server's default layout: one single-threaded worker per core
        result["side_by_side"] = side_by_side_sweep(run.classifier, run.texts, SIDE_BY_SIDE_SIZES,
                                                    s.inprocess_s, loops=s.threads, attempts=s.attempts)
    return result


def measure_seed(run: Run) -> dict[str, Any]:
    """TorchServe's way: pad to max_length, one request per forward."""
    from predictor.bench.inprocess import seed_way

    return seed_way(run.classifier, run.texts, run.settings.inprocess_s, run.settings.attempts)


def measure_backends(run: Run) -> dict[str, Any]:
    """Every backend the config offers, each in its own process; eager is the in-process limit."""
    from predictor.bench.inprocess import probabilities

    s = run.settings
    limit = run.report.get("limit") or {}
    sizes = {k: v for k, v in (limit.get("batch_sizes") or {}).items() if int(k) in s.backend_sizes}
    eager = {"status": "ok", "source": "limit", "batch_sizes": sizes}
    measured = backends_module.measure_backends(
        run.models.classifier, run.workdir, run.texts, reference=probabilities(run.classifier, run.texts),
        sizes=s.backend_sizes, duration_s=s.inprocess_s, threads=s.threads, timeout_s=s.backend_timeout_s,
        skip=s.skip_backends, attempts=s.attempts)
    return {backends_module.EAGER: eager, **measured}


def measure_explanations(run: Run) -> dict[str, Any]:
    """In-process explanation latency, ours vs the seed's, for both encoder modes."""
    from predictor.bench.explanations import measure_explanations as measure

    return measure(run.models.classifier, run.models.question_answering, run.texts,
                   run.settings.explain_inputs, run.workdir / "cache")


def _snapshot(server: ServerProcess) -> Callable[[], dict[str, Any]]:
    def probe() -> dict[str, Any]:
        return {"metrics": server.metrics(), "cpu_s": server.cpu_seconds(), "rss": server.rss_bytes(),
                "machine": machine.snapshot()}

    return probe


def _phase(server: ServerProcess, route: str, requests: Sequence[Request], concurrency: int,
           settings: Settings, duration_s: float | None = None) -> dict[str, Any]:
    """One closed-loop phase with the server's own view of it (batches, CPU) from /metrics."""
    duration = duration_s or settings.duration_s
    result = closed_loop(server.base_url, requests, concurrency=concurrency, duration_s=duration,
                         warmup_s=settings.warmup_s, probe=_snapshot(server))
    begin, end = result.pop("probe_start"), result.pop("probe_end")
    result["batches"] = batch_metrics(begin["metrics"], end["metrics"])
    result["server_cpu_cores"] = round((end["cpu_s"] - begin["cpu_s"]) / duration, 2)
    result["foreign_cpu_cores"] = machine.foreign_cores(begin["machine"], end["machine"])
    result["rss_mb_start"] = round(begin["rss"] / 2**20, 1)
    return {"route": route, **result}


def prediction_requests(texts: Sequence[str], name: str) -> dict[str, list[Request]]:
    """Each corpus text as a TorchServe raw body and as a KServe v1 body."""
    return {"predictions": [Request(f"/predictions/{name}", t.encode("utf-8")) for t in texts],
            "v1": [Request(f"/v1/models/{name}:predict", json.dumps({"instances": [t]}).encode("utf-8"), JSON)
                   for t in texts]}


def rss_figures(after_warmup: float, after_predictions: float, end: float) -> dict[str, float]:
    """Server memory (MB) and its growth (%) over the prediction phases and to the end (explanations)."""
    return {"after_warmup": round(after_warmup, 1), "after_predictions": round(after_predictions, 1),
            "end": round(end, 1),
            "growth_predictions_pct": round(100 * (after_predictions - after_warmup) / after_warmup, 2),
            "growth_pct": round(100 * (end - after_warmup) / after_warmup, 2)}


def measure_server(run: Run) -> dict[str, Any]:
    """The real predictor under closed-loop load; then predictions while explanations run."""
    s = run.settings
    requests = prediction_requests(run.texts, MODEL_NAME)
    server = ServerProcess(run.models.classifier, MODEL_NAME, run.workdir / "server.log")
    result: dict[str, Any] = {"startup_s": server.start(), "command": " ".join(server.command()[1:]),
                              "model_workers": (server.worker_plan() or (None, None))[0],
                              "intra_op_threads": (server.worker_plan() or (None, None))[1],
                              "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", "the predictor's default"),
                              "backend": server.backend()}
    try:
        phases = [_phase(server, "predictions", requests["predictions"], c, s) for c in s.concurrencies]
        phases.append(_phase(server, "v1", requests["v1"], max(s.concurrencies), s))
        result["phases"] = phases
        rss_predictions = server.rss_bytes() / 2**20
        result["predictions_during_explanations"] = _predictions_during_explanations(server, run)
        result["rss_mb"] = rss_figures(phases[0]["rss_mb_start"], rss_predictions, server.rss_bytes() / 2**20)
    finally:
        server.stop()
    return result


def _predictions_during_explanations(server: ServerProcess, run: Run) -> dict[str, Any]:
    """One client posts predictions while another asks for explanations back to back."""
    import uvloop

    explain = [Request(f"/explanations/{MODEL_NAME}", t.encode("utf-8"))
               for t in spread(run.texts, max(3, run.settings.explain_inputs))]
    streams = [(prediction_requests(run.texts, MODEL_NAME)["predictions"], 1), (explain, 1)]
    result = uvloop.run(run_phase(server.base_url, streams, duration_s=run.settings.duration_s,
                                   warmup_s=run.settings.warmup_s))
    predictions, explanations = result.pop("streams")
    result.pop("probe_start"), result.pop("probe_end")
    return {"predictions": predictions, "explanations": explanations, **result}


def _variant_server(run: Run, label: str, concurrencies: Sequence[int], *, config_path: Path | None = None,
                    extra_env: dict[str, str] | None = None,
                    extra_args: Sequence[str] = ()) -> dict[str, Any]:
    """Start the classifier's server in one variant, run short phases, stop it; a failed start is reported."""
    s = run.settings
    requests = prediction_requests(run.texts, MODEL_NAME)["predictions"]
    server = ServerProcess(run.models.classifier, MODEL_NAME, run.workdir / f"server.{label}.log",
                           config_path=config_path, extra_env=extra_env, extra_args=extra_args)
    try:
        startup = server.start(timeout_s=s.backend_timeout_s)
        phases = [_phase(server, "predictions", requests, c, s, duration_s=s.duration_s / 2)
                  for c in concurrencies]
        return {"startup_s": startup, "phases": phases}
    except ServerError as exc:
        return {"error": str(exc)}
    finally:
        server.stop()


def measure_backend_servers(run: Run) -> dict[str, Any]:
    """The server at the top concurrency with each non-eager backend that worked in process."""
    backends = run.report.get("backends") or {}
    top = max(run.settings.concurrencies)
    working = [name for name, entry in backends.items()
               if name != backends_module.EAGER and entry.get("status") == "ok"]
    return {name: _variant_server(run, name, [top], config_path=run.workdir / f"model-config.{name}.yaml")
            for name in working}


def measure_server_variants(run: Run) -> dict[str, Any]:
    """The server with other CPU threading set-ups, at concurrency 1 and the top one."""
    concurrencies = sorted({1, max(run.settings.concurrencies)})
    return {name: _variant_server(run, name, concurrencies, extra_env=env, extra_args=args)
            for name, (env, args) in server_variants(run.settings.threads).items()}


def measure_neighbour(run: Run) -> dict[str, Any]:
    """The server while one busy process shares its cores (a noisy pod on a shared node), at
    concurrency 1 and the top one: the predictor's defaults, and --openmp_wait passive."""
    concurrencies = sorted({1, max(run.settings.concurrencies)})
    busy = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        return {"default": _variant_server(run, "neighbour_default", concurrencies),
                "passive": _variant_server(run, "neighbour_passive", concurrencies,
                                           extra_args=("--openmp_wait", "passive"))}
    finally:
        busy.kill()
        busy.wait()


def measure_kserve_hf(run: Run) -> dict[str, Any]:
    """KServe's HuggingFace runtime (re-created: kserve_hf.py) on the same model and texts, v1."""
    from predictor.bench.kserve_hf import KServeHFProcess

    s = run.settings
    requests = prediction_requests(run.texts, MODEL_NAME)["v1"]
    server = KServeHFProcess(run.models.classifier, MODEL_NAME, run.workdir / "server.kserve_hf.log")
    result: dict[str, Any] = {"startup_s": server.start(), "command": " ".join(server.command()[1:])}
    try:
        result["phases"] = [_phase(server, "v1", requests, c, s) for c in s.concurrencies]
    finally:
        server.stop()
    return result


def measure_soak(run: Run) -> dict[str, Any]:
    """A fresh server under the top concurrency for soak_s: RSS after each chunk, growth after warm-up."""
    s = run.settings
    requests = prediction_requests(run.texts, MODEL_NAME)["predictions"]
    top = max(s.concurrencies)
    server = ServerProcess(run.models.classifier, MODEL_NAME, run.workdir / "server.soak.log")
    server.start()
    try:
        closed_loop(server.base_url, requests, concurrency=top, duration_s=s.soak_chunk_s / 3, warmup_s=0)
        rss = [server.rss_bytes() / 2**20]  # after warm-up: the steady state
        served = errors = 0
        chunks = max(1, round(s.soak_s / s.soak_chunk_s))
        for _ in range(chunks):
            chunk = closed_loop(server.base_url, requests, concurrency=top, duration_s=s.soak_chunk_s,
                                warmup_s=0)
            served += chunk["requests"]
            errors += chunk["errors"]
            rss.append(server.rss_bytes() / 2**20)
    finally:
        server.stop()
    return {"concurrency": top, "duration_s": chunks * s.soak_chunk_s, "requests": served, "errors": errors,
            "throughput_rps": round(served / (chunks * s.soak_chunk_s), 2),
            "rss_mb": [round(v, 1) for v in rss],
            "rss_growth_pct": round(100 * (rss[-1] - rss[0]) / rss[0], 2),
            "rss_max_growth_pct": round(100 * (max(rss) - rss[0]) / rss[0], 2)}


def measure_generation(run: Run) -> dict[str, Any]:
    """Tiny GPT-2: tokens/s in process and through the server at concurrency 1; streaming latency."""
    from predictor.bench import generation

    s = run.settings
    prompts = generation.generation_prompts(run.texts, 8)
    server = ServerProcess(run.models.generator, GENERATOR_NAME, run.workdir / "server.gen.log")
    startup = server.start()
    try:
        result: dict[str, Any] = {
            "max_new_tokens": s.max_new_tokens, "startup_s": startup,
            **generation.interleaved(run.models.generator, server.base_url, GENERATOR_NAME, prompts,
                                     s.max_new_tokens, 2 * s.generation_s, s.generation_rounds)}
        result["stream"] = generation.server_streaming(server.base_url, GENERATOR_NAME, run.models.generator,
                                                       prompts, s.max_new_tokens, s.stream_requests)
    finally:
        server.stop()
    return result


def measure_generation_mixed(run: Run) -> dict[str, Any]:
    """16 greedy clients, max_new_tokens drawn from 8..256 against all at the draw's mean, through the
    server; a short streamed request's first token under that load (generation_mixed.py)."""
    from predictor.bench import generation_mixed

    model_dir = generation_mixed.build_model(run.workdir / "gen-mixed")
    return {"server": generation_mixed.ratios(generation_mixed.measure_server(model_dir,
                                                                              run.settings.generation_mixed_s))}


# ---- the run ----------------------------------------------------------------------------------
def run_benchmark(settings: Settings, models: ModelDirs, workdir: Path) -> dict[str, Any]:
    """Every selected section, one after the other, into one report (sections that fail are listed)."""
    import torch

    threads_before = torch.get_num_threads()
    torch.set_num_threads(settings.threads)
    try:
        return _run_sections(settings, models, workdir)
    finally:
        torch.set_num_threads(threads_before)


def _run_sections(settings: Settings, models: ModelDirs, workdir: Path) -> dict[str, Any]:
    import torch

    from predictor.bench.inprocess import load_classifier

    texts = load_corpus()
    run = Run(settings=settings, models=models, workdir=workdir, texts=texts)
    run.classifier = load_classifier(models.classifier)
    config = run.classifier.config
    run.report["meta"] = {
        "quick": settings.quick, "settings": asdict(settings), "threads": settings.threads,
        "cpu_count": os.cpu_count(), "load_average_start": machine.load_average(),
        "python": platform.python_version(),
        "torch": torch.__version__, "transformers": _version("transformers"), "kserve": _version("kserve"),
        "captum": _version("captum"), "corpus": describe(texts),
        "model": f"MiniLM-L6 sequence classifier ({models.classifier_origin})",
        "max_length": config.handler.max_length, "batch_size": config.batch_size,
    }
    run.section("limit", lambda: measure_limit(run))
    run.section("seed", lambda: measure_seed(run), key="seed_way")
    run.section("backends", lambda: measure_backends(run))
    run.section("explanations", lambda: measure_explanations(run))
    run.section("server", lambda: measure_server(run))
    run.section("kserve_hf", lambda: measure_kserve_hf(run))
    run.section("soak", lambda: measure_soak(run))
    run.section("server_variants", lambda: measure_server_variants(run))
    run.section("neighbour", lambda: measure_neighbour(run))
    run.section("backend_servers", lambda: measure_backend_servers(run))
    run.section("generation", lambda: measure_generation(run))
    run.section("generation_mixed", lambda: measure_generation_mixed(run))
    run.report["derived"] = derive(run.report, max(settings.concurrencies))
    run.report["meta"]["load_average_end"] = machine.load_average()
    busy = [v for v in run.report.get("section_foreign_cpu_cores", {}).values() if v is not None]
    run.report["meta"]["foreign_cpu_cores_max"] = max(busy) if busy else None
    return run.report


def _version(package: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(package)
    except PackageNotFoundError:
        return None


def quiet_transformers() -> None:
    """No progress bars or head-initialisation notes from transformers in the benchmark's own output."""
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()


def build_parser() -> argparse.ArgumentParser:
    """The benchmark's command line."""
    parser = argparse.ArgumentParser(
        prog="python -m predictor.bench.run", description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Sections: " + ", ".join(SECTIONS) + ". Figures are explained in predictor/bench/README.md.")
    parser.add_argument("--quick", action="store_true", help="a short smoke run (about two minutes)")
    parser.add_argument("--duration", type=float, default=None,
                        help="seconds per server load phase (default: 20, --quick: 5)")
    parser.add_argument("--warmup", type=float, default=None, help="warm-up seconds before each phase")
    parser.add_argument("--inprocess-duration", type=float, default=None,
                        help="seconds per in-process figure (each batch size, each backend)")
    parser.add_argument("--out", type=Path, default=None, help="write the JSON report here")
    parser.add_argument("--plot", type=Path, default=None,
                        help="draw latency-vs-throughput curves to this PNG (default: beside --out, as .png)")
    parser.add_argument("--model", choices=("auto", "random", "demo"), default="auto",
                        help="classifier: MiniLM with a seeded random head, or the demo model fine-tuned "
                             "locally (auto: demo for a full run when predictor.demo is present, random for "
                             "--quick)")
    parser.add_argument("--demo-seconds", type=float, default=60.0,
                        help="fine-tuning budget of the demo model (default: %(default)s)")
    parser.add_argument("--only", default=None, help="comma-separated sections to run (default: all)")
    parser.add_argument("--skip-backend", action="append", default=[],
                        help="a backend not to measure (repeatable)")
    parser.add_argument("--workdir", type=Path, default=None, help="keep models and server logs here")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch threads of the in-process loops (default: every core available)")
    parser.add_argument("--wait-idle", type=float, default=0.0,
                        help="first wait up to this many seconds for other work on the machine to stop")
    return parser


def settings_from_args(args: argparse.Namespace) -> Settings:
    """Settings for the parsed command line."""
    base = Settings.quick_run() if args.quick else Settings()
    changes: dict[str, Any] = {"threads": args.threads or available_cores()}
    if args.duration is not None:
        changes["duration_s"] = args.duration
    if args.warmup is not None:
        changes["warmup_s"] = args.warmup
    if args.inprocess_duration is not None:
        changes["inprocess_s"] = args.inprocess_duration
    if args.only:
        chosen = tuple(s.strip() for s in args.only.split(",") if s.strip())
        if unknown := set(chosen) - set(SECTIONS):
            raise SystemExit(f"--only: unknown section(s) {sorted(unknown)}; "
                             f"choose from {', '.join(SECTIONS)}")
        changes["sections"] = chosen
    if args.skip_backend:
        changes["skip_backends"] = tuple(base.skip_backends) + tuple(args.skip_backend)
    return replace(base, **changes)


def main(argv: Sequence[str] | None = None) -> int:
    """Build the models, run every section, print the table, write the JSON; 1 if a section failed."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # a line per request would load the client
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    quiet_transformers()
    settings = settings_from_args(args)
    classifier = args.model
    if classifier == "auto":
        classifier = "random" if args.quick else "demo"
    with tempfile.TemporaryDirectory(prefix="predictor-bench-") as tmp:
        workdir = args.workdir or Path(tmp)
        workdir.mkdir(parents=True, exist_ok=True)
        models = build_models(workdir / "models", classifier=classifier, demo_seconds=args.demo_seconds)
        if args.wait_idle > 0:
            machine.wait_for_quiet(args.wait_idle)
        report = run_benchmark(settings, models, workdir)
    print(format_table(report))
    if args.out is not None:
        args.out.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
        logger.info("report written to %s", args.out)
    if (plot_path := args.plot or default_plot_path(args.out)) is not None:
        if drawn := plot(report, plot_path):
            logger.info("curves of %d set-ups drawn to %s", len(drawn), plot_path)
        else:
            logger.info("no figures to draw: %s not written", plot_path)
    return 1 if report.get("errors") else 0


if __name__ == "__main__":
    raise SystemExit(main())
