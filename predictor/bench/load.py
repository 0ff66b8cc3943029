"""Closed-loop HTTP load: N clients, each posting the next corpus text as soon as its last answer arrived.

The clients share the server's cores, so every CPU cycle they spend is taken from the server. aiohttp
on uvloop needs about a tenth of the CPU of httpx on asyncio (at concurrency 32 on the benchmark's
MiniLM: 0.04 against 0.32 to 0.38 cores), which makes the server's figures a tighter lower bound.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import aiohttp
import numpy as np
import uvloop

TEXT = "text/plain; charset=utf-8"
JSON = "application/json"
_MAX_ERROR_SAMPLES = 3


@dataclass(frozen=True)
class Request:
    """One request body for one route."""

    path: str
    content: bytes
    content_type: str = TEXT


@dataclass(frozen=True)
class Record:
    """One finished request: when it started and ended (perf_counter), and whether it got a 200."""

    started: float
    ended: float
    ok: bool
    error: str | None = None

    @property
    def latency(self) -> float:
        """Seconds from sending to the complete answer."""
        return self.ended - self.started


def latency_summary(latencies_s: Sequence[float]) -> dict[str, float | None]:
    """p50, p90, p99, mean and max, in milliseconds (None when nothing finished)."""
    if not latencies_s:
        return {"p50": None, "p90": None, "p99": None, "mean": None, "max": None}
    ms = np.asarray(latencies_s) * 1000.0
    p50, p90, p99 = np.percentile(ms, [50, 90, 99])
    return {"p50": round(float(p50), 2), "p90": round(float(p90), 2), "p99": round(float(p99), 2),
            "mean": round(float(ms.mean()), 2), "max": round(float(ms.max()), 2)}


async def _client(client: aiohttp.ClientSession, base_url: str, requests: Sequence[Request],
                  counter: Iterator[int], records: list[Record], stop_at: float) -> None:
    """One closed-loop client: send, wait for the whole answer, send the next, until stop_at."""
    while time.perf_counter() < stop_at:
        request = requests[next(counter) % len(requests)]
        started = time.perf_counter()
        try:
            async with client.post(base_url + request.path, data=request.content,
                                   headers={"content-type": request.content_type}) as response:
                body = await response.read()
            error = None if response.status == 200 else \
                f"{response.status}: {body[:200].decode(errors='replace')}"
        except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
            error = f"{type(exc).__name__}: {exc}"
        records.append(Record(started, time.perf_counter(), error is None, error))


def summarize(records: Sequence[Record], window: tuple[float, float]) -> dict[str, Any]:
    """Throughput and latency of the requests that finished inside the window; errors over the whole phase."""
    start, end = window
    inside = [r for r in records if start <= r.ended <= end]
    ok = [r.latency for r in inside if r.ok]
    errors = [r.error for r in records if not r.ok]
    samples = list(dict.fromkeys(e for e in errors if e))[:_MAX_ERROR_SAMPLES]
    return {"requests": len(ok), "errors": len(errors), "error_samples": samples,
            "throughput_rps": round(len(ok) / (end - start), 2), "latency_ms": latency_summary(ok)}


Probe = Callable[[], Any]


async def _probe_at(when: float, probe: Probe | None) -> tuple[float, Any]:
    await asyncio.sleep(max(0.0, when - time.perf_counter()))
    cpu = time.process_time()
    return cpu, (await asyncio.to_thread(probe) if probe is not None else None)


async def run_phase(base_url: str, streams: Sequence[tuple[Sequence[Request], int]], *, duration_s: float,
                    warmup_s: float, probe: Probe | None = None) -> dict[str, Any]:
    """Drive every stream (its requests, its number of clients) for warmup_s + duration_s at once.

    Figures cover the last duration_s only. `probe` runs (in a thread) at the start and at the end
    of that window; its two results come back as "probe_start" and "probe_end".
    """
    clients = sum(concurrency for _, concurrency in streams)
    connector = aiohttp.TCPConnector(limit=clients, force_close=False)
    records: list[list[Record]] = [[] for _ in streams]
    started = time.perf_counter()
    window = (started + warmup_s, started + warmup_s + duration_s)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=180.0)) as client:
        workers = [
            _client(client, base_url, requests, counter, records[n], window[1])
            for n, (requests, concurrency) in enumerate(streams)
            for counter in [itertools.count()]  # one round-robin position per stream, shared by its clients
            for _ in range(concurrency)
        ]
        begin, end, *_ = await asyncio.gather(_probe_at(window[0], probe), _probe_at(window[1], probe),
                                              *workers)
    client_cpu = (end[0] - begin[0]) / duration_s
    return {"streams": [{"clients": concurrency, **summarize(records[n], window)}
                        for n, (_, concurrency) in enumerate(streams)],
            "duration_s": duration_s, "warmup_s": warmup_s, "client_cpu_cores": round(client_cpu, 2),
            "probe_start": begin[1], "probe_end": end[1]}


def closed_loop(base_url: str, requests: Sequence[Request], *, concurrency: int, duration_s: float,
                warmup_s: float, probe: Probe | None = None) -> dict[str, Any]:
    """One stream of `concurrency` clients; its figures at the top level of the result."""
    result = uvloop.run(run_phase(base_url, [(requests, concurrency)], duration_s=duration_s,
                                   warmup_s=warmup_s, probe=probe))
    stream = result.pop("streams")[0]
    return {"concurrency": concurrency, **stream, **result}
