"""The benchmark's pieces run on tiny models and report sane figures (no timing thresholds: those are the
benchmark's business, not the tests')."""

from __future__ import annotations

import json
import math
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from predictor.bench import backends, report
from predictor.bench.corpus import describe, load_corpus, spread
from predictor.bench.load import Request, closed_loop, latency_summary
from predictor.bench.models import ModelDirs
from predictor.bench.plot import curves, default_plot_path, draw, plot
from predictor.bench.run import Settings, build_parser, run_benchmark, settings_from_args
from predictor.bench.server_process import batch_metrics, parse_prometheus

METRICS_BEFORE = """# HELP predictor_batch_size Inputs per forward pass
# TYPE predictor_batch_size histogram
predictor_batch_size_bucket{le="1.0"} 2.0
predictor_batch_size_count 4.0
predictor_batch_size_sum 10.0
predictor_real_tokens_total 100.0
predictor_padded_tokens_total 120.0
predictor_inference_seconds_sum 0.5
predictor_inference_seconds_count 4.0
predictor_request_seconds_count{route="/predictions/{model_name}"} 4.0
predictor_request_seconds_sum{route="/predictions/{model_name}"} 0.04
predictor_request_seconds_sum{route="/metrics"} 0.5
"""
METRICS_AFTER = (METRICS_BEFORE.replace("count 4.0", "count 8.0").replace("_sum 10.0", "_sum 30.0")
                 .replace("real_tokens_total 100.0", "real_tokens_total 300.0")
                 .replace("padded_tokens_total 120.0", "padded_tokens_total 370.0")
                 .replace("seconds_sum 0.5", "seconds_sum 0.9")
                 .replace('"} 4.0', '"} 6.0').replace('model_name}"} 0.04', 'model_name}"} 0.06'))


def _ordered(latency: dict[str, Any]) -> bool:
    return 0 < latency["p50"] <= latency["p90"] <= latency["p99"] <= latency["max"]


# ---- corpus and pure helpers ---------------------------------------------------------------------
def test_corpus_is_about_200_texts_of_5_to_100_words() -> None:
    texts = load_corpus()
    summary = describe(texts)
    assert 180 <= summary["texts"] <= 220
    assert summary["words_min"] >= 5 and summary["words_max"] <= 100
    assert len(set(texts)) == len(texts)


def test_spread_picks_from_shortest_to_longest() -> None:
    texts = ["a b c d e", "a b c d e f g", "a b c d e f g h i j"]
    assert spread(texts, 2) == [texts[0], texts[2]]
    assert spread(texts, 5) == texts


def test_prometheus_deltas_give_batch_size_and_padding() -> None:
    figures = batch_metrics(parse_prometheus(METRICS_BEFORE), parse_prometheus(METRICS_AFTER))
    assert figures == {"batches": 4, "mean_batch_size": 5.0, "padded_to_real": 1.25,
                       "inference_s_mean_ms": 100.0, "server_request_ms_mean": 10.0}


def test_latency_summary_is_ordered_and_empty_safe() -> None:
    assert _ordered(latency_summary([0.001 * n for n in range(1, 101)]))
    assert latency_summary([])["p50"] is None


def test_backend_agreement_and_config_variants(tmp_path: Path) -> None:
    assert backends.agreement([[0.9, 0.1], [0.2, 0.8]], [[0.6, 0.4], [0.7, 0.3]]) == \
        {"label_agreement_pct": 50.0, "max_prob_diff": 0.5}
    names = [v.name for v in backends.supported_variants()]
    assert names[0] == backends.EAGER and "int8" in names
    (tmp_path / "model-config.yaml").write_text("batchSize: 8\nhandler:\n  mode: sequence_classification\n")
    variant = next(v for v in backends.supported_variants() if v.name == "int8")
    written = variant.write_config(tmp_path, tmp_path / "int8.yaml").read_text()
    assert "backend: int8" in written and "mode: sequence_classification" in written


def test_derived_ratios_are_none_for_sections_that_did_not_run() -> None:
    derived = report.derive({"limit": {"best_seq_per_s": 100.0, "single_forward_ms_median": 5.0}}, 32)
    assert derived["server_over_limit"] is None
    assert derived["targets"]["c1_p50_within_single_forward_plus_3ms"] is None


def test_quick_settings_and_command_line() -> None:
    args = build_parser().parse_args(["--quick", "--only", "limit,server", "--duration", "2"])
    settings = settings_from_args(args)
    assert settings.quick and settings.duration_s == 2 and settings.sections == ("limit", "server")
    assert backends.COMPILE in Settings.quick_run().skip_backends
    with pytest.raises(SystemExit):
        settings_from_args(build_parser().parse_args(["--only", "nonsense"]))


# ---- the load generator against a stand-in server ------------------------------------------------
class _StandIn(BaseHTTPRequestHandler):
    """Answers /predictions/ok with a label and /predictions/broken with a 503, keeping connections open."""

    protocol_version = "HTTP/1.1"

    def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
        self.rfile.read(int(self.headers.get("content-length", 0)))
        status, body = (200, b"positive") if self.path.endswith("/ok") else (503, b'{"code": 503}')
        self.send_response(status)
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        """Quiet."""


@pytest.fixture()
def stand_in() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _StandIn)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_closed_loop_counts_answers_latency_and_errors(stand_in: str) -> None:
    ok = [Request("/predictions/ok", text.encode()) for text in ("one", "two", "three")]
    probes: list[int] = []
    result = closed_loop(stand_in, ok, concurrency=4, duration_s=0.5, warmup_s=0.1,
                         probe=lambda: probes.append(1) or len(probes))
    assert result["requests"] > 0 and result["errors"] == 0
    assert math.isclose(result["throughput_rps"], result["requests"] / 0.5, rel_tol=0.01)
    assert _ordered(result["latency_ms"])
    assert (result["probe_start"], result["probe_end"]) == (1, 2)
    broken = closed_loop(stand_in, [Request("/predictions/broken", b"x")], concurrency=2, duration_s=0.3,
                         warmup_s=0.0)
    assert broken["requests"] == 0 and broken["errors"] > 0
    assert broken["error_samples"][0].startswith("503")


# ---- the in-process sections on tiny models ------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_report(model_dirs: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    models = ModelDirs(classifier=model_dirs["sequence_classification"],
                       question_answering=model_dirs["question_answering"],
                       generator=model_dirs["text_generation"], classifier_origin="tiny")
    settings = Settings.quick_run(sections=("limit", "seed", "explanations"), inprocess_s=0.1,
                                  batch_sizes=(1, 4, 8), explain_inputs=1, threads=1, attempts=1)
    result = run_benchmark(settings, models, tmp_path_factory.mktemp("bench"))
    return json.loads(json.dumps(result))  # the report must be plain JSON


def test_report_has_meta_and_no_errors(tiny_report: dict[str, Any]) -> None:
    assert "errors" not in tiny_report
    meta = tiny_report["meta"]
    assert meta["quick"] is True and meta["corpus"]["texts"] >= 180
    assert meta["max_length"] == 64 and meta["batch_size"] == 8
    assert set(tiny_report["section_seconds"]) == {"limit", "seed", "explanations"}
    for cores in tiny_report["section_foreign_cpu_cores"].values():  # None only without psutil
        assert cores is None or cores >= 0


def test_limit_and_original_handler_figures_are_sane(tiny_report: dict[str, Any]) -> None:
    limit = tiny_report["limit"]
    assert set(limit["batch_sizes"]) == {"1", "4", "8"}
    for figures in limit["batch_sizes"].values():
        assert figures["seq_per_s"] > 0 and figures["forward_ms_median"] > 0
        assert figures["padded_to_real"] >= 1
    assert limit["batch_sizes"]["1"]["padded_to_real"] == 1.0  # a batch of one has no padding
    assert limit["best_seq_per_s"] == limit["batch_sizes"][str(limit["best_batch_size"])]["seq_per_s"]
    assert limit["single_forward_ms_median"] > 0 and limit["single_request_ms_median"] > 0
    original = tiny_report["seed_way"]  # the key the benchmark report writes for the original handler's way
    assert original["seq_per_s"] > 0 and original["padded_length"] == 64
    assert tiny_report["derived"]["server_over_limit"] is None  # the server did not run


def test_explanations_match_the_original_handlers_attributions(tiny_report: dict[str, Any]) -> None:
    for mode in ("sequence_classification", "question_answering"):
        figures = tiny_report["explanations"][mode]
        assert figures["inputs"] == 1 and figures["n_steps"] == 50
        assert figures["ours_ms_median"] > 0 and figures["seed_ms_median"] > 0 and figures["speedup"] > 0
        assert figures["tokens_match"] is True
        # Same method, baseline, target and steps: only the batching of the steps differs, and for QA
        # the segment ids (token_type_ids) the served model reads, which the original handler drops.
        assert figures["cosine_min"] > (0.99 if mode == "sequence_classification" else 0.95)


def test_table_prints_every_section_that_ran(tiny_report: dict[str, Any]) -> None:
    table = report.format_table(tiny_report)
    assert "limit" in table and "seed's way" in table and "explanations" in table
    assert "FAILED" not in table


# ---- the server sections (a real predictor process: slow) ------------------------------------------
@pytest.mark.slow
def test_server_and_generation_sections_report_sane_figures(model_dirs: dict[str, Path],
                                                            tmp_path: Path) -> None:
    models = ModelDirs(classifier=model_dirs["sequence_classification"],
                       question_answering=model_dirs["question_answering"],
                       generator=model_dirs["text_generation"], classifier_origin="tiny")
    settings = Settings.quick_run(sections=("server", "kserve_hf", "soak", "generation"), duration_s=2.0,
                                  warmup_s=0.5, soak_s=1.0, soak_chunk_s=0.5,
                                  concurrencies=(1, 4), explain_inputs=1, generation_s=0.2, stream_requests=1,
                                  max_new_tokens=4, threads=1, attempts=1)
    result = json.loads(json.dumps(run_benchmark(settings, models, tmp_path)))
    assert "errors" not in result, result.get("errors")
    server = result["server"]
    assert [(p["route"], p["concurrency"]) for p in server["phases"]] == \
        [("predictions", 1), ("predictions", 4), ("v1", 4)]
    for phase in server["phases"]:
        assert phase["errors"] == 0 and phase["requests"] > 0 and _ordered(phase["latency_ms"])
        batches = phase["batches"]
        assert 1 <= batches["mean_batch_size"] <= 8 and batches["padded_to_real"] >= 1
    assert server["rss_mb"]["after_warmup"] > 0 and math.isfinite(server["rss_mb"]["growth_pct"])
    assert server["predictions_during_explanations"]["predictions"]["errors"] == 0
    generation = result["generation"]
    assert generation["inprocess"]["tokens_per_s"] > 0 and generation["server"]["tokens_per_s"] > 0
    assert generation["server"]["errors"] == 0 and generation["stream"]["errors"] == 0
    assert generation["rounds"] >= 1 and generation["inprocess"]["requests"] >= generation["rounds"]
    assert 0 < generation["stream"]["first_chunk_ms_median"] <= generation["stream"]["complete_ms_median"]
    assert result["derived"]["p99_over_p50"] >= 1
    hf = result["kserve_hf"]
    assert [(p["route"], p["concurrency"]) for p in hf["phases"]] == [("v1", 1), ("v1", 4)]
    assert all(p["errors"] == 0 and p["requests"] > 0 for p in hf["phases"])
    assert result["derived"]["v1_over_kserve_hf"] > 0
    soak = result["soak"]
    assert soak["errors"] == 0 and soak["requests"] > 0 and len(soak["rss_mb"]) == 3
    assert soak["rss_max_growth_pct"] >= soak["rss_growth_pct"]


def test_the_recreated_kserve_runtime_answers_the_models_argmax(tmp_path: Path) -> None:
    import asyncio

    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from predictor.bench.kserve_hf import HuggingFaceRuntimeEncoder
    from predictor.bench.models import build_classifier

    path = build_classifier(tmp_path / "minilm")  # the benchmark's MiniLM (the tiny model answers one class)
    runtime = HuggingFaceRuntimeEncoder.model("bench", path)
    runtime.load()
    texts = load_corpus()[:24]  # one request: padded together, as the runtime does
    answer, _ = asyncio.run(runtime({"instances": texts}))
    model = AutoModelForSequenceClassification.from_pretrained(path).eval()
    tokenizer = AutoTokenizer.from_pretrained(path)
    with torch.no_grad():
        expected = [int(model(**tokenizer(t, return_tensors="pt")).logits.argmax()) for t in texts]
    assert len(set(expected)) > 1, "a model that answers one class everywhere proves nothing"
    assert answer == {"predictions": expected}


def test_fastest_backend_counts_only_backends_that_keep_the_answers() -> None:
    def served(rps: float) -> dict[str, Any]:
        return {"phases": [{"concurrency": 32, "throughput_rps": rps}]}

    measured = {
        "seed_way": {"seq_per_s": 50.0},
        "kserve_hf": {"phases": [{"route": "v1", "concurrency": 32, "throughput_rps": 100.0}]},
        "backends": {"onnx": {"label_agreement_pct": 100.0, "max_prob_diff": 0.0},
                     "int8": {"label_agreement_pct": 95.5, "max_prob_diff": 0.2}},
        "backend_servers": {"onnx": served(250.0), "int8": served(300.0)},
    }
    derived = report.derive(measured, 32)
    assert derived["fastest_backend"] == "onnx"
    assert derived["fastest_backend_over_kserve_hf"] == 2.5 and derived["fastest_backend_over_seed"] == 5.0
    measured["backends"]["int8"] = {"label_agreement_pct": 99.5, "max_prob_diff": 0.0005}
    assert report.derive(measured, 32)["fastest_backend"] == "int8"


def test_issue_22_targets_compare_the_server_with_the_backend_it_served() -> None:
    def phase(route: str, concurrency: int, rps: float, p50: float, p99: float) -> dict[str, Any]:
        return {"route": route, "concurrency": concurrency, "throughput_rps": rps,
                "latency_ms": {"p50": p50, "p99": p99}}

    measured: dict[str, Any] = {
        "seed_way": {"seq_per_s": 50.0},
        "kserve_hf": {"phases": [{"route": "v1", "concurrency": 32, "throughput_rps": 100.0}]},
        "server": {"backend": "onnx", "phases": [phase("predictions", 1, 100.0, 9.0, 12.0),
                                                  phase("predictions", 32, 250.0, 120.0, 180.0),
                                                  phase("v1", 32, 240.0, 125.0, 190.0)]},
        "backends": {"eager": {"batch_sizes": {"1": {"seq_per_s": 100.0, "forward_ms_median": 8.0}}},
                     "onnx": {"batch_sizes": {"1": {"seq_per_s": 150.0, "forward_ms_median": 6.5},
                                              "8": {"seq_per_s": 260.0, "forward_ms_median": 30.0}}}},
        "generation_mixed": {"server": {"mixed_over_equal_tokens_per_s": 0.75}},
    }
    derived = report.derive(measured, 32)
    assert derived["served_backend"] == "onnx"
    assert derived["server_over_served_backend_inprocess"] == round(250 / 260, 3)  # onnx's best, not eager's
    assert derived["c1_p50_minus_served_backend_forward_ms"] == 2.5
    assert derived["targets_22"] == {"v1_over_kserve_hf": True, "server_over_seed": True,
                                     "server_over_served_backend_inprocess": True,
                                     "c1_p50_minus_served_backend_forward_ms": False,
                                     "p99_over_p50": True, "generation_mixed_over_equal": False}
    table = report.format_table({"derived": derived, "generation_mixed": measured["generation_mixed"]})
    assert "issue #22 targets (served backend: onnx)" in table and "mixed/equal 0.75" in table
    del measured["server"]["backend"]  # an older server without the metric: no comparison, not a pass
    assert report.derive(measured, 32)["targets_22"]["c1_p50_minus_served_backend_forward_ms"] is None


# ---- latency-vs-throughput curves (a synthetic report: no benchmark runs here) --------------------------
def _phase_entry(route: str, concurrency: int, rps: float, p50: float) -> dict[str, Any]:
    return {"route": route, "concurrency": concurrency, "throughput_rps": rps, "latency_ms": {"p50": p50}}


SYNTHETIC_REPORT: dict[str, Any] = {
    "meta": {"threads": 2, "model": "tiny"},
    "limit": {"batch_sizes": {"1": {"seq_per_s": 150.0, "forward_ms_median": 6.5},
                              "8": {"seq_per_s": 190.0, "forward_ms_median": 42.0}}},
    "seed_way": {"seq_per_s": 60.0, "latency_ms_median": 16.5},
    "backends": {"eager": {"status": "ok", "source": "limit", "batch_sizes": {}},
                 "onnx": {"status": "ok",
                          "batch_sizes": {"8": {"seq_per_s": 240.0, "forward_ms_median": 33.0}}}},
    "server": {"phases": [_phase_entry("predictions", 32, 243.0, 131.0),
                          _phase_entry("predictions", 1, 112.0, 8.2),
                          _phase_entry("predictions", 8, 200.0, 39.0),
                          _phase_entry("v1", 32, 236.0, 135.0)]},
    "backend_servers": {"onnx": {"phases": [_phase_entry("predictions", 32, 302.0, 105.0)]},
                        "openvino": {"error": "did not start"}},
    "kserve_hf": {"phases": [_phase_entry("v1", 1, 125.0, 7.5), _phase_entry("v1", 32, 125.0, 255.0)]},
}


def test_curves_have_one_series_per_set_up_with_points_in_concurrency_order() -> None:
    found = {s.label: s for s in curves(SYNTHETIC_REPORT)}
    assert list(found) == ["predictor /predictions", "predictor v1", "predictor, backend onnx",
                           "KServe HF runtime (re-created) v1", "seed's way (in process)",
                           "eager forward (in process)", "onnx forward (in process)"]
    assert found["predictor /predictions"].points == ((112.0, 8.2, "c=1"), (200.0, 39.0, "c=8"),
                                                       (243.0, 131.0, "c=32"))
    assert found["eager forward (in process)"].points == ((150.0, 6.5, "b1"), (190.0, 42.0, "b8"))
    assert curves({"meta": {}, "server": {"phases": []}, "backend_servers": {"x": {"error": "e"}}}) == []


def test_the_png_has_one_line_per_series(tmp_path: Path) -> None:
    from matplotlib import pyplot as plt
    from PIL import Image

    figure = draw(SYNTHETIC_REPORT)
    try:
        [axes] = figure.axes
        lines = axes.get_lines()
        assert [line.get_label() for line in lines] == [s.label for s in curves(SYNTHETIC_REPORT)]
        assert [len(line.get_xdata()) for line in lines] == [3, 1, 1, 2, 1, 2, 1]
        assert [t.get_text() for t in axes.get_legend().get_texts()] == [line.get_label() for line in lines]
    finally:
        plt.close(figure)
    path = default_plot_path(tmp_path / "results.json")
    assert path == tmp_path / "results.png"
    drawn = plot(SYNTHETIC_REPORT, path)
    assert len(drawn) == 7
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with Image.open(path) as image:
        image.verify()
        assert image.format == "PNG" and image.size[0] > 500 and image.size[1] > 300
    empty = tmp_path / "empty.png"
    assert plot({"meta": {}}, empty) == [] and not empty.exists()


def test_plot_flag_defaults_beside_the_json_report() -> None:
    assert build_parser().parse_args(["--out", "r.json"]).plot is None  # main() puts it beside --out
    assert build_parser().parse_args(["--plot", "c.png"]).plot == Path("c.png")
    assert default_plot_path(None) is None
