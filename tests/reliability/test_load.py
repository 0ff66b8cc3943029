"""200 concurrent clients for 45 seconds, valid and invalid requests mixed over the three route families.

Every valid request gets the label the in-process core gives for its text; every invalid one gets its
4xx; nothing gets a 5xx (503 with Retry-After would be overload, counted; with jobQueueSize 256 and at
most 200 requests outstanding there should be none); the server's memory stays flat after warm-up.
"""

from __future__ import annotations

import asyncio
import json
import random
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from reliability_requests import ROUTES, Probe, invalid_probes, percentile, problem, valid_probe
from reliability_servers import ServerProcess

pytestmark = pytest.mark.slow

CLIENTS = 200
WARM_UP_S = 15.0
MEASURED_S = 30.0
INVALID_SHARE = 0.3
MAX_RSS_GROWTH = 0.05


@dataclass
class Tally:
    """What the clients saw."""

    sent: int = 0
    answered: int = 0
    statuses: Counter[int] = field(default_factory=Counter)
    kinds: Counter[str] = field(default_factory=Counter)
    latencies_ms: list[float] = field(default_factory=list)
    valid_correct: int = 0
    valid_overloaded: int = 0
    invalid_rejected: int = 0
    transport_errors: Counter[str] = field(default_factory=Counter)
    problems: list[str] = field(default_factory=list)


async def _client(url: str, probes: list[Probe], bad: list[Probe], seed: int, deadline: float,
                  tally: Tally) -> None:
    rng = random.Random(seed)
    async with httpx.AsyncClient(base_url=url, timeout=60.0) as client:
        while time.monotonic() < deadline:
            probe = rng.choice(bad) if rng.random() < INVALID_SHARE else rng.choice(probes)
            tally.sent += 1
            tally.kinds[probe.kind] += 1
            started = time.perf_counter()
            try:
                response = await client.request(**probe.send_args())
            except httpx.TransportError as exc:
                tally.transport_errors[type(exc).__name__] += 1
                continue
            tally.latencies_ms.append((time.perf_counter() - started) * 1000)
            tally.answered += 1
            tally.statuses[response.status_code] += 1
            if (why := problem(probe, response)) is not None:
                tally.problems.append(why)
            elif probe.valid and response.status_code == 503:
                tally.valid_overloaded += 1
            elif probe.valid:
                tally.valid_correct += 1
            else:
                tally.invalid_rejected += 1


async def _rss_watch(server: ServerProcess, warm_until: float, end: float, out: dict[str, int]) -> None:
    """RSS at the end of warm-up and at the end, and the highest value seen."""
    while time.monotonic() < end:
        rss = server.rss()
        out["max"] = max(out.get("max", 0), rss)
        if time.monotonic() >= warm_until and "warm" not in out:
            out["warm"] = rss
        await asyncio.sleep(0.5)
    out["end"] = server.rss()


async def _run(server: ServerProcess, probes: list[Probe], bad: list[Probe]) -> tuple[Tally, dict[str, int]]:
    tally, rss = Tally(), {"start": server.rss()}
    start = time.monotonic()
    warm_until, end = start + WARM_UP_S, start + WARM_UP_S + MEASURED_S
    watcher = asyncio.create_task(_rss_watch(server, warm_until, end, rss))
    await asyncio.gather(*[_client(server.url, probes, bad, n, end, tally) for n in range(CLIENTS)])
    await watcher
    rss["elapsed_s"] = round(time.monotonic() - start, 1)
    return tally, rss


def _figures(tally: Tally, rss: dict[str, Any]) -> dict[str, Any]:
    growth = (rss["end"] - rss["warm"]) / rss["warm"]
    return {
        "clients": CLIENTS, "warm_up_s": WARM_UP_S, "measured_s": MEASURED_S, "elapsed_s": rss["elapsed_s"],
        "sent": tally.sent, "answered": tally.answered,
        "throughput_rps": round(tally.answered / rss["elapsed_s"], 1),
        "by_status": {str(k): v for k, v in sorted(tally.statuses.items())},
        "by_kind": dict(sorted(tally.kinds.items())),
        "valid_correct": tally.valid_correct, "valid_503": tally.valid_overloaded,
        "invalid_rejected_4xx": tally.invalid_rejected,
        "transport_errors": dict(tally.transport_errors), "problems": len(tally.problems),
        "p50_ms": round(percentile(tally.latencies_ms, 50), 1),
        "p99_ms": round(percentile(tally.latencies_ms, 99), 1),
        "max_ms": round(max(tally.latencies_ms, default=0.0), 1),
        "rss_start_mib": round(rss["start"] / 2**20, 1),
        "rss_after_warm_up_mib": round(rss["warm"] / 2**20, 1),
        "rss_end_mib": round(rss["end"] / 2**20, 1), "rss_max_mib": round(rss["max"] / 2**20, 1),
        "rss_growth_pct": round(100 * growth, 2),
    }


def test_two_hundred_clients_mixed_valid_and_invalid(seq_server, seq_labels, reliability_workdir: Path,
                                                     capsys):
    probes = [valid_probe(route, seq_server.name, text, label)
              for text, label in seq_labels.items() for route in ROUTES]
    bad = invalid_probes(seq_server.name)

    tally, rss = asyncio.run(_run(seq_server, probes, bad))
    figures = _figures(tally, rss)
    path = reliability_workdir / "load-figures.json"
    path.write_text(json.dumps(figures, indent=2))
    with capsys.disabled():
        print(f"\nload test figures ({path}):\n{json.dumps(figures, indent=2)}")

    assert not tally.problems, f"{len(tally.problems)} wrong answers, e.g. {tally.problems[:5]}"
    assert not tally.transport_errors, tally.transport_errors
    assert tally.answered == tally.sent
    assert all(s < 500 or s == 503 for s in tally.statuses), tally.statuses
    assert tally.valid_correct > 0 and tally.invalid_rejected > 0
    assert figures["rss_growth_pct"] < 100 * MAX_RSS_GROWTH, figures
    assert all(seq_server.health().ready), "the server must still be ready after the load"
