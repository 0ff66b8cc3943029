"""Figures derived from one run (ratios, targets) and the short table printed at the end."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

# Issue #8: at concurrency 1 the server may add at most this much to a single forward pass.
C1_OVERHEAD_BUDGET_MS = 3.0

# Issue #22's targets, ratios within one run: (figure in `derived`, comparison, bound).
TARGETS_22: tuple[tuple[str, str, float], ...] = (
    ("v1_over_kserve_hf", ">=", 2.0),
    ("server_over_seed", ">=", 4.0),
    ("server_over_served_backend_inprocess", ">=", 0.9),
    ("c1_p50_minus_served_backend_forward_ms", "<=", 2.0),
    ("p99_over_p50", "<=", 2.0),
    ("generation_mixed_over_equal", ">=", 0.8),
)


def _get(data: Mapping[str, Any] | None, *path: Any) -> Any:
    for key in path:
        if not isinstance(data, Mapping) or key not in data:
            return None
        data = data[key]
    return data


def _ratio(a: Any, b: Any, digits: int = 3) -> float | None:
    if not isinstance(a, int | float) or not isinstance(b, int | float) or b == 0:
        return None
    return round(a / b, digits)


def phase(report: Mapping[str, Any], route: str, concurrency: int) -> Mapping[str, Any] | None:
    """The server load phase for one route and concurrency, if it ran."""
    for entry in _get(report, "server", "phases") or []:
        if entry.get("route") == route and entry.get("concurrency") == concurrency:
            return entry  # type: ignore[no-any-return]
    return None


# Issue #8: a fast backend counts only if it keeps the answers on the benchmark corpus.
AGREEMENT_MIN_PCT = 99.0
MAX_PROB_DIFF = 1e-3


def fastest_faithful_backend(report: Mapping[str, Any], top_concurrency: int) -> tuple[str, float] | None:
    """The backend whose server served most at the top concurrency among those that keep the answers."""
    best: tuple[str, float] | None = None
    for name, entry in (report.get("backend_servers") or {}).items():
        checked = _get(report, "backends", name) or {}
        diff = checked.get("max_prob_diff")
        if (checked.get("label_agreement_pct") or 0) < AGREEMENT_MIN_PCT or diff is None or diff > MAX_PROB_DIFF:
            continue
        for p in entry.get("phases") or []:
            rps = p.get("throughput_rps")
            if p.get("concurrency") == top_concurrency and isinstance(rps, int | float) and \
                    (best is None or rps > best[1]):
                best = (name, rps)
    return best


def kserve_hf_phase(report: Mapping[str, Any], concurrency: int) -> Mapping[str, Any] | None:
    """The re-created KServe HuggingFace runtime's phase at one concurrency, if it ran."""
    for entry in _get(report, "kserve_hf", "phases") or []:
        if entry.get("concurrency") == concurrency:
            return entry  # type: ignore[no-any-return]
    return None


def served_backend_figures(report: Mapping[str, Any]) -> Mapping[str, Any] | None:
    """The in-process figures of the backend the default server served (its /metrics says which)."""
    name = _get(report, "server", "backend")
    entry = _get(report, "backends", name) if name else None
    return entry if isinstance(entry, Mapping) and entry.get("batch_sizes") else None


def _best_seq_per_s(entry: Mapping[str, Any] | None) -> float | None:
    sizes = (entry or {}).get("batch_sizes") or {}
    rates = [v.get("seq_per_s") for v in sizes.values() if isinstance(v.get("seq_per_s"), int | float)]
    return max(rates) if rates else None


def _target_met(value: Any, comparison: str, bound: float) -> bool | None:
    if not isinstance(value, int | float):
        return None
    return value >= bound if comparison == ">=" else value <= bound


def derive(report: Mapping[str, Any], top_concurrency: int) -> dict[str, Any]:
    """Ratios and targets from the measured sections: None where a section did not run."""
    top = phase(report, "predictions", top_concurrency)
    one = phase(report, "predictions", 1)
    v1 = phase(report, "v1", top_concurrency)
    limit = report.get("limit")
    single = _get(limit, "single_forward_ms_median")
    c1_p50 = _get(one, "latency_ms", "p50")
    overhead = round(c1_p50 - single, 2) if c1_p50 is not None and single is not None else None
    ratios = {
        "server_over_limit": _ratio(_get(top, "throughput_rps"), _get(limit, "best_seq_per_s")),
        "server_over_side_by_side_limit": _ratio(_get(top, "throughput_rps"),
                                                 _get(limit, "side_by_side", "best_seq_per_s")),
        "server_over_seed": _ratio(_get(top, "throughput_rps"), _get(report, "seed_way", "seq_per_s")),
        "p99_over_p50": _ratio(_get(top, "latency_ms", "p99"), _get(top, "latency_ms", "p50")),
        "v1_over_predictions": _ratio(_get(v1, "throughput_rps"), _get(top, "throughput_rps")),
        "c1_p50_minus_single_forward_ms": overhead,
        "generation_server_over_inprocess": _ratio(_get(report, "generation", "server", "tokens_per_s"),
                                                   _get(report, "generation", "inprocess", "tokens_per_s")),
    }
    hf_top = _get(kserve_hf_phase(report, top_concurrency), "throughput_rps")
    fastest = fastest_faithful_backend(report, top_concurrency)
    ratios["v1_over_kserve_hf"] = _ratio(_get(v1, "throughput_rps"), hf_top)
    ratios["predictions_over_kserve_hf"] = _ratio(_get(top, "throughput_rps"), hf_top)
    ratios["fastest_backend"] = fastest[0] if fastest else None
    ratios["fastest_backend_over_kserve_hf"] = _ratio(fastest[1], hf_top) if fastest else None
    ratios["fastest_backend_over_seed"] = _ratio(fastest[1], _get(report, "seed_way", "seq_per_s")) \
        if fastest else None
    served = served_backend_figures(report)
    served_b1 = _get(served, "batch_sizes", "1", "forward_ms_median")
    ratios["served_backend"] = _get(report, "server", "backend")
    ratios["server_over_served_backend_inprocess"] = _ratio(_get(top, "throughput_rps"), _best_seq_per_s(served))
    ratios["c1_p50_minus_served_backend_forward_ms"] = round(c1_p50 - served_b1, 2) \
        if isinstance(c1_p50, int | float) and isinstance(served_b1, int | float) else None
    ratios["generation_mixed_over_equal"] = _get(report, "generation_mixed", "server",
                                                 "mixed_over_equal_tokens_per_s")
    targets = {"c1_p50_within_single_forward_plus_3ms": None if overhead is None
               else overhead <= C1_OVERHEAD_BUDGET_MS}
    targets_22 = {name: _target_met(ratios.get(name), comparison, bound)
                  for name, comparison, bound in TARGETS_22}
    return {"concurrency": top_concurrency, **ratios, "targets": targets, "targets_22": targets_22}


def _fmt(value: Any, unit: str = "", digits: int = 1) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "NO"
    if isinstance(value, float):
        return f"{value:.{digits}f}{unit}"
    return f"{value}{unit}"


def _phase_line(entry: Mapping[str, Any]) -> str:
    lat = entry.get("latency_ms", {})
    batches = entry.get("batches") or {}
    cpu = f"{_fmt(entry.get('server_cpu_cores'), digits=2)}/{_fmt(entry.get('client_cpu_cores'), digits=2)}"
    p50, p90, p99 = (_fmt(lat.get(q)) for q in ("p50", "p90", "p99"))
    inside = _fmt(batches.get("server_request_ms_mean"))
    return (f"  {entry['route']:<11} c={entry['concurrency']:<3} {_fmt(entry.get('throughput_rps')):>7} req/s"
            f"  p50 {p50:>7}  p90 {p90:>7}  p99 {p99:>7} ms (in server {inside})"
            f"  err {entry.get('errors', 0)}  batch {_fmt(batches.get('mean_batch_size'), digits=2)}"
            f"  pad/real {_fmt(batches.get('padded_to_real'), digits=2)}  cpu srv/cli/other {cpu}/"
            f"{_fmt(entry.get('foreign_cpu_cores'), digits=2)}")


def _limit_lines(report: Mapping[str, Any]) -> list[str]:
    lines = []
    limit = report.get("limit")
    if limit and "batch_sizes" in limit:
        sizes = "  ".join(f"b{k}: {v['seq_per_s']:.0f}" for k, v in limit["batch_sizes"].items())
        single = _fmt(limit.get("single_forward_ms_median"), " ms", 2)
        request = _fmt(limit.get("single_request_ms_median"), " ms", 2)
        lines.append(f"limit (eager forward, in process, seq/s)   {sizes}")
        lines.append(f"  best b{limit['best_batch_size']}: {limit['best_seq_per_s']:.1f} seq/s; "
                     f"single forward p50 {single}; tokenise+forward p50 {request}")
        side = limit.get("side_by_side")
        if side and side.get("batch_sizes"):
            sizes = "  ".join(f"b{k}: {v['seq_per_s']:.0f}" for k, v in side["batch_sizes"].items())
            lines.append(f"  side by side ({side['loops']} loops of 1 thread, as the server's workers)   {sizes}"
                         f"   best {side['best_seq_per_s']:.1f} seq/s")
    seed = report.get("seed_way")
    if seed and "seq_per_s" in seed:
        lines.append(f"seed's way (pad to {seed['padded_length']}, one at a time)   "
                     f"{seed['seq_per_s']:.1f} seq/s, p50 {seed['latency_ms_median']:.2f} ms")
    return lines


def _server_lines(report: Mapping[str, Any]) -> list[str]:
    server = report.get("server")
    if not server or "phases" not in server:
        return []
    lines = [f"server (startup {_fmt(server.get('startup_s'), ' s')}, {server.get('model_workers')} model "
             f"worker(s) of {server.get('intra_op_threads')} torch thread(s), "
             f"OMP_WAIT_POLICY {server.get('omp_wait_policy')})"]
    lines += [_phase_line(p) for p in server["phases"]]
    mixed = server.get("predictions_during_explanations")
    if mixed:
        predictions = _get(mixed, "predictions", "latency_ms") or {}
        explanations = mixed.get("explanations") or {}
        explain_p50 = _fmt(_get(explanations, "latency_ms", "p50"))
        lines.append(f"  predictions c=1 during explanations: p50 {_fmt(predictions.get('p50'))} "
                     f"p99 {_fmt(predictions.get('p99'))} ms; explanations p50 {explain_p50} ms "
                     f"({explanations.get('requests')} done)")
    rss = server.get("rss_mb", {})
    lines.append(f"  server RSS after warm-up {_fmt(rss.get('after_warmup'), ' MB')}, after the prediction "
                 f"phases {_fmt(rss.get('after_predictions'), ' MB')} "
                 f"({_fmt(rss.get('growth_predictions_pct'), ' %', 2)}), at the end (explanations too) "
                 f"{_fmt(rss.get('end'), ' MB')} ({_fmt(rss.get('growth_pct'), ' %', 2)})")
    return lines


def _backend_lines(report: Mapping[str, Any]) -> list[str]:
    backends = report.get("backends")
    if not backends:
        return []
    lines = ["backends (in process, seq/s per batch size; eager = the limit above)"]
    for name, entry in backends.items():
        if entry.get("status") != "ok":
            lines.append(f"  {name:<8} {entry.get('status')}: {entry.get('error', '')}"[:160])
            continue
        sizes = "  ".join(f"b{k}: {v['seq_per_s']:.0f}" for k, v in entry["batch_sizes"].items())
        load = f"  (load {entry['load_s']:.1f} s)" if "load_s" in entry else ""
        agree = ""
        if "label_agreement_pct" in entry:
            agree = f"  agree {entry['label_agreement_pct']:.1f}%  max dp {entry['max_prob_diff']:.4f}"
        lines.append(f"  {name:<8} {sizes}{load}{agree}")
    return lines


def _variant_lines(report: Mapping[str, Any], section: str, title: str) -> list[str]:
    variants = report.get(section)
    if not variants:
        return []
    lines = [title]
    for name, entry in variants.items():
        if "error" in entry:
            lines.append(f"  {name}: failed: {entry['error'].splitlines()[0]}"[:160])
            continue
        lines.append(f"  {name} (startup {_fmt(entry.get('startup_s'), ' s')})")
        lines += ["  " + _phase_line(p) for p in entry["phases"]]
    return lines


def _generation_lines(report: Mapping[str, Any]) -> list[str]:
    gen = report.get("generation")
    if not gen or "inprocess" not in gen:
        return []
    stream = gen.get("stream", {})
    return [f"generation (tiny GPT-2, greedy, {gen['max_new_tokens']} new tokens)",
            f"  in process {_fmt(_get(gen, 'inprocess', 'tokens_per_s'))} tok/s (first token "
            f"{_fmt(_get(gen, 'inprocess', 'first_token_ms_median'), ' ms')}); server c=1 "
            f"{_fmt(_get(gen, 'server', 'tokens_per_s'))} tok/s (alternating, {gen.get('rounds', 1)} rounds each)",
            f"  stream: first chunk {_fmt(stream.get('first_chunk_ms_median'), ' ms')}, first generated text "
            f"{_fmt(stream.get('first_generated_text_ms_median'), ' ms')}, complete "
            f"{_fmt(stream.get('complete_ms_median'), ' ms')}"]


def _generation_mixed_lines(report: Mapping[str, Any]) -> list[str]:
    server = _get(report, "generation_mixed", "server")
    if not server:
        return []
    return [f"generation, mixed lengths through the server (16 greedy clients, max_new_tokens 8..256 vs all at "
            f"the mean): mixed {_fmt(_get(server, 'mixed', 'tokens_per_s'))} tok/s, equal "
            f"{_fmt(_get(server, 'equal', 'tokens_per_s'))} tok/s, mixed/equal "
            f"{_fmt(server.get('mixed_over_equal_tokens_per_s'), digits=2)}; short request's first token "
            f"{_fmt(server.get('short_first_token_over_lone'), 'x', 2)} a lone one's "
            f"({_fmt(server.get('lone_first_token_ms_p50'), ' ms')})"]


def _explanation_lines(report: Mapping[str, Any]) -> list[str]:
    ex = report.get("explanations")
    if not ex:
        return []
    lines = ["explanations (in process, default n_steps)"]
    for mode, entry in ex.items():
        if not isinstance(entry, Mapping) or "ours_ms_median" not in entry:
            continue
        speedup, cosine = _fmt(entry["speedup"], "x", 2), _fmt(entry["cosine_min"], digits=4)
        ours, seed = entry["ours_ms_median"], entry["seed_ms_median"]
        lines.append(f"  {mode:<24} ours {ours:.0f} ms  seed {seed:.0f} ms  speedup {speedup}"
                     f"  cosine min {cosine}  ({entry['inputs']} inputs, {entry['n_steps']} steps)")
    return lines


def _ratio_line(derived: Mapping[str, Any]) -> str:
    c = derived.get("concurrency")
    within = _fmt(_get(derived, "targets", "c1_p50_within_single_forward_plus_3ms"))
    line = (f"ratios   server c={c} / limit {_fmt(derived.get('server_over_limit'), digits=3)} "
            f"(side by side {_fmt(derived.get('server_over_side_by_side_limit'), digits=3)})   "
            f"server c={c} / seed {_fmt(derived.get('server_over_seed'), digits=2)}   "
            f"p99/p50 c={c} {_fmt(derived.get('p99_over_p50'), digits=2)}   "
            f"c=1 p50 - single forward {_fmt(derived.get('c1_p50_minus_single_forward_ms'), ' ms', 2)} "
            f"(<= 3 ms: {within})")
    if derived.get("v1_over_kserve_hf") is not None or derived.get("fastest_backend"):
        versus = _fmt(derived.get("v1_over_kserve_hf"), digits=2)
        line += (f"\n         v1 c={c} / KServe HF runtime {versus}   "
                 f"fastest faithful backend ({derived.get('fastest_backend') or '-'}) / KServe HF runtime "
                 f"{_fmt(derived.get('fastest_backend_over_kserve_hf'), digits=2)}, / seed "
                 f"{_fmt(derived.get('fastest_backend_over_seed'), digits=2)}")
    return line


def _targets_22_lines(derived: Mapping[str, Any]) -> list[str]:
    met = derived.get("targets_22") or {}
    lines = [f"issue #22 targets (served backend: {derived.get('served_backend') or '-'})"]
    for name, comparison, bound in TARGETS_22:
        lines.append(f"  {name:<42} {_fmt(derived.get(name), digits=2):>8}  {comparison} {bound:g}: "
                     f"{_fmt(met.get(name))}")
    return lines


def _soak_lines(report: Mapping[str, Any]) -> list[str]:
    soak = report.get("soak")
    if not soak or "rss_mb" not in soak:
        return []
    rss = soak["rss_mb"]
    return [f"soak: c={soak['concurrency']} for {soak['duration_s']:.0f} s, {soak['requests']} answered "
            f"({_fmt(soak.get('throughput_rps'))} req/s), {soak['errors']} errors; RSS {rss[0]:.0f} MB after "
            f"warm-up -> {rss[-1]:.0f} MB ({_fmt(soak.get('rss_growth_pct'), ' %', 2)}; max "
            f"{_fmt(soak.get('rss_max_growth_pct'), ' %', 2)})"]


def _kserve_hf_lines(report: Mapping[str, Any]) -> list[str]:
    hf = report.get("kserve_hf")
    if not hf or "phases" not in hf:
        return []
    lines = [f"KServe HuggingFace runtime, re-created (predictor/bench/kserve_hf.py; startup "
             f"{_fmt(hf.get('startup_s'), ' s')}): one request per forward pass, on the event loop"]
    return lines + [_phase_line(p) for p in hf["phases"]]


def format_table(report: Mapping[str, Any]) -> str:
    """The run's figures as a short plain-text table."""
    meta = report.get("meta", {})
    run = "quick" if meta.get("quick") else "full"
    lines = [f"predictor benchmark: {meta.get('model', '?')}, {meta.get('threads')} threads, {run} run; "
             f"other work on the machine: up to {_fmt(meta.get('foreign_cpu_cores_max'), ' cores', 2)} "
             f"in a section (0 is a clean run)"]
    lines += _limit_lines(report) + _server_lines(report) + _kserve_hf_lines(report) + _soak_lines(report)
    if report.get("derived"):
        lines.append(_ratio_line(report["derived"]))
        lines += _targets_22_lines(report["derived"])
    lines += _variant_lines(report, "server_variants", "server variants (one worker of every core, OpenMP waiting)")
    lines += _variant_lines(report, "neighbour", "with one busy process on the same cores (the benchmark's own "
                                                 "child, so not in 'other')")
    lines += _backend_lines(report) + _variant_lines(report, "backend_servers", "server with each backend")
    lines += _generation_lines(report) + _generation_mixed_lines(report) + _explanation_lines(report)
    for name, error in report.get("errors", {}).items():
        last = error.strip().splitlines()[-1] if error.strip() else ""
        lines.append(f"FAILED {name}: {last}"[:200])
    return "\n".join(lines)
