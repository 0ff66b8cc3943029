"""Latency-vs-throughput curves of one run as a PNG: the server, its backends and the peers measured.

Each series is one set-up; its points are the load phases (closed loop, one per concurrency, labelled
c=N) or, for in-process figures, one per batch size (labelled bN, latency = one forward pass).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class Series:
    """One curve: (throughput req/s or seq/s, p50 ms, point label) in the order measured."""

    label: str
    points: tuple[tuple[float, float, str], ...]
    in_process: bool = False


def _phases(entries: Any, route: str | None = None) -> tuple[tuple[float, float, str], ...]:
    points = []
    for entry in entries or []:
        if route is not None and entry.get("route") != route:
            continue
        rps, p50 = entry.get("throughput_rps"), (entry.get("latency_ms") or {}).get("p50")
        if isinstance(rps, int | float) and isinstance(p50, int | float):
            points.append((float(rps), float(p50), f"c={entry.get('concurrency')}"))
    return tuple(sorted(points, key=lambda p: int(p[2][2:]) if p[2][2:].isdigit() else 0))


def _batch_sizes(per_size: Any) -> tuple[tuple[float, float, str], ...]:
    points = []
    for size, entry in (per_size or {}).items():
        rate, ms = entry.get("seq_per_s"), entry.get("forward_ms_median")
        if isinstance(rate, int | float) and isinstance(ms, int | float):
            points.append((float(rate), float(ms), f"b{size}"))
    return tuple(sorted(points, key=lambda p: int(p[2][1:]) if p[2][1:].isdigit() else 0))


def curves(report: Mapping[str, Any]) -> list[Series]:
    """Every series the report has points for, servers first; sections that did not run give none."""
    found: list[Series] = []

    def add(label: str, points: tuple[tuple[float, float, str], ...], in_process: bool = False) -> None:
        if points:
            found.append(Series(label, points, in_process))

    server = report.get("server") or {}
    add("predictor /predictions", _phases(server.get("phases"), "predictions"))
    add("predictor v1", _phases(server.get("phases"), "v1"))
    for name, entry in (report.get("backend_servers") or {}).items():
        add(f"predictor, backend {name}", _phases((entry or {}).get("phases")))
    for name, entry in (report.get("server_variants") or {}).items():
        add(f"predictor, {name}", _phases((entry or {}).get("phases")))
    add("KServe HF runtime (re-created) v1", _phases((report.get("kserve_hf") or {}).get("phases")))
    seed = report.get("seed_way") or {}
    rate, ms = seed.get("seq_per_s"), seed.get("latency_ms_median")
    if isinstance(rate, int | float) and isinstance(ms, int | float):
        add("seed's way (in process)", ((float(rate), float(ms), "c=1"),), in_process=True)
    limit_sizes = (report.get("limit") or {}).get("batch_sizes")
    add("eager forward (in process)", _batch_sizes(limit_sizes), in_process=True)
    for name, entry in (report.get("backends") or {}).items():
        if (entry or {}).get("source") == "limit":  # eager: the same figures as the line above
            continue
        add(f"{name} forward (in process)", _batch_sizes((entry or {}).get("batch_sizes")), in_process=True)
    return found


def draw(report: Mapping[str, Any], title: str | None = None) -> Any:
    """A matplotlib Figure with one line per series of curves(report); the caller closes it."""
    import matplotlib

    matplotlib.use("Agg")  # files only: no display, no GUI toolkit
    from matplotlib import pyplot as plt

    figure, axes = plt.subplots(figsize=(9, 6), dpi=110)
    for one in curves(report):
        xs = [p[0] for p in one.points]
        ys = [p[1] for p in one.points]
        [line] = axes.plot(xs, ys, linestyle="--" if one.in_process else "-", marker="o", label=one.label)
        for x, y, name in one.points:
            axes.annotate(name, (x, y), textcoords="offset points", xytext=(4, 4), fontsize=7,
                          color=line.get_color())
    axes.set_xlabel("throughput (requests or sequences per second)")
    axes.set_ylabel("latency p50 (ms)")
    axes.set_yscale("log")
    axes.grid(True, which="both", alpha=0.3)
    meta = report.get("meta") or {}
    axes.set_title(title or f"latency vs throughput ({meta.get('threads', '?')} threads, "
                            f"{meta.get('model', 'benchmark model')})", fontsize=10)
    axes.legend(fontsize=8, loc="upper left")
    figure.tight_layout()
    return figure


def plot(report: Mapping[str, Any], path: Path, title: str | None = None) -> list[Series]:
    """Draw the curves to path (PNG); returns the series drawn (none: no file is written)."""
    series = curves(report)
    if not series:
        return series
    figure = draw(report, title)
    from matplotlib import pyplot as plt

    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        figure.savefig(path, format="png")
    finally:
        plt.close(figure)
    return series


def default_plot_path(out: Path | None) -> Path | None:
    """Beside the JSON report, as .png; None without --out."""
    return out.with_suffix(".png") if out is not None else None

